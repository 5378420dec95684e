"""The scoring rules, one table each: term coverage, the asked-for fact, place and year constraints,
list items, the logistic fit and the answer/partial/refuse decision."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rag.answer import list_items
from rag.evaluate import gold_spans, load_qa
from rag.query import analyze_question, in_context, resolve_followup
from rag.score import (FEATURES, Evidence, ScoringParams, edition_check, fact_match, fit_logistic, judge, load_scoring,
                       listed_together, near_coverage, period_only, place_check, relative_year_check, save_scoring, term_coverage,
                       year_check)
from rag.zh import Tokenizer, local_place_names, place_key, relative_years, years_in


CORPUS = ["西宁市锂电产业集聚区建设提速，深度融入全国市场。", "海西州德令哈市、都兰县、格尔木市和海东市的干部来到全市各区。"]


# the tokenizer of an index of CORPUS: taught the place names its pages name
TOK = Tokenizer(places=local_place_names(CORPUS))


def test_local_place_names_come_from_the_corpus_by_rule():
    names = local_place_names(CORPUS)
    assert {"西宁市", "西宁", "海西州", "海西", "德令哈", "都兰县", "海东市", "海东"} <= set(names)
    assert not {"深度", "全市", "集聚区", "集聚", "各区"} & set(names)


@pytest.mark.parametrize("text, places", [
    ("海西州德令哈市的村集体收益", ["海西", "德令哈"]),
    ("深度挖掘人才潜力", []),                        # jieba tags 深度 ns: not a place by our rules
    ("拉萨市的房价", ["拉萨"]),                       # a name before a suffix, though the corpus lacks it
    ("北京的天气", ["北京"]),
    ("西宁的开发区在全国排第几？", ["西宁"]),
    ("我市全市56家单位开展考核", []),            # the paper's own area is not a named place
    ("全省共选聘6845名普查员", []),
    ("青海省西宁市", ["青海", "西宁"]),
    ("都兰县组织党员干部下沉一线", ["都兰"]),
    ("武侯区社区夜校每门课收费多少？", ["武侯"]),        # jieba tags the district a person name
    ("民权县今年集中供热从哪天开始？", ["民权"]),        # and the county a common noun
    ("甘肃省委书记带头捐款", ["甘肃"]),                 # an organ of a province names it
    ("居住区和工业区的路灯", []),                       # common nouns before 区 are no places
    ("专家团队赴茫崖市开展义诊", ["茫崖"]),              # jieba tags 茫崖 an idiom, 门源 a common noun:
    ("门源县的牧民养藏羊", ["门源"]),                   # before 市/县 they are places
    ("建设产业集聚区", []),                             # but not before 区
])
def test_place_names(text, places):
    assert TOK.place_names(text) == places


@pytest.mark.parametrize("name, key", [("海西州", "海西"), ("格尔木市", "格尔木"), ("西宁", "西宁"), ("市", "市"),
                                       ("海南藏族自治州", "海南藏族")])
def test_place_key(name, key):
    assert place_key(name) == key


@pytest.mark.parametrize("text, years", [
    ("2023年度村均收益达24.74万元", ["2023"]),
    ("《行动方案（2024—2026年）》", ["2024", "2026"]),
    ("增长了12345元，共20人", []),
    ("２０２２年", ["2022"]),
    ("二〇二三年全县乐器出口额同比增长35％", ["2023"]),    # a year in Chinese numerals
    ("二零二四年，2025年", ["2024", "2025"]),
    ("一二三年级", []),
])
def test_years_in(text, years):
    assert years_in(text) == years


@pytest.mark.parametrize("asked, sentence, article, missing", [
    (("德令哈",), (), ("海西",), ("德令哈",)),           # the page has the prefecture's figure only
    (("海西",), (), ("海西",), ()),                     # the sentence speaks for its article's place
    (("西宁",), ("格尔木",), ("格尔木",), ("西宁",)),     # the sentence names another place
    (("格尔木",), ("格尔木",), ("海西",), ()),           # the sentence's own place wins
    (("青海",), ("青海省西宁",), (), ()),               # a longer name holding the asked one
    ((), ("西宁",), ("西宁",), ()),                     # nothing asked: nothing missing
    (("衢州", "宁波"), ("衢州",), ("衢州",), ()),         # a route ("从衢州到宁波港"): about one end will do
    (("北京", "茫崖"), ("茫崖",), (), ()),               # "北京来的专家…去茫崖"
    (("西宁", "海东"), ("格尔木",), ("格尔木",), ("西宁", "海东")),
])
def test_place_check(asked, sentence, article, missing):
    assert place_check(asked, sentence, article) == missing


@pytest.mark.parametrize("asked, places, sentence, missing", [
    (("海东",), ("西宁", "海东", "海南"), "在西宁市、海东市和海南州等部分地区，对2000多家样本单位试点", ("海东",)),
    (("海南",), ("西宁", "海东", "海南"), "在西宁市、海东市和海南州等部分地区，对2000多家样本单位试点", ("海南",)),
    (("黄南",), ("西宁", "黄南"), "西宁市需求234人，黄南州需求195人", ()),        # each with its own figure
    (("海东",), ("海东", "西宁"), "海东市新建学校12所，西宁市新建8所", ()),
    (("海东",), ("海东",), "海东市和全省各地共建成12所", ()),                     # no other place listed
])
def test_a_place_listed_with_others_shares_their_figure(asked, places, sentence, missing):
    assert listed_together(asked, places, sentence) == missing


@pytest.mark.parametrize("asked, sentence, article, missing", [
    (("2024",), ("2023",), ("2023", "2024"), ("2024",)),  # the sentence is about another year
    (("2023",), (), ("2023",), ()),                       # the article gives the year
    (("2022",), (), ("2023",), ("2022",)),
    ((), ("2023",), (), ()),
])
def test_year_check(asked, sentence, article, missing):
    assert year_check(asked, sentence, article) == missing


@pytest.mark.parametrize("question, sentence, missing", [
    ("2025年需求多少人？", "《青海省2023-2025年需求一览表》共征集需求4156人", ("2025",)),  # a period's total
    ("2025年需求多少人？", "2023年需求1522人，2025年需求1187人", ()),
    ("2025年需求多少人？", "目录（2023—2025年）中2025年需求1187人", ()),      # the year alone as well
    ("2024—2026年行动方案有哪些内容？", "出台《行动方案（2024—2026年）》", ()),  # the period is asked
    ("2024年投入多少？", "2024年至2026年累计投入3亿元", ("2024",)),
])
def test_a_period_does_not_answer_for_one_of_its_years(question, sentence, missing):
    assert period_only(tuple(years_in(question)), question, sentence) == missing


@pytest.mark.parametrize("question, sentence, article, missing", [
    ("第40届风筝会吸引了多少游客？", "第41届风筝会开幕，吸引游客12万人次", "第41届风筝会", ("第40届",)),  # another one
    ("第40届风筝会吸引了多少游客？", "开幕当天吸引游客12万人次", "第41届风筝会开幕", ("第40届",)),   # the article's
    ("第40届风筝会吸引了多少游客？", "开幕当天吸引游客12万人次", "第40届风筝会开幕", ()),
    ("柳州第二批口袋公园新增了多少绿地？", "第二批口袋公园新增绿地3万平方米", "", ()),
    ("2018年第四次经济普查选聘了多少人？", "第五次全国经济普查选聘6845名普查员", "", ("第四次",)),
    ("风筝会吸引了多少游客？", "第41届风筝会吸引游客12万人次", "", ()),           # no edition asked
])
def test_an_edition_is_checked_as_a_year_is(question, sentence, article, missing):
    assert edition_check(question, sentence, article) == missing


@pytest.mark.parametrize("text, years", [
    ("去年湿地博物馆共接待游客46.3万人次", ["去年"]),
    ("前年张掖湿地博物馆接待了多少游客？", ["前年"]),
    ("目前年产碳酸锂5万吨，过去年代", []),
    ("今年新增就业4.2万人", []),                          # this year is every story's default
])
def test_relative_years(text, years):
    assert relative_years(text) == years


@pytest.mark.parametrize("asked, sentence_rel, sentence_years, article_rel, missing", [
    (("前年",), ("去年",), (), ("去年",), ("前年",)),      # the sentence says another relative year
    (("去年",), ("去年",), (), (), ()),
    (("去年",), (), (), (), ("去年",)),                   # no year here, and the article never says 去年
    (("去年",), (), (), ("去年",), ()),                   # the article's 去年 covers the sentence
    (("去年",), (), ("2023",), (), ()),                   # 2023年 may be 去年: the paper's date is unknown
])
def test_relative_year_check(asked, sentence_rel, sentence_years, article_rel, missing):
    assert relative_year_check(asked, sentence_rel, sentence_years, article_rel) == missing


@pytest.mark.parametrize("question, sentence, expected", [
    ("格尔木的开发区在全国排第几？", "昆仑经济技术开发区位列全国第八名", 1.0),
    ("格尔木的开发区在全国排第几？", "位列全国第八名", 0.0),              # a rank, but of what?
    ("格尔木的开发区在全国排第几？", "开发区建设取得新成效", 0.0),
    ("西宁的开发区在全国排第几？", "西宁跻身动力电池产能十强城市，位列全国第八名", 0.0),  # another thing's rank
    ("青海画图进度全国排第几？", "青海普查区划绘图进度居全国第一", 1.0),    # the subject in other words
    ("五经普登记工作从哪天开始？", "将在2024年1月1日正式开启", 1.0),
    ("海西州引进了多少个创新创业团队？", "引进创新创业团队46个", 1.0),
    ("海西州引进了多少个创新创业团队？", "2023年引进团队", 0.0),    # a date does not answer 多少
    ("人才公寓建了多少套？", "建设高标准人才公寓670余套", 1.0),     # an approximate amount
    ("来了多少名游客？", "接待游客1.2万余名", 1.0),
    ("来了多少名游客？", "接待游客3000多名", 1.0),
    ("2024年的产值是多少？", "2024年产值创新高", 0.0),             # the question's own number is no answer
    ("电子劳动合同有什么好处？", "实现了全程无纸化", 1.0),          # no fact asked: neutral
    ("博物馆晚上开到几点？", "延长开放时间至21时30分", 1.0),        # 几点 asks a time of day
    ("首班车几点发？", "每天各发车八个班次，票价3元", 0.0),
    ("普查员每天补贴多少钱？", "全省共选聘6845名普查员", 0.0),      # a rate is not answered by a count
    ("人才每月补贴多少？", "设立3200万元人才发展专项资金", 0.0),
    ("农民一年每人多挣多少？", "人均年增收1.8万元", 0.5),        # a rate: its number counts as any number
    ("农民一年每人多挣多少？", "带动农民就业300人", 0.0),
    ("网上签一份合同要多久？", "现在一两分钟就能签一个", 1.0),      # 多久 asks a span of time, not a date
    ("办营业执照要多长时间？", "3个工作日内办结", 1.0),
    ("办证要多久？", "当天即可领取", 1.0),
    ("办证要多久？", "2023年5月起实行新办法", 0.0),             # a date is no span of time
    ("审批时间从几天缩到几天？", "将5天缩减至1天", 1.0),           # 几天 asks a span too, though 时间 is said
    ("考核是哪几天进行的？", "12月19日至27日进行", 1.0),          # 哪几天 asks dates
    ("账目多久公开一回？", "每季度公开一次账目", 1.0),            # 多久…一回 asks how often
    ("账目多久公开一回？", "账目由议事会商量决定", 0.0),
    ("这个奖的奖金是多少？", "第三批人才工作奖授予该部门", 0.0),    # a sum of money is written in 元
    ("这个奖的奖金是多少？", "奖金5万元", 0.5),                    # a sum, though maybe another one
    ("编竹篮一个月能挣多少？", "一个月能挣三千多元", 0.5),           # a sum in Chinese numerals is one too
    ("编竹篮一个月能挣多少？", "工坊带动三百多户", 0.0),
    ("萝卜收的时候多少钱一斤？", "收购价每斤八毛左右", 1.0),          # a price in speech: 八毛, 两块钱
    ("萝卜收的时候多少钱一斤？", "亩产能达到1.2万斤", 0.0),
    ("同类岗位收入能差多少？", "同类人员绩效收入差距达到25%", 0.5),   # a gap may be a share
    ("修这条路花了多少钱？", "硬化道路1.2公里，惠及300户", 0.0),
    ("修这条路花了几万块？", "投入资金三万元", 1.0),                 # the asked unit: 万
    ("工资涨了多少？", "月工资提高15%", 0.5),                      # a change may be a share
    ("企业所得税税率是多少？", "减按15%征收", 0.5),                # a rate is not a sum of money
    ("签了多少个项目，金额多少？", "签约项目86个，签约金额612亿元", 1.0),
    ("老人饭堂吃一顿多少钱？", "82岁的刘大爷一边吃饭一边说", 0.0),   # 多少钱: an age is no price
    ("老人饭堂吃一顿多少钱？", "一荤两素一汤，只要8元钱", 1.0),
    ("坐公交要几块钱？", "新开通两条城乡公交线路，", 0.0),
    ("坐公交要几块钱？", "两条城乡公交线路，票价3元", 1.0),
    ("记三等功能拿多少奖金？", "对56名公务员给予记三等功奖励", 0.0),  # 多少奖金: a sum in 元
    ("他们一共捐了多少？", "积石山6.2级地震发生后，各单位踊跃捐款捐物", 0.0),  # a magnitude is no sum
    ("萝卜一亩地能收多少斤？", "亩产能达到1.2万斤", 1.0),           # units of weight, length, area
    ("萝卜一亩地能收多少斤？", "一亩萝卜收入近万元", 0.0),        # a sum of money is no weight
    ("地震造成了多少人伤亡？", "积石山6.2级地震发生后", 0.0),       # nor a magnitude a count of people
    ("有多少人参加？", "参与人数达到1.2万", 0.5),                  # a bare number may be it
    ("换了多少公里管网？", "对城区38公里老旧供热管网进行了改造", 1.0),
    ("有多少块菜地？", "80余块菜地已全部被认领", 1.0),              # 块 counts plots here, not money
    # which one / what is it called: a name the question does not hold answers it
    ("是哪家爱心企业在运营？", "由社区提供场地、爱心企业运营", 0.0),
    ("同安区“共享菜园”是在哪3个社区试点的？", "同安区在3个社区试点“共享菜园”", 0.0),  # names the question has
    ("试点选了哪几家企业？", "选择青海徕硕科技有限公司作为试点", 1.0),
    # ...of the asked kind, where the sentence speaks of that kind: 哪个社区 wants a 社区 with a name
    ("是在哪3个社区试点的？", "大同街道在3个社区试点", 0.0),           # 大同街道 is new, but no 社区 is named
    ("是在哪3个社区试点的？", "在前营街社区、南门社区和东方社区试点", 1.0),
    ("得分最高的是哪个单位？", "被考核单位民主测评、“两代表一委员”对各单位进行了评价", 0.0),
    ("给哪几家党建联盟单位授了牌？", "为“智造先锋”“创赢天下”4家党建联盟单位授牌", 1.0),  # names listed before it
    ("给哪几家党建联盟单位授了牌？", "为伊泰集团等5家党建联盟单位授牌", 1.0),
    ("海西考核的路子是跟哪个省学的？", "海西州认真落实会议要求", 0.0),  # 海西州 is the question's 海西
    ("海西考核的路子是跟哪个省学的？", "学习借鉴浙江经验", 1.0),
    ("海西的土特产统一打的是什么牌子？", "打造“神奇柴达木”区域公用品牌", 1.0),
    ("从哪几个方面入手？", "一是加强组织领导", 1.0),                 # a kind of thing, not a name: no check
])
def test_fact_match(question, sentence, expected):
    assert fact_match(analyze_question(question, TOK), sentence) == expected


@pytest.mark.parametrize("question, text, context, expected", [
    ("锂电池产能是多少？", "西宁实现锂电池产能32.5吉瓦时", "", 1.0),
    ("锂电池产能是多少？", "实现锂电池产能32.5吉瓦时", "", 1.0),
    ("锂电池产能是多少？", "实现锂电池产量", "产能", (3 + 0.5 * 2) / 5),   # a term only in the article counts half
    ("锂电池产能是多少？", "格尔木发放奖励资金146万元", "", 0.0),
    ("锂电池产能是多少？", "宁夏电池产能", "", (0.5 * 3 * 2 / 3 + 2) / 5),  # characters of a term count, at most half
    # the asked place is the place constraint's: it adds nothing here, unless nothing else is asked
    ("西宁的锂电池产能是多少？", "西宁实现锂电池产能32.5吉瓦时", "", 1.0),
    ("西宁的锂电池产能是多少？", "西宁发放奖励资金146万元", "", 0.0),
    ("西宁呢？", "西宁发放奖励资金146万元", "", 1.0),
])
def test_term_coverage(question, text, context, expected):
    idf = {"西宁": 2.0, "锂电池": 3.0, "产能": 2.0}
    info = analyze_question(question, TOK)
    assert term_coverage(info, text, idf, context=context) == pytest.approx(expected)


@pytest.mark.parametrize("text, nearest, expected", [
    ("社区民警", (0.96, 1.0), 0.75),          # 警察 / 民警: half way from the threshold to 1
    ("社区民警", (0.92, 1.0), 0.5),           # at the threshold: nothing
    ("社区民警", (0.80, 0.0), 0.5),           # 社区 is in the text, whatever its nearest word
    ("警察和社区", (0.0, 0.0), 1.0),          # verbatim
    ("警察和社区", (1.0, 1.0), 1.0),
])
def test_near_coverage(text, nearest, expected):
    weights = (("警察", 1.0), ("社区", 1.0))
    assert near_coverage(weights, (), text, np.array(nearest), 0.92) == pytest.approx(expected)


def test_a_question_word_is_nearest_to_itself_in_a_real_sentence(engine, encoder):
    """The word table and the question's term vectors line up: a term the sentence holds is its own
    nearest word (cosine 1), an unrelated one is not near; a word the pages never use is encoded."""
    from rag.score import _Nearness, term_vectors

    index = engine.index
    assert "开发区" in index.word_rows and "螺蛳粉" not in index.word_rows
    text = "格尔木昆仑经济技术开发区在全国位列128位"
    near_of = _Nearness(index, ["开发区", "螺蛳粉"]).chunk("a-test-article", 0, text)
    near = near_of(0, len(text))
    assert near[0] > 0.99 and near[1] < 0.92
    assert np.all(near_of(0, 3) < 0.99)  # only the words inside the span count: 格尔木 is not 开发区
    want = encoder.encode_queries(["螺蛳粉", "开发区"])
    assert np.all(np.sum(term_vectors(index, ["螺蛳粉", "开发区"]) * want, axis=1) > 0.999)


def test_list_items_take_the_enumeration_near_the_evidence():
    text = ("开头一句。一是甲。二是乙。三是丙。中间很多话。再说一句。还有一句。又一句。"
            "（一）第一项。（二）第二项。")
    assert [text[s:e] for s, e in list_items(text, 0)] == ["一是甲。", "二是乙。", "三是丙。"]
    far = text.index("（一）")
    assert [text[s:e] for s, e in list_items(text, far)] == ["（一）第一项。", "（二）第二项。"]
    heads = "总述。\n筑牢“红色堡垒”\n正文。\n激活人才引擎\n正文。"
    assert [heads[s:e] for s, e in list_items(heads, 0)] == ["筑牢“红色堡垒”", "激活人才引擎"]
    # evidence inside a section is about that section: the heads are not its items
    assert list_items(heads, heads.index("正文")) == []
    assert list_items("没有列举的文章。只有一句。", 0) == []
    assert len(list_items("。".join(f"{n}是第{n}项" for n in "一二三四五六七八") + "。", 0, max_items=4)) == 4


def test_fit_logistic_recovers_a_separating_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] > 0).astype(float)
    w, b = fit_logistic(x, y, l2=0.01)
    assert w[0] > 0 > w[1] and abs(b) < 1.0
    assert ((x @ w + b > 0) == (y == 1)).mean() > 0.97


def _ev(features, *, missing_places=(), missing_years=(), start=0, missing_fact=False):
    features = tuple(features) + (0.0,) * (len(FEATURES) - len(features))
    return Evidence("c", "a", 1, start, start + 10, "x" * 10, features, missing_places, missing_years,
                    missing_fact=missing_fact)


@pytest.mark.parametrize("question, kind, measure", [
    ("有几个单位被评为优秀？", "count", "个"),
    ("近几年引进了几名博士？", "count", "名"),         # 近几年 is no question; 几名博士 a count, not a rank
    ("这几年一共投入了多少钱？", "count", "钱"),
    ("格尔木在全国排几名？", "rank", ""),
    ("罗东川要求在哪几方面持续用力？", "list", ""),     # 哪几: which ones, an enumeration
    ("坐公交要几块钱？", "count", "块钱"),
    ("换了多少公里管网？", "count", "公里"),
    ("试点选了哪几家企业？", "list", ""),
    ("考核是哪几天进行的？", "date", ""),
    # spoken forms ask the same: 啥 = 什么, 咋 = 怎么, 多会儿 = 什么时候, 哪儿 = 哪里
    ("登记啥时候开始？", "date", ""),
    ("补贴多会儿能发下来？", "date", ""),
    ("工资被拖欠了咋办？", "list", ""),
    ("这个平台有啥用？", "benefit", ""),
    ("新建的驿站都在哪儿？", "who", ""),
])
def test_question_kind_and_measure(question, kind, measure):
    info = analyze_question(question, TOK)
    assert (info.kind.value, info.measure) == (kind, measure)


@pytest.mark.parametrize("question, asks", [
    ("窗口那位工作人员叫什么？", True),
    ("窗口那位工作人员叫啥？", True),
    ("土特产打的是啥牌子？", True),
    ("这个系统啥名字？", True),
    ("登记啥时候开始？", False),   # a date, not a name
    ("从哪个方面入手？", False),   # a kind, not a name
])
def test_a_question_asks_for_a_name_in_either_register(question, asks):
    from rag.score import asks_a_name

    assert asks_a_name(question) is asks


@pytest.mark.parametrize("question, sentence, named", [
    # a body asked for is named by a body's name: not a person's, not a place's
    ("食堂是哪家爱心企业在运营？", "在瑞昌市南门社区长者食堂，82岁的刘大爷一边吃饭一边说。", False),
    ("食堂是哪家爱心企业在运营？", "食堂由瑞昌爱心餐饮公司负责运营。", True),
    ("这事归哪个部门管？", "市民张先生说，这事在西宁很常见。", False),
    ("这事归哪个部门管？", "此事由市人社局负责。", True),
    # a person asked for may be named by a person's name
    ("是哪位专家来讲的课？", "讲课的是刘明教授。", True),
])
def test_the_name_of_the_asked_kind_of_thing(question, sentence, named):
    from rag.score import names_something_new

    assert names_something_new(question, sentence, TOK) is named



@pytest.mark.parametrize("features, missing, no_fact, outcome", [
    ((1, 1, 1, 1, 1, 1), (), False, "answer"),
    ((0, 0, 0, 1, 1, 1), (), False, "refuse"),
    ((1, 1, 1, 0, 1, 1), ("德令哈",), False, "partial"),   # would answer but for the place
    ((0, 0, 0, 0, 1, 1), ("德令哈",), False, "refuse"),    # another place, and no answer either
    ((1, 1, 0, 1, 1, 1), (), True, "partial"),            # the topic, but not the asked date/count/rank
    ((0, 0, 0, 1, 1, 1), (), True, "refuse"),             # neither the topic nor the fact
])
def test_judge_answers_reports_a_near_miss_or_refuses(features, missing, no_fact, outcome):
    params = ScoringParams(weights=(3, 1, 1, 4, 4, 0) + (0,) * (len(FEATURES) - 6), bias=-9.5, threshold=0.5)
    verdict = judge([_ev(features, missing_places=missing, missing_fact=no_fact)], params)
    got = "answer" if verdict.chosen else "partial" if verdict.partial else "refuse"
    assert got == outcome


def test_evidence_without_the_asked_fact_never_answers_however_well_it_scores():
    """A strong sentence lacking the asked date loses to a weaker one holding it, and alone is only partial."""
    params = ScoringParams(weights=(3, 1, 1, 4, 4, 0) + (0,) * (len(FEATURES) - 6), bias=-9.5, threshold=0.3)
    strong = _ev((1, 3, 0, 1, 1, 1), missing_fact=True)
    weaker = _ev((1, 1, 1, 1, 1, 1), start=20)
    assert params.probability(strong.features) > params.probability(weaker.features)
    assert judge([strong, weaker], params).chosen == (weaker,)
    assert judge([strong], params).partial == strong and not judge([strong], params).chosen


@pytest.mark.parametrize("fact, place, year, holds", [
    (1.0, 1.0, 1.0, True), (0.5, 1.0, 1.0, True),  # a number in another unit may still answer
    (0.0, 1.0, 1.0, False), (1.0, 0.0, 1.0, False), (1.0, 1.0, 0.0, False),
])
def test_constraints_hold_is_evidence_fits(fact, place, year, holds):
    from rag.score import constraints_hold

    row = (0.5, 0.5, fact, place, year, 1.0) + (0.0,) * (len(FEATURES) - 6)
    ev = _ev(row, missing_places=() if place else ("x",), missing_years=() if year else ("2020",),
             missing_fact=fact == 0.0)
    assert bool(constraints_hold(np.array([row]))[0]) is holds is ev.fits


def test_params_round_trip_and_the_shipped_file_is_fitted(tmp_path):
    p = ScoringParams(weights=tuple(float(i) for i in range(len(FEATURES))), bias=-1.5, threshold=0.4, fitted_on="t")
    path = save_scoring(p, tmp_path / "s.json")
    d = json.loads(path.read_text(encoding="utf-8"))
    assert list(d["weights"]) == list(FEATURES)
    assert load_scoring(path) == p
    shipped = load_scoring()
    assert "not fitted" not in shipped.fitted_on and 0 < shipped.threshold < 1
    with pytest.raises(ValueError, match="weights must have"):
        ScoringParams(weights=(1.0,))


@pytest.mark.parametrize("text, gold, found", [
    ("位列128位，较上年度跃升85位。", "较上年度跃升85位", "较上年度跃升85位"),
    ("全省共选聘6845名普查员,普查指导员", "6845名普查员，普查指导员", "6845名普查员,普查指导员"),
    ("电子 劳动合同182份", "电子劳动合同182份", "电子 劳动合同182份"),
    ("没有这句话", "另一句", None),
])
def test_gold_spans_tolerate_repair_changes(text, gold, found):
    spans = gold_spans(text, gold)
    assert (text[spans[0][0]:spans[0][1]] if spans else None) == found


@pytest.mark.parametrize("question, previous, expected", [
    ("那西宁呢？", ["格尔木的开发区在全国排第几？"], "西宁的开发区在全国排第几？"),
    ("那2022年呢？", ["海西州2023年村集体平均收益是多少？"], "海西州2022年村集体平均收益是多少？"),
    ("去年呢？", ["2023年海西村均集体经济收益多少？"], "2022年海西村均集体经济收益多少？"),  # the year before
    ("去年呢？", ["海西村均集体经济收益多少？"], "去年海西村均集体经济收益多少？"),    # a time, not a place
])
def test_follow_ups_substitute_the_entity(question, previous, expected):
    assert resolve_followup(question, previous, TOK) == expected


@pytest.mark.parametrize("question, previous, expected", [
    ("登记啥时候开始？", ["五经普一共选聘了多少普查员？"], "登记啥时候开始（五经普选聘普查员）？"),
    ("那西宁呢？", ["格尔木的开发区在全国排第几？"], None),            # a follow-up already: resolve_followup's
    ("西宁的开发区排第几？", ["格尔木的开发区在全国排第几？"], None),   # names its own place: a new topic
    ("登记啥时候开始？", [], None),
])
def test_in_context_reads_a_question_in_the_previous_topic(question, previous, expected):
    assert in_context(question, previous, TOK) == expected


def test_load_qa_reads_kinds_pages_and_histories(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in [
        {"id": "r1", "page": "000", "question": "那西宁呢？", "kind": "followup", "answerable": False,
         "history": [{"question": "格尔木的开发区在全国排第几？", "answer": "…"}]},
        {"id": "r2", "question": "格尔木的开发区在全国排第几？", "gold": "位列128位", "facts": ["128"]},
    ]), encoding="utf-8")
    a, b = load_qa(path)
    assert a.history == ("格尔木的开发区在全国排第几？",) and a.kind == "followup" and a.page == "000"
    assert b.group == "fact" and a.group == "followup"


def test_per_index_state_lives_on_each_loaded_index(index_dir, engine):
    """Two loads of one index each carry their own derived state; answering from one leaves the other
    untouched, and the scoring module holds no cache keyed by an index."""
    import rag.score as score
    from rag.index import load_index

    first, second = load_index(index_dir), load_index(index_dir)
    assert first.term_idf == second.term_idf and first.term_idf is not second.term_idf
    assert first.corpus_text == second.corpus_text and "格尔木" in first.corpus_text
    table = score.sentence_table(first)
    assert score.sentence_table(first) is table and "sentence_table" not in second.derived
    assert len(table.facts) == len(first.sentences)
    engine.ask("格尔木的开发区在全国排第几？")
    assert engine.index.derived["evidence"] and "evidence" not in first.derived
    assert not {"_blobs", "_idf", "_tables", "_remembered"} & set(vars(score))  # the old id()-keyed caches
