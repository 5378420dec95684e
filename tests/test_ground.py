"""The grounding check that stands between a local model and the user (pure rules, table-driven),
and the fallbacks around it, fed with texts a model could write."""
from __future__ import annotations

import pytest

from rag.ground import check_answer, facts_in, normalize_numbers
from rag.types import FallbackReason

EXCERPTS = [
    "格尔木昆仑经济技术开发区在全国230家国家级经济技术开发区中位列128位，较上年度考核排名跃升85位。",
    "试点企业已顺利签订电子劳动合同182份。",
    "2022年盐湖产业实现产值589.4亿元，钾肥产量达到779万吨、占全国产量的80％。",
    "实施“柴达木英才”计划，设立3200万元专项资金支持人才科技创新和成果转化。",
]


@pytest.mark.parametrize("raw, norm", [
    ("１２８位", "128位"),
    ("百分之十", "10%"),
    ("百分之八十", "80%"),
    ("80％", "80%"),
    ("一百二十八位", "128位"),
    ("第八名", "第8名"),
    ("六个考核组", "6个考核组"),
    ("1,200人", "1200人"),
    ("一线干部", "一线干部"),  # a word, not a number
    ("统一管理", "统一管理"),
])
def test_number_normalisation(raw, norm):
    assert normalize_numbers(raw) == norm


@pytest.mark.parametrize("answer, ok_text, dropped", [
    # numbers copied, markers right
    ("开发区位列128位，较上年跃升85位[1]。", "开发区位列128位，较上年跃升85位。[1]", 0),
    # full-width and Chinese numerals are the same numbers
    ("开发区位列１２８位[1]。", "开发区位列１２８位。[1]", 0),
    ("钾肥产量占全国产量的百分之八十[3]。", "钾肥产量占全国产量的百分之八十。[3]", 0),
    # a changed number is dropped
    ("试点企业签订电子劳动合同183份[2]。", "", 1),
    # the right number cited to the wrong excerpt: moved to the excerpt that holds it
    ("试点企业签订电子劳动合同182份[1]。", "试点企业签订电子劳动合同182份。[2]", 0),
    # a missing marker is attached to the supporting excerpt
    ("设立3200万元专项资金支持人才。", "设立3200万元专项资金支持人才。[4]", 0),
    # a marker to no excerpt is removed, the sentence re-attached
    ("试点企业签订电子劳动合同182份[9]。", "试点企业签订电子劳动合同182份。[2]", 0),
    # a quoted name must be in the excerpt
    ("实施“昆仑英才”计划[4]。", "", 1),
    # an unsupported claim without numbers is dropped
    ("该开发区还获得了联合国环境大奖[1]。", "", 1),
    # one good sentence, one invented
    ("试点企业签订合同182份[2]。另外还有500家企业在排队[2]。", "试点企业签订合同182份。[2]", 1),
])
def test_check_answer(answer, ok_text, dropped):
    g = check_answer(answer, EXCERPTS)
    assert g.text() == ok_text
    assert len(g.dropped) == dropped
    assert g.ok == bool(ok_text)


@pytest.mark.parametrize("answer, excerpt", [
    ("村均收益达24.7[1]。", "全州村集体经济村均收益达24.74万元。"),  # a cut-off decimal
    ("制定需求目录（2023-20[1]。", "编制《急需紧缺人才需求目录（2023-2025）》。"),  # a cut-off range
    ("开发区位列12位[1]。", "开发区位列128位。"),  # a prefix of a larger number
    ("开发区位列28位[1]。", "开发区位列128位。"),  # a suffix of it
    ("产值589亿元[1]。", "实现产值589.4亿元。"),  # the integer part of a decimal
    ("占全国产量的8%[1]。", "钾肥产量占全国产量的80％。"),
])
def test_numbers_are_compared_as_whole_numbers(answer, excerpt):
    g = check_answer(answer, [excerpt])
    assert not g.ok and len(g.dropped) == 1, g


@pytest.mark.parametrize("answer, excerpt", [
    ("村均收益达24.74万元[1]。", "全州村集体经济村均收益达24.74万元。"),
    ("目录覆盖2023-2025年[1]。", "编制《急需紧缺人才需求目录（2023-2025）》。"),
    ("钾肥占全国产量的80%[1]。", "钾肥产量占全国产量的80％。"),
    ("位列一百二十八位[1]。", "开发区位列128位。"),
])
def test_whole_numbers_in_any_form_pass(answer, excerpt):
    assert check_answer(answer, [excerpt]).ok


_FIRMS = "全市培育高新技术企业11家、科技型企业29家、创新型中小企业12家、“专精特新”中小企业12家。"
_POTASH = "2022年盐湖产业实现产值589.4亿元，钾肥产量达到779万吨、占全国产量的80％，碳酸锂产量5.6万吨、占全国产量的14％。"


@pytest.mark.parametrize("answer, excerpt, ok", [
    # a number of the excerpt said of another thing than the excerpt says it of (the local model did this)
    ("格尔木市全市培育高新技术企业12家[1]。", _FIRMS, False),
    ("钾肥产量5.6万吨[1]。", _POTASH, False),
    # the same facts, reworded or in another order
    ("格尔木市全市培育高新技术企业11家[1]。", _FIRMS, True),
    ("全市培育了11家高新技术企业和29家科技型企业[1]。", _FIRMS, True),
    ("高新技术企业有11家，科技型企业29家[1]。", _FIRMS, True),
    ("“专精特新”中小企业有12家[1]。", _FIRMS, True),
    ("钾肥产量占全国的80%[1]。", _POTASH, True),
    ("2022年盐湖产业产值为589.4亿元[1]。", _POTASH, True),
])
def test_each_number_is_said_of_what_the_excerpt_says_it_of(answer, excerpt, ok):
    g = check_answer(answer, [excerpt])
    assert g.ok is ok, g.reasons
    if not ok:
        assert "said of something else" in g.reasons[-1]


