"""OCR repair rules, table-driven, and the map from repaired text back to the raw page."""
from __future__ import annotations

import re

import pytest

from rag.ingest import read_page
from rag.repair import remove_ocr_spaces, repair_page, should_join
from rag.zh import fold_width


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
