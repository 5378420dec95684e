"""The question, analysed once: key terms, the kind of fact asked for, follow-ups resolved. A
``Question`` is made in ``Engine.ask``/``search`` and handed to every stage after it."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .meta import Filters
from .types import QuestionKind
from .zh import MEASURE_WORDS, Tokenizer, default_tokenizer, fold_width, numbers_in, relative_years, years_in

__all__ = ["Question", "QuestionInfo", "analyze_question", "SOFT_TERMS", "is_followup", "resolve_followup", "in_context"]

_NUM = r"(?:\d+(?:\.\d+)?|[一二三四五六七八九十百千万两]+)"
# what the question asks for, recognised from its wording
_RANK_Q = re.compile(r"第几|排第|排名|名次|排[在到]?哪|前几名|排[在到]?几名|位列")  # 引进了几名博士 counts
_COUNT_Q = re.compile(r"多少|(?<![哪这那近])几(?!乎)|多大|多高|多长|多久|比例|百分之")
# each with its spoken forms (啥 = 什么, 咋 = 怎么, 多会儿 = 什么时候, 哪儿 = 哪里)
_DATE_Q = re.compile(r"什么时候|啥时候?|多会儿|哪会儿|何时|哪天|哪几[天年]|哪一天|哪年|哪一年|几月|几号|日期|时间|多久"
                     r"|从哪天|几点|几时")
_LIST_Q = re.compile(r"哪些|哪几|[怎咋]么?做|做了[什啥]么?|采取了|举措|办法|措施|做法|要求|怎么[抓推办干]|咋[抓推办干弄整搞]")
_BENEFIT_Q = re.compile(r"好处|益处|便利|优势|作用|意义|帮助|有什么用|有啥用|有何用")
_WHO_Q = re.compile(r"谁|哪位|哪个单位|哪家|哪所|哪个部门|什么人|啥人|哪里|哪儿|在哪")
# the unit asked for after 多少/几: a measure word, or a unit of length, weight, area or money
_MEASURE_RE = re.compile(rf"(?:多少|(?<![哪这那近])几)(平方公里|平方米|公里|千米|公斤|千克|公顷|块钱|毛钱|万元|亿元"
                         rf"|[{MEASURE_WORDS}钱斤亩米只头张块支本棵株栋层届期部架]?)")
_KIND_PATTERNS = ((QuestionKind.RANK, _RANK_Q), (QuestionKind.DATE, _DATE_Q), (QuestionKind.COUNT, _COUNT_Q),
                  (QuestionKind.LIST, _LIST_Q), (QuestionKind.BENEFIT, _BENEFIT_Q), (QuestionKind.WHO, _WHO_Q))


_QUESTION_WORDS = {"第几", "几", "排", "多少", "多大", "有多大", "什么时候", "时候", "哪些", "哪天", "是不是", "排名第几",
                   "这次", "这个", "如果", "是否"}
_WEAK_CHARS = (set(MEASURE_WORDS) - set("万亿")) | set("里要排有给到用钱")


@dataclass(frozen=True)
class QuestionInfo:
    """What a question asks: its content terms and the expected kind of answer."""

    text: str
    terms: tuple[str, ...]
    kind: QuestionKind
    measure: str  # the measure word after 多少/几 ("个", "名", ...), or ""
    numbers: tuple[str, ...]
    places: tuple[str, ...] = ()  # places the question names (zh.place_key form: "德令哈", "海西")
    years: tuple[str, ...] = ()  # years it names ("2023", or relative to the paper: "去年")


@dataclass(frozen=True)
class Question:
    """A checked question as the stages read it: what was asked, the standalone question it stands
    for after the conversation (a follow-up resolved; else the same text), that question's analysis,
    and the filters its sources must be inside."""

    text: str  # as asked, cleaned of control and zero-width characters
    resolved: str  # what is searched for and analysed
    info: QuestionInfo  # analyze_question(resolved)
    filters: Filters | None = None

    @classmethod
    def of(cls, text: str, *, resolved: str | None = None, filters: Filters | None = None,
           tokenizer: Tokenizer | None = None) -> "Question":
        """The record of an already checked text (and its resolved form, if it is a follow-up), analysed
        with the index's ``tokenizer`` (default: the default tokenizer)."""
        resolved = text if resolved is None else resolved
        return cls(text, resolved, analyze_question(resolved, tokenizer), filters or None)


def analyze_question(question: str, tokenizer: Tokenizer | None = None) -> QuestionInfo:
    """Key terms and expected answer type of a question, its words and places by the index's
    ``tokenizer`` (default: the default tokenizer); remembered by the tokenizer.

    >>> analyze_question("海西州引进了多少个创新创业团队？").kind.value
    'count'
    """
    tokenizer = tokenizer or default_tokenizer()
    return tokenizer.remembered(("analyze_question", question), lambda: _analyze(question, tokenizer))


def _analyze(question: str, tokenizer: Tokenizer) -> QuestionInfo:
    q = fold_width(question)
    # the first kind whose wording the question has, in this order
    kind = next((k for k, pattern in _KIND_PATTERNS if pattern.search(q)), QuestionKind.OTHER)
    m = _MEASURE_RE.search(q)
    measure = m.group(1) if m and kind is QuestionKind.COUNT else ""
    # numbers with the unit written after them ("2024年"), so that "2024—2026年" does not match "2024年"
    numbers = tuple(m.group(0) for m in re.finditer(r"\d+(?:\.\d+)?(?:%|[年月日号个名家位人项万亿元吨天级])?", q))
    bare = set(numbers_in(q))
    terms = tuple(dict.fromkeys(t for t in tokenizer.words(q) if t not in _QUESTION_WORDS and t not in bare
                                and "几" not in t and not (len(t) == 1 and (t in _WEAK_CHARS or not t.isalnum()))))
    return QuestionInfo(question, terms, kind, measure, numbers, tuple(tokenizer.place_names(q)),
                        tuple(years_in(q) + relative_years(q)))


