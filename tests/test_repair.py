"""OCR repair rules, table-driven, and the map from repaired text back to the raw page."""
from __future__ import annotations

import re

import pytest

from rag.ingest import read_page
from rag.repair import decide_spaces, is_table_row, remove_ocr_spaces, repair_page, report_spaces, should_join
from rag.zh import fold_width, to_fullwidth_punct


@pytest.mark.parametrize("raw, fixed", [
    ("企 业 电 子 合 同 推 广 应 用", "企业电子合同推广应用"),
    ("并组织召开了 2023年度党风廉", "并组织召开了2023年度党风廉"),
    ("自 2023 年 12 月 19 日至 27 日", "自2023年12月19日至27日"),
    ("市 委 常 委 会", "市委常委会"),
    ("动 者 应 知 尽 知、应 享 尽 享、应 签 尽", "动者应知尽知、应享尽享、应签尽"),
    ("省级外贸转型基地。 2023 年新增", "省级外贸转型基地。2023年新增"),
    (" 本报讯（记者 李莎莎）近日", "本报讯（记者 李莎莎）近日"),  # names in a byline keep their space
    ("陈刚 吴晓军等领导同志带头捐款", "陈刚 吴晓军等领导同志带头捐款"),  # two names, not OCR noise
    ("“知险 避险 安全——少年儿童铁", "“知险 避险 安全——少年儿童铁"),
    ("通过 ISO14000 环境管理体系认证", "通过ISO14000环境管理体系认证"),
    ("ISO 9001 standard", "ISO 9001 standard"),
    ("   ", ""),
])
def test_remove_ocr_spaces(raw, fixed):
    text, kept = remove_ocr_spaces(raw)
    assert text == fixed
    assert "".join(raw[k] for k in kept) == fixed


@pytest.mark.parametrize("prev, nxt, width, blanks, join", [
    ("风廉政建设责任制工作领导小组办公", "室组织开展党风廉政建设责任制考核", 16, 1, True),
    ("反腐败工作。", "为确保年度考核工作顺利进行，市", 16, 1, False),  # sentence ended: new paragraph
    ("会议要求六个考核组要以“七张", "表”为基准", 16, 1, True),  # open quote
    ("以考促改以改促治答好党风廉政建设“年度考卷”", "□ 记者 汤红红", 16, 1, False),  # byline next
    ("□ 记者 汤红红", "2023年，我市大力推广应用签订", 16, 1, False),  # after a byline line
    ("本报讯（记者 赵倩）近日，记者", "从格尔木昆仑经济技术开发区获悉，", 16, 1, True),
    ("据了解,为解决企业的“急", "难愁盼”,青岛高新区实施", 150, 1, True),
    ("青岛高新区再造流程优化营商环境", "► 李媛 刘文研", 150, 1, False),
    ("鄂尔多斯高新区打造党群工作“金”名片", "“十四五”期间,鄂尔多斯高新区", 150, 1, False),  # short headline
    ("在推进现代化新青海建设的征程中 展现组织工作新担当新作为", "周学武", 150, 1, False),
    ("通过党建联盟活动解决职工社保办理、企业用工短缺、订单按期交付而且更多文字把这一行撑得很长",
     "等痛点难点问题", 150, 1, True),
    ("省委常委、秘书长朱向峰参加。", "我市持续加大产业人才引育力度", 16, 1, False),
    ("萌芽状态。", "（上接一版）在青海维祥科技有限公", 16, 1, False),
    ("一行没有句号的正文继续写下去", "下一行", 16, 3, False),  # a layout gap always breaks
])
def test_should_join(prev, nxt, width, blanks, join):
    assert should_join(prev, nxt, width, blanks) is join


def test_repaired_pages_have_no_ocr_spaces_and_map_back_to_raw(seeds_dir):
    for path in sorted(seeds_dir.glob("*.txt")):
        raw = read_page(path).text
        for para in repair_page(raw):
            # no space next to a digit/CJK pair, no letter-spaced run
            assert not re.search(r"[\u4e00-\u9fff] +\d|\d +[\u4e00-\u9fff]", para.text), para.text
            assert not re.search(r"(?:[\u4e00-\u9fff] ){2}[\u4e00-\u9fff]", para.text), para.text
            covered = 0
            for seg in para.segments:
                piece = para.text[seg.start:seg.start + seg.length]
                # ASCII punctuation in Chinese text is shown full-width: equal up to character width
                assert fold_width(raw[seg.raw_start:seg.raw_start + seg.length]) == fold_width(piece)
                assert raw.count("\n", 0, seg.raw_start) + 1 == seg.line
                covered += seg.length
            assert covered == len(para.text)