def test_marker_after_the_full_stop_belongs_to_the_sentence_before():
    g = check_answer("开发区位列128位。[1]试点企业签订电子劳动合同182份。[2]", EXCERPTS)
    assert g.sentences == [("开发区位列128位。", [1]), ("试点企业签订电子劳动合同182份。", [2])]
    assert g.repaired == 0


def test_facts_include_numbers_and_quoted_names():
    assert facts_in("“柴达木英才”计划设立3200万元，占百分之十") == ["3200", "10%", "柴达木英才"]


def test_generated_answers_fall_back_when_they_fail(engine):
    from rag.generate import generate_answer

    q = "格尔木的开发区在全国排第几？"
    hits = engine.search(q)
    extractive = engine.ask(q)

    def run(text):
        return generate_answer(engine.index, engine.question(q), hits, engine.settings, extractive,
                               stream=iter([text]))

    good = run("格尔木昆仑经济技术开发区位列全国第128位[1]。")
    assert good.mode == "llm" and "128" in good.answer and good.citations[0].excerpt in \
        engine.index.articles[good.citations[0].article_id].text
    bad = run("格尔木开发区排名全国第100位[1]。")
    assert bad.mode == "extractive-fallback" and bad.answer == extractive.answer
    assert "grounding" in bad.fallback_reason and bad.fallback is FallbackReason.UNGROUNDED
    refusal = run("资料中没有相关信息。")
    assert refusal.mode == "extractive-fallback" and "declined" in refusal.fallback_reason
    assert refusal.fallback is FallbackReason.DECLINED
    empty = run("")
    assert empty.fallback_reason == "the model produced no answer" and empty.fallback is FallbackReason.NO_ANSWER
    vague = run("格尔木昆仑经济技术开发区在全国排名靠前[1]。")
    assert vague.mode == "extractive-fallback" and "left out" in vague.fallback_reason
    assert vague.fallback is FallbackReason.LEFT_OUT_FACTS and good.fallback is None
    unanswerable = engine.ask("西宁地铁什么时候开通？")
    skipped = generate_answer(engine.index, engine.question("西宁地铁什么时候开通？"),
                              engine.search("西宁地铁什么时候开通？"), engine.settings, unanswerable,
                              stream=iter(["西宁地铁将于2025年开通[1]。"]))
    assert skipped.refused and "not asked" in skipped.fallback_reason
    assert skipped.fallback is FallbackReason.NOT_ASKED


@pytest.mark.parametrize("sentence, excerpt, shown", [
    ("西宁排第8名", "西宁位列全国第八名。", "西宁排第八名"),
    ("钾肥占全国百分之八十", "钾肥产量占全国产量的80％", "钾肥占全国80％"),
    ("签订合同１８２份", "签订电子劳动合同182份。", "签订合同182份"),
    ("位列128位", "位列128位", "位列128位"),
])
def test_numbers_are_shown_in_the_sources_own_form(sentence, excerpt, shown):
    from rag.ground import source_forms

    assert source_forms(sentence, [excerpt]) == shown


class _Unfinished:
    """A model stream that stops for another reason than the model's own end of turn."""

    def __init__(self, pieces, finish_reason, detail=""):
        self._it, self.finish_reason, self.detail = iter(pieces), finish_reason, detail

    def __iter__(self):
        return self._it


@pytest.mark.parametrize("pieces, finish", [
    (["2023年度海西州村"], "time"),  # the time limit, mid-word
    (["格尔木昆仑经济技术开发区位列全国第128位[1]。"], "length"),  # even a complete-looking sentence
    (["格尔木昆仑经济技术开发区位列"], "cancel"),
    (["格尔木昆仑经济技术开发区位列全国第1"], "crashed"),
    ([], "hung"),
])
def test_only_a_finished_generation_is_checked(engine, pieces, finish):
    from rag.generate import generate_answer

    q = "格尔木的开发区在全国排第几？"
    extractive = engine.ask(q)
    ans = generate_answer(engine.index, engine.question(q), engine.search(q), engine.settings, extractive,
                          stream=_Unfinished(pieces, finish, "why"))
    assert ans.mode == "extractive-fallback" and ans.answer == extractive.answer
    assert ans.check["finish_reason"] == finish and "why" in ans.fallback_reason
    assert ("failed" in ans.fallback_reason) == (finish in ("crashed", "hung"))
    failed = finish in ("crashed", "hung")
    assert ans.fallback is (FallbackReason.MODEL_FAILED if failed else FallbackReason.NOT_FINISHED)


def test_output_past_the_character_limit_is_not_repaired_into_an_answer(engine):
    import itertools

    from rag.generate import generate_answer

    q = "试点企业签了多少份电子劳动合同？"
    base = engine.ask(q)
    endless = itertools.cycle(["试点企业签订合同182份[1]。", "还有更多"])
    ans = generate_answer(engine.index, engine.question(q), engine.search(q), engine.settings, base, stream=endless)
    assert ans.mode == "extractive-fallback" and ans.check["finish_reason"] == "length"
    assert len(ans.check["model_answer"]) <= 8 * engine.settings.llm.max_tokens + 40
    assert ans.answer == base.answer and "182" in ans.answer