# Generic question nouns: they say what kind of answer is wanted, not what it is about.
SOFT_TERMS = frozenset("""好处 益处 便利 优势 用处 措施 作用 意义 内容 办法 要求 方面 成效 效果 举措 变化 目的 原因 情况 工作 具体 主要
哪些方面 做法 政策 有关 相关 特点 亮点 成果 进展 影响 帮助 标准""".split())

_FOLLOWUP_START = re.compile(r"^(那|那么|那个|那些|还有|另外|此外|它|它们|他们|这个|这些|该|其|具体|再|以及|和|同时)")
_FOLLOWUP_END = re.compile(r"呢[？?！!。]*$")
_THAT_X = re.compile(r"^(?:那|那么)?(.{1,12}?)呢[？?！!。]*$")


def is_followup(question: str, tokenizer: Tokenizer | None = None) -> bool:
    """Whether a question leans on the previous turn ("那西宁呢？", "具体有哪些措施？")."""
    q = question.strip()
    if _FOLLOWUP_START.match(q) or (_FOLLOWUP_END.search(q) and len(q) <= 14):
        return True
    info = analyze_question(q, tokenizer)
    return len([t for t in info.terms if t not in SOFT_TERMS]) == 0


def resolve_followup(question: str, history: list[str], tokenizer: Tokenizer | None = None) -> str:
    """Rewrite a follow-up question into a standalone one using the previous questions.

    "那西宁呢？" after "格尔木的开发区在全国排第几？" becomes "西宁的开发区在全国排第几？"; other
    follow-ups get the previous question's topic words appended.

    >>> from rag.zh import Tokenizer
    >>> resolve_followup("那西宁呢？", ["格尔木的开发区在全国排第几？"], Tokenizer(places=["格尔木", "西宁"]))
    '西宁的开发区在全国排第几？'
    """
    q = question.strip()
    prev = _previous(history)
    if not prev or not is_followup(q, tokenizer):
        return q
    m = _THAT_X.match(q)
    if m:
        new = m.group(1).strip("，, ")
        year_new, year_old = re.search(r"20\d\d年?", new), re.search(r"20\d\d年?", prev)
        if year_new and year_old:  # "那2022年呢？": the same question for another year
            return prev.replace(year_old.group(0), year_new.group(0), 1)
        back = {"去年": 1, "前年": 2}.get(new)
        if back and year_old:  # "去年呢？" after a 2023 question: the year before the one asked about
            y = int(year_old.group(0)[:4]) - back
            return prev.replace(year_old.group(0), f"{y}年" if year_old.group(0).endswith("年") else str(y), 1)
        if back:  # a time, not a place: "去年呢？" after "海西…多少？" asks 海西's figure of 去年
            return f"{new}{prev}"
        place = _place_in(prev, tokenizer or default_tokenizer())
        if place and new and place not in new:
            return prev.replace(place, new, 1)
        return f"{new}{prev}" if new else prev
    return _with_topic(q, prev, tokenizer) or q


def _previous(history: list[str]) -> str:
    """The latest non-blank question of a conversation, or ""."""
    return next((h.strip() for h in reversed(history) if h and h.strip()), "")


def _with_topic(q: str, prev: str, tokenizer: Tokenizer | None) -> str | None:
    topic = [t for t in analyze_question(prev, tokenizer).terms if t not in SOFT_TERMS and t not in q]
    return f"{q.rstrip('？?')}（{''.join(topic)}）？" if topic else None


def in_context(question: str, history: list[str], tokenizer: Tokenizer | None = None) -> str | None:
    """The question read in the conversation's topic, for a question that stands alone in form but
    may lean on the previous one ("登记啥时候开始？" after "五经普一共选聘了多少普查员？" becomes
    "登记啥时候开始（五经普选聘普查员）？"); None when it is a follow-up already (``resolve_followup``
    handles it), names a place of its own, or there is no earlier question.

    >>> from rag.zh import Tokenizer
    >>> in_context("登记啥时候开始？", ["五经普一共选聘了多少普查员？"], Tokenizer(places=["西宁"]))
    '登记啥时候开始（五经普选聘普查员）？'
    >>> in_context("西宁呢？", ["五经普一共选聘了多少普查员？"], Tokenizer(places=["西宁"])) is None
    True
    """
    q = question.strip()
    prev = _previous(history)
    if not prev or is_followup(q, tokenizer) or analyze_question(q, tokenizer).places:
        return None
    return _with_topic(q, prev, tokenizer)


def _place_in(text: str, tokenizer: Tokenizer) -> str | None:
    """The first place named in a text, as written ("格尔木市" or "格尔木"), else the first organisation
    name (jieba part-of-speech nt)."""
    names = tokenizer.place_names(text)
    if names:
        m = re.search(re.escape(names[0]) + r"(?:自治州|自治县|[省市州县区镇乡村旗盟])?", text)
        if m:
            return m.group(0)
    for w, flag in tokenizer.pos_cut(text, HMM=True):
        if flag in ("ns", "nt") and len(w) >= 2:
            return w
    return None