def test_words_broken_across_lines_are_joined(seeds_dir):
    text = "\n".join(p.text for p in repair_page(read_page(seeds_dir / "000_083e7fa3461b093d.txt").text))
    assert "党风廉政建设责任制工作领导小组办公室组织开展" in text
    assert "试点企业已顺利签订电子劳动合同182份" in text
    assert "在全国230家国家级经济技术开发区中位列128位" in text


@pytest.mark.parametrize("raw, fixed", [
    ("本报 讯（通讯 员 刘慧敏）近 期，瑞昌市", "本报讯（通讯员 刘慧敏）近期，瑞昌市"),  # words the dictionary spans
    ("推行“红色物 业”，由社区", "推行“红色物业”，由社区"),
    ("实行“划片招生、就近入 学”", "实行“划片招生、就近入学”"),
    ("公众号报名 ，报名结果", "公众号报名，报名结果"),  # before a full-width comma
    ("开园首日接待游 客超过", "开园首日接待游客超过"),
    ("兰 考 民 族 乐 器 走 俏 海 外", "兰考民族乐器走俏海外"),  # letter-spaced headline
    ("老旧小区引入物业服务 居民议事会定规矩", "老旧小区引入物业服务 居民议事会定规矩"),  # two phrases
    ("以“冰雪同梦 亚洲同心”为主题", "以“冰雪同梦 亚洲同心”为主题"),  # a slogan
    ("年份 销售收入 其中预包装", "年份 销售收入 其中预包装"),  # table rows keep their cells apart
    ("2022年 600.6亿元 182亿元", "2022年 600.6亿元 182亿元"),
])
def test_spaces_are_decided_by_the_words_on_both_sides(raw, fixed):
    assert remove_ocr_spaces(raw)[0] == fixed


def test_kept_spaces_are_listed_with_their_neighbours():
    text, kept, dropped, listed = decide_spaces("陈刚 吴晓军等领导 近 期")
    assert text == "陈刚 吴晓军等领导近期"
    assert dropped == 2 and listed == ["陈刚 吴晓军"]


@pytest.mark.parametrize("raw, shown", [
    ("城市”,位列第八名!近日", "城市”，位列第八名！近日"),
    ("从行业分布看:数量居前三", "从行业分布看：数量居前三"),
    ("需求1522人,2024年需求", "需求1522人，2024年需求"),
    ("剪辑?”晚上", "剪辑？”晚上"),
    ("一方面;另一方面", "一方面；另一方面"),
    ("共1,200人", "共1,200人"),  # a thousands separator
    ("12:30开始", "12:30开始"),  # a time
    ("ISO 9001: quality, ok", "ISO 9001: quality, ok"),  # English keeps its marks
])
def test_ascii_punctuation_in_chinese_text_is_shown_full_width(raw, shown):
    assert to_fullwidth_punct(raw) == shown


def test_full_width_marks_still_map_to_the_raw_page():
    raw = "据了解,为解决企业的“急\n\n难愁盼”,青岛高新区实施新模式。\n"
    (para,) = repair_page(raw)
    assert para.text == "据了解，为解决企业的“急难愁盼”，青岛高新区实施新模式。"
    for seg in para.segments:
        assert fold_width(raw[seg.raw_start:seg.raw_start + seg.length]) == \
            fold_width(para.text[seg.start:seg.start + seg.length])
    report = report_spaces(raw)
    assert report.punct == 2 and report.dropped == 0


@pytest.mark.parametrize("line, table", [
    ("年份 销售收入 其中预包装", True),
    ("2021年 501.5亿元 152亿元", True),
    ("自 2023 年 12 月 19 日至 27 日", False),  # OCR spaces around figures, not cells
    ("市 委 常 委 会", False),
    ("陈刚 吴晓军等领导同志带头捐款", False),
])
def test_table_rows(line, table):
    assert is_table_row(line) is table


def test_a_body_line_ending_in_a_word_with_she_is_no_credit():
    # 拍摄 at the end of a narrow column line is a word, not a photographer's credit
    assert should_join("摄制组在当地进行了为期三天的拍摄", "工作，记录下古村的变化。", 16, 1)
    assert not should_join("工人在流水线上作业。", "（本报记者 摄）", 16, 1)


def test_a_caption_ending_in_its_photographer_does_not_run_into_the_next_line():
    assert not should_join("▲ 游客在古城体验白族扎染技艺。李然摄", "祥云县启动秋冬农业开发", 16, 1)
