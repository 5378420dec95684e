"""Question analysis shared by retrieval and answering: key terms, and the kind of fact asked for."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .zh import fold_width, numbers_in, words

__all__ = ["QuestionInfo", "analyze_question", "fact_match", "sentence_coverage"]

_NUM = r"(?:\d+(?:\.\d+)?|[一二三四五六七八九十百千万两]+)"
# what the question asks for, recognised from its wording
_RANK_Q = re.compile(r"第几|排第|排名|名次|排[在到]?哪|几名|位列")
_COUNT_Q = re.compile(r"多少|几(?!乎)|多大|多高|多长|多久|比例|百分之")
_DATE_Q = re.compile(r"什么时候|何时|哪天|哪一天|哪年|哪一年|几月|几号|日期|时间|多久|从哪天")
_LIST_Q = re.compile(r"哪些|什么措施|哪几|有什么|什么好处|怎么做|如何|做了什么|采取了|举措|办法")
_WHO_Q = re.compile(r"谁|哪位|哪个单位|哪家|哪所|哪个部门|什么人|哪里|在哪")
_MEASURE_RE = re.compile(r"(?:多少|几)([个名家位人项台场套份次件万亿元吨天年月日级岁倍条所批类户间座辆]?)")

_RANK_A = re.compile(rf"第{_NUM}|位列|\d+位|排名|居全国|排第")
_DATE_A = re.compile(r"\d{4}年|\d{1,2}月\d{1,2}日|\d{1,2}月|\d{1,2}日")
_NUMBER_A = re.compile(rf"{_NUM}\s*(?:%|％|[个名家位人项台场套份次件万亿元吨天年月日级岁倍条所批类户间座辆])|\d")


_QUESTION_WORDS = {"第几", "几", "排", "多少", "多大", "有多大", "什么时候", "哪些", "哪天", "是不是", "排名第几"}
_WEAK_CHARS = set("个名家位人项台场套份次件元吨天年月日级岁倍条所批类户间座辆里要排有给到")


@dataclass(frozen=True)
class QuestionInfo:
    """What a question asks: its content terms and the expected kind of answer."""

    text: str
    terms: tuple[str, ...]
    kind: str  # rank | date | count | list | who | other
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
    elif _WHO_Q.search(q):
        kind = "who"
    else:
        kind = "other"
    m = _MEASURE_RE.search(q)
    measure = m.group(1) if m and kind == "count" else ""
    terms = tuple(dict.fromkeys(t for t in words(q) if t not in _QUESTION_WORDS
                                and not (len(t) == 1 and t in _WEAK_CHARS)))
    return QuestionInfo(question, terms, kind, measure, tuple(numbers_in(q)))


def fact_match(info: QuestionInfo, sentence: str) -> float:
    """How well a sentence holds the kind of fact the question asks for (0..1)."""
    s = fold_width(sentence)
    if info.kind == "rank":
        return 1.0 if _RANK_A.search(s) else 0.0
    if info.kind == "date":
        return 1.0 if _DATE_A.search(s) else 0.0
    if info.kind == "count":
        if info.measure and re.search(rf"{_NUM}\s*{re.escape(info.measure)}", s):
            return 1.0
        return 0.5 if _NUMBER_A.search(s) else 0.0
    if info.kind == "list":
        return min(1.0, s.count("、") / 3 + s.count("，") / 8)
    return 0.0


def sentence_coverage(info: QuestionInfo, sentence: str, idf: dict[str, float], context: str = "") -> float:
    """IDF-weighted share of the question's terms found in the sentence (terms only in ``context``,
    e.g. the article title, count half)."""
    if not info.terms:
        return 0.0
    s = fold_width(sentence).lower()
    c = fold_width(context).lower()
    total = got = 0.0
    for t in info.terms:
        w = idf.get(t, 1.0)
        total += w
        if t in s:
            got += w
        elif t in c:
            got += 0.5 * w
    return got / total if total else 0.0
