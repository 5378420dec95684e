"""Question analysis shared by retrieval and answering: key terms, and the kind of fact asked for."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .zh import MEASURE_WORDS, fold_width, numbers_in, words

__all__ = ["QuestionInfo", "analyze_question", "fact_match", "term_coverage", "SOFT_TERMS", "is_followup",
           "resolve_followup"]

_NUM = r"(?:\d+(?:\.\d+)?|[一二三四五六七八九十百千万两]+)"
# what the question asks for, recognised from its wording
_RANK_Q = re.compile(r"第几|排第|排名|名次|排[在到]?哪|几名|位列")
_COUNT_Q = re.compile(r"多少|几(?!乎)|多大|多高|多长|多久|比例|百分之")
_DATE_Q = re.compile(r"什么时候|何时|哪天|哪一天|哪年|哪一年|几月|几号|日期|时间|多久|从哪天")
_LIST_Q = re.compile(r"哪些|什么措施|哪几|怎么做|做了什么|采取了|举措|办法")
_BENEFIT_Q = re.compile(r"好处|益处|便利|优势|作用|意义|帮助|有什么用|有何用")
_BENEFIT_A = re.compile(r"有利于|利于|便捷|高效|方便|节约|降低|提高|提升|减少|避免|无纸化|零跑腿|随时随地|省时|省力|优化|保障|维护")
_DATE_IN_TEXT = re.compile(r"\d{4}年(?:\d{1,2}月)?(?:\d{1,2}日)?|\d{1,2}月(?:\d{1,2}日)?|\d{1,2}日")
_WHO_Q = re.compile(r"谁|哪位|哪个单位|哪家|哪所|哪个部门|什么人|哪里|在哪")
_MEASURE_RE = re.compile(rf"(?:多少|几)([{MEASURE_WORDS}钱]?)")

_RANK_A = re.compile(rf"第{_NUM}|位列|\d+位|排名|居全国|排第")
_DATE_A = re.compile(r"\d{4}年|\d{1,2}月\d{1,2}日|\d{1,2}月|\d{1,2}日")
_NUMBER_A = re.compile(rf"{_NUM}\s*(?:%|％|[{MEASURE_WORDS}])|\d")


_QUESTION_WORDS = {"第几", "几", "排", "多少", "多大", "有多大", "什么时候", "时候", "哪些", "哪天", "是不是", "排名第几",
                   "这次", "这个", "如果", "是否"}
_WEAK_CHARS = (set(MEASURE_WORDS) - set("万亿")) | set("里要排有给到用钱")
# measure words that count the same things ("多少名" is answered by "73人")
_SAME_MEASURE = {"名": "名人位", "人": "人名位", "位": "位名人", "个": "个项处家所", "项": "项个", "钱": "元",
                 "家": "家个户所"}


@dataclass(frozen=True)
class QuestionInfo:
    """What a question asks: its content terms and the expected kind of answer."""

    text: str
    terms: tuple[str, ...]
    kind: str  # rank | date | count | list | benefit | who | other
    measure: str  # the measure word after 多少/几 ("个", "名", ...), or ""
    numbers: tuple[str, ...]


@lru_cache(maxsize=1024)
def analyze_question(question: str) -> QuestionInfo:
    """Key terms and expected answer type of a question.

    >>> analyze_question("海西州引进了多少个创新创业团队？").kind
    'count'
    """
    q = fold_width(question)
    if _RANK_Q.search(q):
        kind = "rank"
    elif _DATE_Q.search(q):
        kind = "date"
    elif _COUNT_Q.search(q):
        kind = "count"
    elif _LIST_Q.search(q):
        kind = "list"
    elif _BENEFIT_Q.search(q):
        kind = "benefit"
    elif _WHO_Q.search(q):
        kind = "who"
    else:
        kind = "other"
    m = _MEASURE_RE.search(q)
    measure = m.group(1) if m and kind == "count" else ""
    # numbers with the unit written after them ("2024年"), so that "2024—2026年" does not match "2024年"
    numbers = tuple(m.group(0) for m in re.finditer(r"\d+(?:\.\d+)?(?:%|[年月日号个名家位人项万亿元吨天级])?", q))
    bare = set(numbers_in(q))
    terms = tuple(dict.fromkeys(t for t in words(q) if t not in _QUESTION_WORDS and t not in bare
                                and "几" not in t and not (len(t) == 1 and (t in _WEAK_CHARS or not t.isalnum()))))
    return QuestionInfo(question, terms, kind, measure, numbers)


def fact_match(info: QuestionInfo, sentence: str) -> float:
    """How well a sentence holds the kind of fact the question asks for (0..1). Numbers the question
    itself contains ("2024年的…是多少") are not an answer, so they are ignored."""
    s = fold_width(sentence)
    for num in sorted(info.numbers, key=len, reverse=True):
        s = s.replace(num, " ")
    if info.kind == "rank":
        return 1.0 if _RANK_A.search(s) else 0.0
    if info.kind == "date":
        return 1.0 if _DATE_A.search(s) else 0.0
    if info.kind == "count":
        units = _SAME_MEASURE.get(info.measure, info.measure)
        if units and re.search(rf"{_NUM}\s*(?:万|亿)?[{re.escape(units)}]", s):
            return 1.0
        # a bare "是多少" is not answered by a date
        return 0.5 if _NUMBER_A.search(_DATE_IN_TEXT.sub(" ", s)) else 0.0
    if info.kind == "benefit":
        return min(1.0, len(_BENEFIT_A.findall(s)) / 2)
    if info.kind == "list":
        return min(1.0, s.count("、") / 3 + s.count("，") / 8) * 0.5
    return 0.0


def term_coverage(info: QuestionInfo, text: str, idf: dict[str, float], *, context: str = "",
                  unknown_idf: float = 5.0, corpus: str = "") -> float:
    """IDF-weighted share of the question's terms in the text (terms only in the article count half;
    generic question nouns count little; a term the newspapers never mention counts extra)."""
    s, c = fold_width(text).lower(), fold_width(context).lower()
    total = got = 0.0
    han = sum(1 for ch in info.text if "\u4e00" <= ch <= "\u9fff")
    english = han < sum(1 for ch in info.text if ch.isascii() and ch.isalpha())
    for t in info.terms:
        w = idf.get(t, unknown_idf) * (0.3 if t in SOFT_TERMS else 1.0)
        if corpus and t not in corpus and t not in SOFT_TERMS:
            # in an English question, a word the Chinese sources never use says little; in a
            # Chinese question, a word they never use (地铁, GDP) is a concept they do not cover
            w *= 0.3 if t.isascii() and english else 1.5
        total += w
        if t in s:
            got += w
        elif t in c:
            got += 0.5 * w
    for num in info.numbers:  # a number in the question must be in the evidence, with its unit;
        total += 3.0          # finding it there is a constraint met, not an answer: an ordinary weight
        got += 3.0 if num in s else 0.0
    return got / total if total else 0.0


# Generic question nouns: they say what kind of answer is wanted, not what it is about.
SOFT_TERMS = frozenset("""好处 益处 便利 优势 用处 措施 作用 意义 内容 办法 要求 方面 成效 效果 举措 变化 目的 原因 情况 工作 具体 主要
哪些方面 做法 政策 有关 相关 特点 亮点 成果 进展 影响 帮助""".split())

_FOLLOWUP_START = re.compile(r"^(那|那么|那个|那些|还有|另外|此外|它|它们|他们|这个|这些|该|其|具体|再|以及|和|同时)")
_FOLLOWUP_END = re.compile(r"呢[？?！!。]*$")
_THAT_X = re.compile(r"^(?:那|那么)?(.{1,12}?)呢[？?！!。]*$")


def is_followup(question: str) -> bool:
    """Whether a question leans on the previous turn ("那西宁呢？", "具体有哪些措施？")."""
    q = question.strip()
    if _FOLLOWUP_START.match(q) or (_FOLLOWUP_END.search(q) and len(q) <= 14):
        return True
    info = analyze_question(q)
    return len([t for t in info.terms if t not in SOFT_TERMS]) == 0


def resolve_followup(question: str, history: list[str]) -> str:
    """Rewrite a follow-up question into a standalone one using the previous questions.

    "那西宁呢？" after "格尔木的开发区在全国排第几？" becomes "西宁的开发区在全国排第几？"; other
    follow-ups get the previous question's topic words appended.

    >>> resolve_followup("那西宁呢？", ["格尔木的开发区在全国排第几？"])
    '西宁的开发区在全国排第几？'
    """
    q = question.strip()
    prev = next((h.strip() for h in reversed(history) if h and h.strip()), "")
    if not prev or not is_followup(q):
        return q
    m = _THAT_X.match(q)
    if m:
        new = m.group(1).strip("，, ")
        place = _place_in(prev)
        if place and new and place not in new:
            return prev.replace(place, new, 1)
        return f"{new}{prev}" if new else prev
    topic = [t for t in analyze_question(prev).terms if t not in SOFT_TERMS and t not in q]
    return f"{q.rstrip('？?')}（{''.join(topic)}）？" if topic else q


def _place_in(text: str) -> str | None:
    """The first place or organisation name in a text (jieba part-of-speech ns/nt, or a user-dictionary name)."""
    from .zh import _jieba

    _jieba()
    import jieba.posseg as pseg

    for w, flag in pseg.lcut(text):
        if flag in ("ns", "nt") and len(w) >= 2:
            return w
    return None
