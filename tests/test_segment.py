"""Articles rebuilt from the five real pages: every headline on the right body, captions apart."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rag.ingest import read_page
from rag.segment import clean_byline, provisional_title, read_layout, segment_page
from rag.zh import fold_width

# (page, headline, distinctive phrase of its body, byline or None) read off the pages by hand
EXPECTED = [
    ("000", "以考促改以改促治答好党风廉政建设“年度考卷”", "成立了六个考核组", "记者 李莎莎"),
    ("000", "我市加快推进电子劳动合同推广应用", "试点企业已顺利签订电子劳动合同182份", "记者 汤红红"),
    ("000", "格尔木昆仑经济技术开发区综合发展水平在全国的排名较上年跃升85位", "中位列128位", "记者 赵倩"),
    ("001", "鄂尔多斯高新区打造党群工作“金”名片", "446名干部通过直接聘用", "郭东昕"),
    ("001", "青岛高新区再造流程优化营商环境", "102台特种设备", "李媛 刘文研"),
    ("002", "汇聚起抗震救灾和灾后重建的强大正能量", "积石山6.2级地震发生后", "特约记者 张晓英"),
    ("002", "西宁跻身中国动力电池产能十强城市", "位列全国第八名", "记者 樊娅楠"),
    ("002", "我省“五经普”工作受国务院表扬", "全省共选聘6845名普查员和普查指导员", "记者 一丁"),
    ("002", "省人社厅发布急需紧缺人才目录", "共征集了168家单位的急需紧缺人才需求4156人", "记者 一丁"),
    ("002", "“两室一平台”", "建成乡镇街道人大代表联络室75个", "记者 张艳艳"),
    ("003", "以高质量考核推动高水平减负", "删除深化改革、档案工作、政务公开等16项指标", None),
    ("003", "“三化”驱动 点燃人才工作“新引擎”", "州县两级建设高标准人才公寓670余套", None),
    ("003", "以组织担当激励干部作为", "累计调整不适宜担任现职干部46名", None),
    ("003", "全链条锻造高素质专业化公务员队伍", "有力有序引才1755人", None),
    ("003", "以高质量党建为高质量发展蓄势赋能", "2023年度村均收益达24.74万元", None),
    ("003", "在推进现代化新青海建设的征程中 展现组织工作新担当新作为", "凝心铸魂夯实思想根基", "周学武"),
    ("004", "我市持续加大产业人才引育力度", "发放奖励资金146万元", "记者 宗布尔"),
    ("004", "爱路护路宣传进校园", "少年儿童铁路平安行动", "记者 王秀琴 通讯员 蒙文平"),
    ("004", "市委常委会（扩大）会议召开", "赵冬强调", None),
]
# phrases that must not share an article (they belong to different stories on the same page)
APART = [
    ("成立了六个考核组", "电子劳动合同182份"),
    ("446名干部", "102台特种设备"),
    ("村均收益达24.74万元", "凝心铸魂夯实思想根基"),
    ("发放奖励资金146万元", "少年儿童铁路平安行动"),
    ("审计整改", "人民调解员"),
    ("吴晓军、罗东川", "赵冬强调"),
    ("位列全国第八名", "6845名普查员"),
]


def _page_articles(articles, prefix):
    return [a for a in articles if a.source.startswith(prefix)]


@pytest.mark.parametrize("page, title, phrase, byline", EXPECTED, ids=[e[1][:12] for e in EXPECTED])
def test_headline_is_attached_to_its_body(articles, page, title, phrase, byline):
    found = [a for a in _page_articles(articles, page) if phrase in a.text]
    assert len(found) == 1, f"{phrase!r} should be in exactly one article"
    art = found[0]
    assert art.kind == "article"
    assert title in art.title, f"{phrase!r} is under {art.title!r}, expected {title!r}"
    assert not art.provisional_title
    if byline:
        assert art.byline == byline


@pytest.mark.parametrize("a, b", APART)
def test_stories_are_not_merged(articles, a, b):
    holders = [x for x in articles if a in x.text or b in x.text]
    assert any(a in x.text for x in holders) and any(b in x.text for x in holders)
    assert not any(a in x.text and b in x.text for x in holders)


def test_every_titled_headline_is_found_once(articles):
    titles = [a.title for a in articles if a.kind == "article" and not a.provisional_title]
    assert len(titles) == len(EXPECTED)


def test_subtitles_and_section_heads(articles):
    quake = next(a for a in articles if "积石山" in a.text)
    assert quake.subtitle == "陈刚 吴晓军等领导同志带头捐款"
    feature = next(a for a in articles if "446名干部" in a.text)
    # section heads of a feature stay inside it, in order
    assert feature.text.index("筑牢“红色堡垒”") < feature.text.index("激发干部活力") < feature.text.index("汇聚“石榴籽+”合力")


def test_captions_are_separate_records(articles):
    captions = [a for a in articles if a.kind == "caption"]
    texts = "\n".join(c.text for c in captions)
    for phrase in ("图①：德令哈市河西街道", "图④：天峻县民族小学", "图为在江西华伍制动器", "中组部、团中央第23批专家团队",
                   "乌兰县南沙沟村成立农机服务队"):
        assert phrase in texts
    bodies = "\n".join(a.text for a in articles if a.kind == "article")
    assert "图①" not in bodies and "供图" not in bodies and "图为" not in bodies
    # a caption is named by what its photo shows, never by the credit line
    assert not any(c.title.endswith("供图") for c in captions)


def test_continuations_are_marked_and_titled_provisionally(articles):
    cont = next(a for a in articles if "吴晓军、罗东川对企业技术创新成果" in a.text)
    assert cont.continuation and cont.provisional_title
    # a whole clause that says what happened, not the list of places that opens the block
    assert cont.title == "吴晓军、罗东川对企业技术创新成果表示肯定"
    assert "上接" not in cont.text
    audit = next(a for a in articles if "审计整改工作专题会" in a.text)
    assert audit.provisional_title and audit.byline == "记者 李莎莎"


def test_article_text_maps_back_to_the_raw_page(articles, seeds_dir):
    raws = {p.name: read_page(p).text for p in seeds_dir.glob("*.txt")}
    for art in articles:
        raw = raws[art.source]
        for seg in art.segments:
            piece = art.text[seg.start:seg.start + seg.length]
            assert fold_width(raw[seg.raw_start:seg.raw_start + seg.length]) == fold_width(piece)
        # every character but the paragraph breaks comes from the page
        assert sum(s.length for s in art.segments) == len(art.text) - art.text.count("\n")
        assert "本报讯" not in art.text[:5]


def test_article_ids_are_unique_and_stable(articles, seeds_dir):
    ids = [a.article_id for a in articles]
    assert len(set(ids)) == len(ids)
    again = [a.article_id for p in sorted(seeds_dir.glob("*.txt"))
             for a in segment_page(read_page(p).text, p.name)]
    assert again == ids


def test_page_with_only_captions(tmp_path):
    from pathlib import Path

    page = read_page(Path(__file__).parent / "data" / "pages" / "captions_only.txt")
    arts = segment_page(page.text, page.name)
    assert arts and all(a.kind == "caption" for a in arts)
    assert len(arts) == 2


def test_headline_printed_after_its_article_on_a_small_page():
    page = ("本报讯（记者 张三）近日，格尔木市新建公共充电桩80个，\n\n方便新能源汽车车主出行。\n\n"
            "格尔木新建80个充电桩\n\n□ 记者 李四\n\n今年以来，西宁市图书馆新增藏书两万册。\n\n西宁市图书馆藏书再增两万册\n")
    arts = segment_page(page, "small.txt")
    assert [(a.title, a.byline) for a in arts] == [("格尔木新建80个充电桩", "记者 张三"),
                                                     ("西宁市图书馆藏书再增两万册", "记者 李四")]


def test_cli_articles_json(seeds_dir):
    proc = subprocess.run([sys.executable, "-m", "rag", "articles", "--json", "--seeds", str(seeds_dir)],
                          capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {"article_id", "title", "byline", "source", "kind", "text"} <= set(rows[0])
    titles = [r["title"] for r in rows]
    for _, title, _, _ in EXPECTED:
        assert any(title in t for t in titles)


@pytest.mark.parametrize("raw, clean", [
    ("□ 记 者 王 静 通讯员 马晓东", "记者 王静 通讯员 马晓东"),  # letter-spaced role and name
    ("记者王静通讯员马晓东", "记者 王静 通讯员 马晓东"),  # no spaces at all
    ("● 本报记者 何 佳", "本报记者 何佳"),
    ("（本报评论员 何平）", "本报评论员 何平"),
    ("(作者系衢州学院副教授 方卫东)", "作者系衢州学院副教授 方卫东"),
    ("► 李媛 刘文研", "李媛 刘文研"),  # two names stay two
    ("记者 王秀琴 通讯员 蒙文平", "记者 王秀琴 通讯员 蒙文平"),
])
def test_bylines_are_cleaned_by_pattern(raw, clean):
    assert clean_byline(raw) == clean


@pytest.mark.parametrize("text, title", [
    ("近日，市审计局召开审计整改工作专题会，传达学习有关文件精神。", "市审计局召开审计整改工作专题会"),
    ("在高台县巷道镇的蔬菜大棚里，种植户正忙着采摘番茄。", "种植户正忙着采摘番茄"),
    ("5月20日起，临泽县组织植保无人机40架开展作业。", "临泽县组织植保无人机40架开展作业"),
    ("柳州市第二批城市“口袋公园”日前完工，新增绿地4.2万平方米。", "柳州市第二批城市“口袋公园”日前完工"),
])
def test_provisional_titles_are_whole_clauses(text, title):
    assert provisional_title(text) == title


@pytest.mark.parametrize("line", [
    "工人在螺蛳粉生产线上包装产品。（本报记者 摄）",
    "图为思明区鹭江道旁的“口袋公园”。 本报记者 林晓 摄",
    "（《成都日报》供图）",
    "柳南区委宣传部供图",
])
def test_photo_credits_are_captions_never_articles(line):
    page = f"本报讯（记者 张三）近日，某县新建公园一座，方便市民休闲。\n\n某县新建公园\n\n{line}\n"
    arts = segment_page(page, "p.txt")
    assert [a.kind for a in arts if line.strip("（）")[:6] in a.text] == ["caption"]
    assert [a.title for a in arts if a.kind == "article"] == ["某县新建公园"]


def test_kicker_subtitle_label_and_jump():
    page = ("新闻速递\n\n为了群众温暖过冬\n\n某县供热管网改造完工\n\n——新增供热面积80万平方米\n\n"
            "本报讯（记 者 赵 芳）11月15日零时，某县集中供热正式启动。\n\n（下转第三版）\n")
    (art,) = segment_page(page, "p.txt")
    assert (art.title, art.subtitle, art.byline) == \
        ("某县供热管网改造完工", "为了群众温暖过冬　——新增供热面积80万平方米", "记者 赵芳")
    assert art.text == "11月15日零时，某县集中供热正式启动。"


def test_a_digest_of_headlines_is_no_article():
    page = ("今日导读\n\n某市地铁二期开通运营 2版\n\n某区新增骑行驿站48个 3版\n\n\n\n"
            "某市开通新线\n\n本报讯（记者 张三）近日，某市开通公交新线。\n")
    layout = read_layout(page, "p.txt")
    assert [a.title for a in layout.articles] == ["某市开通新线"]
    assert layout.unplaced == ["某市地铁二期开通运营2版 / 某区新增骑行驿站48个3版"]


def test_cli_articles_report():
    page = Path(__file__).parent / "data" / "pages" / "chengdu_digest.txt"
    proc = subprocess.run([sys.executable, "-m", "rag", "articles", "--report", str(page)],
                          capture_output=True, text=True, check=True)
    out = proc.stdout
    assert out.startswith("== chengdu_digest.txt: 2 articles, 1 captions, 1 unplaced")
    assert "printed     “蓉易办”上线企业开办一件事" in out and "byline:   本报记者 何佳" in out
    assert "unplaced: 成都地铁19号线二期开通运营" in out
    assert out.rstrip().splitlines()[-1].startswith("== 1 pages: 2 articles, 1 captions, 1 unplaced; OCR spaces dropped 5")


def test_a_run_of_headlines_is_not_one_title():
    page = ("某市新建公园三座\n\n某区开通公交新线\n\n某县举办农民丰收节\n\n某镇修缮古桥\n\n"
            "本报讯（记者 张三）近日，某镇完成古桥修缮，恢复通行。\n")
    layout = read_layout(page, "p.txt")
    assert [(a.title, a.subtitle) for a in layout.articles] == [("某镇修缮古桥", None)]
    assert layout.unplaced == ["某市新建公园三座 / 某区开通公交新线 / 某县举办农民丰收节"]


def test_every_seed_headline_finds_a_body(seeds_dir):
    for path in sorted(seeds_dir.glob("*.txt")):
        page = read_page(path)
        assert read_layout(page.text, page.name).unplaced == [], page.name


@pytest.mark.parametrize("lead, byline", [
    ("本报讯（记者 张三）", "记者 张三"),
    ("本报 讯（通讯 员 刘慧敏）", "通讯员 刘慧敏"),
    ("新华社北京3月12日电（记者 于文静）", "记者 于文静"),
    ("本报杭州3月12日电（记者 沈 洁）", "记者 沈洁"),
])
def test_news_leads_and_datelines_give_the_byline(lead, byline):
    (art,) = segment_page(f"某地开展春耕生产\n\n{lead}近日，某地开展春耕生产。\n", "p.txt")
    assert (art.title, art.byline, art.text) == ("某地开展春耕生产", byline, "近日，某地开展春耕生产。")


def test_a_short_line_is_a_name_only_with_a_surname():
    page = "本报讯 某县近日完成古桥修缮，恢复通行。\n\n古桥始建于清代。\n\n某县修缮古桥\n\n{}\n"
    assert segment_page(page.format("周学武"), "p.txt")[0].byline == "周学武"
    assert segment_page(page.format("一线见闻"), "p.txt")[0].byline is None


def test_photo_news_headline_titles_its_caption_and_an_unbracketed_byline_is_read():
    page = ("图片新闻\n\n千年古镇迎来赏花季\n\n3月15日，游客在江岭景区赏油菜花。 本报记者 汪 洋 摄\n\n\n\n"
            "新区汽车产业加速成长\n\n本报讯 记者 刘 伟 报道：一季度，新区汽车产业营业收入增长27%。\n")
    layout = read_layout(page, "p.txt")
    assert [(a.kind, a.title, a.provisional_title, a.byline) for a in layout.articles] == [
        ("caption", "千年古镇迎来赏花季", False, None), ("article", "新区汽车产业加速成长", False, "记者 刘伟")]
    assert layout.articles[1].text.startswith("一季度，") and layout.unplaced == []


def test_end_mark_and_editors_note_stay_with_their_story():
    page = ("编者按：本报开设专栏，讲述扎根乡村的年轻人。\n\n\n\n某县青年返乡养羊\n\n□ 文/本报记者 马 骁\n\n"
            "大学毕业后，他回到家乡养羊。\n\n他打算明年建一个加工厂。（完）\n")
    (art,) = segment_page(page, "p.txt")
    assert (art.title, art.byline) == ("某县青年返乡养羊", "本报记者 马骁")
    assert art.text.startswith("编者按：") and art.text.endswith("建一个加工厂。")


@pytest.mark.parametrize("raw, clean", [
    ("记者 马骁 通讯员 祁永 峰", "记者 马骁 通讯员 祁永峰"),  # a name broken across lines
    ("记者 张 三丰", "记者 张三丰"),
])
def test_a_single_character_is_no_name(raw, clean):
    assert clean_byline(raw) == clean


@pytest.mark.parametrize("raw", ["", "\n\n \n", "（完）", "今日导读\n\n某市地铁开通 2版\n"])
def test_pages_without_a_story_give_no_article_and_no_error(raw):
    assert [a for a in segment_page(raw, "p.txt") if a.kind == "article"] == []
