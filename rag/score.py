"""All scoring in one place: how well a sentence answers a question.

Each candidate sentence (or clause window) of the retrieved chunks gets eleven features — its share of
the question's key terms, the encoder's question-to-sentence and question-to-passage similarity,
whether it holds the kind of fact asked for (a rank, a date, a count), whether it is about the asked
place and the asked year, its chunk's retrieval rank, how far its similarity and term share fall
short of the best candidate's, and its term share by nearness (a question word it lacks counted by
how near its nearest word comes, by the index's word table) with that share's shortfall — combined
by one logistic model into the probability that it answers the question. The same probability reranks the chunks, picks the answer and decides when to
refuse. Every weight and threshold lives in one frozen :class:`ScoringParams`, fitted on a question
set by ``rag eval --fit`` (leave-one-page-out figures are what ``rag eval`` reports) and stored in
``rag/data/scoring.json``.
"""
from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .query import SOFT_TERMS, QuestionInfo
from .records import RecordSequence, SentenceRecords
from .types import QuestionKind
from .zh import (CLOSERS, MEASURE_WORDS, Tokenizer, count_han, default_tokenizer, fold_width, is_han, local_place_names,
                 place_key, relative_years, split_sentences, years_in)

__all__ = ["FEATURES", "ScoringParams", "load_scoring", "save_scoring", "Evidence", "Judgement", "fact_match",
           "asks_a_name", "names_something_new", "names_the_subject",
           "term_coverage", "near_coverage", "terms_to_encode", "remember_term_vectors", "term_vectors", "place_check", "listed_together", "year_check", "period_only", "edition_check", "relative_year_check", "describe_sentences", "gather_evidence", "rerank",
           "judge", "fit_logistic", "sentence_embed_text", "constraints_hold", "SCORING_FILE", "term_weights", "coverage", "remember_evidence", "evidence_of_hits"]

FEATURES = ("coverage", "similarity", "fact", "place", "year", "prior", "passage", "similarity_gap", "coverage_gap",
            "near_coverage", "near_coverage_gap")
SCORING_FILE = Path(__file__).parent / "data" / "scoring.json"


@dataclass(frozen=True)
class ScoringParams:
    """Every weight and threshold of relevance and answerability.

    Attributes:
        weights: logistic weights, one per name in ``FEATURES``.
        bias: logistic intercept.
        threshold: answer when the best sentence's probability is at least this, else refuse (or give
            a partial answer when only a place or year constraint failed).
        sim_center, sim_scale: the cosine similarity feature is ``(cos - center) * scale`` (e5 cosines
            sit in a narrow band; this only rescales, the weight is fitted).
        rerank_depth: how many fused candidates are rescored.
        keep_ratio: a further sentence joins the answer when its probability is at least this share of
            the best one's (and above ``threshold``).
        length_penalty: logit per character, so that a clause window wins over its sentence only when
            it keeps the evidence (breaks near-ties; not fitted).
        list_items, list_chars: at most this many enumerated items, and characters, in a list answer.
        l2: ridge penalty of the logistic fit.
        threshold_margin: the threshold's accuracy is averaged over this many logits either side when
            it is fitted (not fitted itself).
        near_threshold: in ``near_coverage``, a question word the sentence lacks counts by how far its
            nearest word's cosine is above this (not fitted: chosen among 0.85-0.96 on the held-out
            questions, which moved little across that range).
        fitted_on: what the weights were fitted on.
    """

    weights: tuple[float, ...] = (4.0, 1.5, 1.5, 2.5, 2.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    bias: float = -6.0
    threshold: float = 0.3
    sim_center: float = 0.8
    sim_scale: float = 10.0
    rerank_depth: int = 30
    keep_ratio: float = 0.85
    length_penalty: float = 0.002
    list_items: int = 6
    list_chars: int = 360
    l2: float = 1.0
    threshold_margin: float = 1.0
    near_threshold: float = 0.92
    fitted_on: str = "hand-set defaults (not fitted)"

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"weights must have {len(FEATURES)} values ({', '.join(FEATURES)}), got {len(self.weights)}")

    def logit(self, features: tuple[float, ...]) -> float:
        """The linear score of a feature vector."""
        return self.bias + sum(w * f for w, f in zip(self.weights, features))

    def probability(self, features: tuple[float, ...]) -> float:
        """The calibrated probability that a sentence with these features answers the question."""
        z = self.logit(features)
        return 1.0 / (1.0 + math.exp(-z)) if z > -50 else 0.0

    def to_dict(self) -> dict:
        """The parameters as a JSON-ready dict (feature names beside the weights)."""
        d = asdict(self)
        d["weights"] = dict(zip(FEATURES, self.weights))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ScoringParams":
        """Parameters saved by ``to_dict``."""
        d = dict(d)
        w = d.get("weights")
        if isinstance(w, dict):
            d["weights"] = tuple(float(w.get(name, 0.0)) for name in FEATURES)  # a feature added since: unused
        elif w is not None:
            d["weights"] = tuple(float(x) for x in w)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_loaded: dict[str, ScoringParams] = {}


def load_scoring(path: str | Path | None = None) -> ScoringParams:
    """The fitted parameters (``rag/data/scoring.json``), or the hand-set defaults if none were fitted."""
    path = Path(path) if path else SCORING_FILE
    key = str(path)
    if key not in _loaded:
        _loaded[key] = (ScoringParams.from_dict(json.loads(path.read_text(encoding="utf-8")))
                        if path.is_file() else ScoringParams())
    return _loaded[key]


def save_scoring(params: ScoringParams, path: str | Path | None = None) -> Path:
    """Write fitted parameters as JSON."""
    path = Path(path) if path else SCORING_FILE
    path.write_text(json.dumps(params.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    _loaded.pop(str(path), None)
    return path


# --- rule 1: term coverage ------------------------------------------------------------------------

def term_weights(info: QuestionInfo, idf: dict[str, float], *, unknown_idf: float = 5.0,
                 corpus: str = "") -> tuple[tuple[str, float], ...]:
    """The weight of each question term: its IDF, little for a generic question noun, more for a
    word the newspapers never use (in a Chinese question: a concept they may not cover, or everyday
    wording for one they do — the similarity feature tells those apart).

    The asked places are left out when other terms remain: the place has its own constraint, and
    counted again here it made any sentence of an article naming 格尔木 half an answer to "格尔木市的
    最低工资标准是多少" (measured on the 586 questions, held out: answered right 0.683 -> 0.708, the
    unanswerable refused as often)."""
    han = count_han(info.text)
    english = han < sum(1 for ch in info.text if ch.isascii() and ch.isalpha())
    places = {place_key(p) for p in info.places}
    terms = [t for t in info.terms if t not in info.places and place_key(t) not in places] or list(info.terms)
    out = []
    for t in terms:
        w = idf.get(t, unknown_idf) * (0.3 if t in SOFT_TERMS else 1.0)
        if corpus and t not in SOFT_TERMS and t not in corpus:
            w *= 0.3 if t.isascii() and english else 1.5
        out.append((t, w))
    return tuple(out)


def coverage(weights: tuple[tuple[str, float], ...], numbers: tuple[str, ...], text: str, context: str) -> float:
    """Weighted share of the terms in ``text`` (a term only in ``context`` counts half) and of the
    question's numbers, which must be in the text with their unit. Both texts width-folded, lower-cased."""
    total = got = 0.0
    for t, w in weights:
        total += w
        if t in text:
            got += w
        else:
            # everyday wording shares characters with the paper's ("网签" / 网上签约, "厂子" / 厂):
            # a term whose characters the text holds counts by their share, at most half
            chars = [c for c in t if is_han(c)]
            share = sum(1 for c in chars if c in text) / len(chars) if len(chars) >= 2 else 0.0
            got += 0.5 * w * max(share, 1.0 if t in context else 0.0)
    for num in numbers:  # a number in the question must be in the evidence: a constraint, ordinary weight
        total += 3.0
        got += 3.0 if num in text else 0.0
    return got / total if total else 0.0


def near_coverage(weights: tuple[tuple[str, float], ...], numbers: tuple[str, ...], text: str,
                  nearest: np.ndarray, threshold: float) -> float:
    """Weighted share of the terms in ``text``, where a term the text lacks counts by how near the
    text's nearest word comes to it (``nearest[i]``, the cosine of term i's nearest word): nothing at
    ``threshold`` or below, in full at 1 ("种菜" / 蔬菜, "摸底" / 家底 — near in meaning or only in
    form: the fitted weight says how much that is worth). The question's numbers count as in ``coverage``.

    >>> round(near_coverage((("警察", 1.0), ("社区", 1.0)), (), "社区民警", np.array([0.96, 1.0]), 0.92), 3)
    0.75
    """
    total = got = 0.0
    for (t, w), near in zip(weights, nearest):
        total += w
        got += w if t in text else w * min(1.0, max(0.0, (float(near) - threshold) / (1.0 - threshold)))
    for num in numbers:
        total += 3.0
        got += 3.0 if num in text else 0.0
    return got / total if total else 0.0


class _Nearness:
    """For one question: the cosine between each of its terms and the nearest word of a span of an
    article, by the index's word table (``Index.words``; an index without one gives zeros). A chunk's
    words are found once, with their offsets (jieba's search mode over its folded text, as the table's
    words were)."""

    def __init__(self, index, terms: list[str]):
        self.index, self.terms = index, terms
        self.zeros = np.zeros(len(terms), dtype=np.float32)
        self.vectors = term_vectors(index, terms) if terms and len(getattr(index, "words", ())) else None

    def chunk(self, article_id: str, start: int, text: str):
        """For the chunk at ``start`` of an article whose folded text is ``text``: f(w0, w1), the
        nearness of the words inside the article span [w0, w1)."""
        if self.vectors is None:
            return lambda w0, w1: self.zeros
        tok, rows = self.index.tokenizer, self.index.word_rows

        def spans() -> np.ndarray:
            found = [(start + a, start + b, rows[w]) for w, a, b in tok.jieba.tokenize(text, mode="search") if w in rows]
            return np.array(found, dtype=np.int64).reshape(-1, 3)

        table = tok.remembered(("word_spans", article_id, start, text), spans)
        if not len(table):
            return lambda w0, w1: self.zeros
        sims = np.asarray(self.index.word_vectors[table[:, 2]], dtype=np.float32) @ self.vectors.T

        def window(w0: int, w1: int) -> np.ndarray:
            inside = (table[:, 0] >= w0) & (table[:, 1] <= w1)
            return sims[inside].max(axis=0) if inside.any() else self.zeros
        return window


def terms_to_encode(index, terms) -> list[str]:
    """The terms whose vectors neither the index's word table nor its memory holds (``term_vectors``
    encodes them; a caller encoding the question may encode them in the same run)."""
    if not len(getattr(index, "words", ())):
        return []  # no word table: no nearness is measured, no term needs a vector
    rows = index.word_rows
    with _lock:
        known = index.derived.get("term_vectors", {})
        return [t for t in dict.fromkeys(terms) if t not in rows and t not in known]


def remember_term_vectors(index, terms: list[str], vectors: np.ndarray) -> None:
    """Keep terms' query vectors on the index (at most 4096)."""
    with _lock:
        known = index.derived.setdefault("term_vectors", {})
        if len(known) + len(terms) > 4096:
            known.clear()
        known.update(zip(terms, np.asarray(vectors, dtype=np.float32)))


def term_vectors(index, terms: list[str]) -> np.ndarray:
    """The query vectors of a question's terms: from the word table, else remembered, else encoded by
    the index's encoder."""
    rows = index.word_rows if len(getattr(index, "words", ())) else {}
    out = np.zeros((len(terms), index.dimension), dtype=np.float32)
    table = [i for i, t in enumerate(terms) if t in rows]
    if table:
        out[table] = np.asarray(index.word_vectors[[rows[terms[i]] for i in table]], dtype=np.float32)
    rest = [i for i, t in enumerate(terms) if t not in rows]
    with _lock:
        known = index.derived.get("term_vectors", {})
        found = {i: known[terms[i]] for i in rest if terms[i] in known}
    missing = [i for i in rest if i not in found]
    if missing:
        from .embed import index_encoder

        vecs = index_encoder(index).encode_queries(list(dict.fromkeys(terms[i] for i in missing)))
        by_term = dict(zip(dict.fromkeys(terms[i] for i in missing), vecs))
        remember_term_vectors(index, list(by_term), np.stack(list(by_term.values())))
        found.update((i, by_term[terms[i]]) for i in missing)
    for i, v in found.items():
        out[i] = v
    return out


def term_coverage(info: QuestionInfo, text: str, idf: dict[str, float], *, context: str = "",
                  unknown_idf: float = 5.0, corpus: str = "") -> float:
    """IDF-weighted share of the question's terms in the text (terms only in the article count half;
    generic question nouns count little; a term the newspapers never mention counts extra)."""
    weights = term_weights(info, idf, unknown_idf=unknown_idf, corpus=corpus)
    return coverage(weights, info.numbers, fold_width(text).lower(), fold_width(context).lower())


# --- rule 2: the asked-for fact -------------------------------------------------------------------

_NUM = r"(?:\d+(?:\.\d+)?|[一二三四五六七八九十百千万两]+)"
_RANK_A = re.compile(rf"第{_NUM}|位列|\d+位|排名|居全国|排第|前{_NUM}")
_DATE_A = re.compile(r"\d{4}年|\d{1,2}月\d{1,2}日|\d{1,2}月|\d{1,2}日")
_DATE_IN_TEXT = re.compile(r"\d{4}年(?:\d{1,2}月)?(?:\d{1,2}日)?|\d{1,2}月(?:\d{1,2}日)?|\d{1,2}日")
_CLOCK_Q = re.compile(r"几点|几时")
_DURATION_Q = re.compile(r"多久|多长时间|多少时间|(?<![哪这那近前])几(?:天|个?月|个?小时|分钟)|多少天")
_DURATION_A = re.compile(r"(?:\d+(?:\.\d+)?|[一二三四五六七八九十两半几百]+)\s*(?:个)?(?:分钟|小时|钟头|天|日|周|星期|个月|年)"
                         r"|工作日|当天|当场|即时|立即|即办|马上"
                         r"|每(?:个)?(?:季度|年|月|周|星期|天|日|半年)|季度")  # 多久…一次: how often
_CLOCK_A = re.compile(r"\d{1,2}(?:[:：]\d{2}|时|点)|[一二三四五六七八九十]+点")
_RATE_Q = re.compile(r"每[一]?[人月年天日周次户个只张位名家亩门件斤]|人均|户均|一[只张件斤]多少钱|多少钱一[只张件斤个]")
_RATE_A = re.compile(r"每|人均|户均|[/／]|元[/／]")
# a sum of money is asked (奖金是多少, 花了多少钱, 产值多少): it is written in 元 (块 in speech); a change
# (涨了多少, 增长多少) may be a share instead; a rate (税率, 比例) is not a sum
_MONEY_NOUNS = "钱|奖金|金额|资金|投资|投入|产值|收入|营收|销售额|工资|薪水|补贴|补助|奖励|费用|经费|价格|票价|成本|租金|罚款"
_MONEY_Q = re.compile(rf"(?:{_MONEY_NOUNS}|花了|挣|赚|捐)[^，,。？?]{{0,6}}(?:多少|几)(?![个名人家项次位台场套份件条所批类户间座辆岁倍])"
                      rf"|(?:多少|几)(?:万|亿)?(?:{_MONEY_NOUNS}|块钱|毛钱|元)")  # 发了多少奖金, 几块钱
# a sum: 146万元, 3000多元, 三千多元, 两块钱, 八毛 (a price in speech)
_MONEY_A = re.compile(r"(?:\d[\d.]*|[一二三四五六七八九十百千万两]+)\s*(?:余|多)?(?:万|亿)?(?:余|多)?(?:元|块钱)"
                      r"|(?:\d|[一二三四五六七八九两])\s*(?:毛|角钱)")
_CHANGE_Q = re.compile(r"涨|增|提高|提升|上升|降|减|少了|多了|差")  # a change or a gap may be a share
_SHARE_A = re.compile(r"[%％]|倍|[一二三四五六七八九]成")
_NUMBER_A = re.compile(rf"{_NUM}\s*(?:%|％|[{MEASURE_WORDS}])|\d")
# measure words that count the same things ("多少名" is answered by "73人")
_SAME_MEASURE = {"名": "名人位", "人": "人名位", "位": "位名人", "个": "个项处家所", "项": "项个", "钱": "元",
                 "家": "家个户所", "块钱": "元", "毛钱": "元角毛", "只": "只头", "头": "头只", "斤": "斤",
                 "公里": ("公里", "千米", "km"), "千米": ("公里", "千米", "km"), "公斤": ("公斤", "千克", "斤", "吨"),
                 "千克": ("公斤", "千克", "斤", "吨")}


# "which one" and "what is it called" ask for a name: 哪家企业, 哪个社区, 哪位, 叫什么, 什么品牌 (not 哪个方面,
# 哪种方式, 哪一天: a kind, a way or a date is no name)
_NAME_Q = re.compile(r"哪(?:一|几|\d+|[两三四五六七八九十])?(?:个|家|所|位|座|条|支|批|间)"
                     r"(?!月|年|天|时|方|环|类|阶段|领域|行业|部分|种)|叫[什啥]|[什啥]么?名字|名称是|[什啥]么?名称|[什啥]么?牌子"
                     r"|[什啥]么?品牌")
_NAME_FLAGS = frozenset({"nr", "nrt", "nrfg", "ns", "nt", "nz"})  # jieba's people, places, bodies, other names
_QUOTED = re.compile(r"“([^”]{2,30})”|《([^》]{2,40})》|「([^」]{2,30})」")


def asks_a_name(question: str) -> bool:
    """Whether a question asks which one, or what something is called (a name answers it).

    >>> asks_a_name("是在哪3个社区试点的？"), asks_a_name("从哪几个方面入手？")
    (True, False)
    """
    return bool(_NAME_Q.search(fold_width(question)))


def names_something_new(question: str, sentence: str, tokenizer: Tokenizer | None = None) -> bool:
    """Whether a sentence names something the question does not: a person, place, organisation or other
    proper name (jieba's tags, with its HMM for names it does not know) or a quoted or titled name.
    Where the sentence speaks of the asked kind ("哪个社区" and a sentence with 社区), one of that kind
    with a name: "前营街社区", or names listed before "等3个社区"; "在3个社区试点" names none.

    >>> names_something_new("是哪家爱心企业在运营？", "由社区提供场地、爱心企业运营")
    False
    >>> names_something_new("试点选了哪几家企业？", "选择青海徕硕科技有限公司作为试点")
    True
    >>> names_something_new("是在哪3个社区试点的？", "大同街道在3个社区试点")
    False

    A body asked for ("哪家企业", "哪个部门") is named by a body's name, not by a person or a place:

    >>> names_something_new("食堂是哪家爱心企业在运营？", "在瑞昌市南门社区长者食堂，刘大爷一边吃饭一边说")
    False
    >>> names_something_new("食堂是哪家爱心企业在运营？", "食堂由瑞昌爱心餐饮公司运营")
    True
    """
    q = fold_width(question)
    s = fold_width(sentence)
    tokenizer = tokenizer or default_tokenizer()
    toks = tokenizer.remembered(("pos", s), lambda: tuple(tokenizer.pos_cut(s, HMM=True)))
    asked = _asked_kinds(q, tokenizer)
    kinds = [n for n in asked if n in s]
    if kinds:
        return any(_names_a(n, toks, q) for n in kinds)
    if any(next(g for g in m.groups() if g) not in q for m in _QUOTED.finditer(s)):
        return True
    if any(n.endswith(_BODY_KINDS) for n in asked):  # 哪家企业, 哪个部门: a body's name, not a person's or place's
        return any(f == "nt" or _a_body(i, toks, q) for i, (_w, f) in enumerate(toks))
    return any(len(w) >= 2 and f in _NAME_FLAGS and w not in q and place_key(w) not in q  # "海西州" is "海西"
               for w, f in toks)


# kinds of body a question may ask the name of, and the endings of a body's name (Chinese generic nouns)
_BODY_KINDS = ("企业", "公司", "单位", "部门", "机构", "集团", "学校", "医院", "银行", "协会", "组织", "工厂", "厂家", "商家")
_BODY_ENDS = _BODY_KINDS + ("中心", "大学", "学院", "商会", "委员会", "合作社", "厂", "局", "委", "院", "校", "馆", "店",
                            "站", "所", "厅")


def _a_body(i: int, toks, question: str) -> bool:
    """Whether word ``i`` ends a body's name not in the question: a word of three or more characters with
    a body's ending ("餐饮公司", "人民医院"), or a shorter one after a noun ("市人" + "社局")."""
    w = toks[i][0]
    if not w.endswith(_BODY_ENDS) or w in question:
        return False
    if len(w) >= 3:
        return True
    return i > 0 and toks[i - 1][1][0] in "nj" and toks[i - 1][0] + w not in question


_UNNAMED_BEFORE = "vmrpcudfaqx"  # a verb, number, pronoun, particle... before 社区: "各社区", "3个社区", "考核单位"


def _asked_kinds(question: str, tokenizer: Tokenizer) -> list[str]:
    """The nouns after a question's 哪个/哪家: what kind of thing it asks for ("哪家爱心企业" -> 爱心, 企业)."""
    m = _NAME_Q.search(question)
    if not m or not m.group(0).startswith("哪"):
        return []
    return tokenizer.remembered(("asked_kinds", question[m.end():]), lambda: _noun_run(question[m.end():], tokenizer))


def _noun_run(text: str, tokenizer: Tokenizer) -> list[str]:
    run = []
    for w, f in tokenizer.pos_cut(text, HMM=True):
        if not (f[0] in "nj" or f == "vn"):
            break
        if f[0] == "n" and len(w) >= 2 and not _SCOPE.match(w):
            run.append(w)
    return run


def _names_a(noun: str, toks, question: str) -> bool:
    """Whether one of a sentence's mentions of ``noun`` has a name: a name-like word before it (not a
    number, pronoun or verb, not the question's own words), a longer word ending in it, or a list
    ending in 等 or a quoted name before it ("伊泰集团等5家党建联盟单位", "“创赢天下”4家党建联盟单位")."""
    for i, (w, _f) in enumerate(toks):
        if not w.endswith(noun):
            continue
        if len(w) > len(noun) and w not in question:
            return True
        j = i - 1
        while j >= 0 and (toks[j][1][0] in "mq" or toks[j][0] + toks[j + 1][0] in question):
            j -= 1  # past the count and the question's own words before the noun: "等5家党建联盟单位"
        if j >= 0 and (toks[j][0] in ("等", "等等") or toks[j][0] in CLOSERS or
                       (toks[j][1][0] not in _UNNAMED_BEFORE and toks[j][0] + toks[j + 1][0] not in question)):
            return True
    return False


_SCOPE = re.compile(r"^(?:[全本我][国省市州县区]|国内|省内|国际|全球|世界)$")  # where a rank counts, not what is ranked


def names_the_subject(info: QuestionInfo, sentence: str) -> bool:
    """Whether a sentence names what the question is about: one of its terms other than places, scopes
    (全国) and generic nouns, whole or by half its characters (everyday wording: "画图" / 绘图); true when
    the question has no such term."""
    places = {place_key(p) for p in info.places}
    subject = [t for t in info.terms if t not in SOFT_TERMS and not _SCOPE.match(t) and place_key(t) not in places
               and len(t) >= 2]
    if not subject:
        return True
    s = fold_width(sentence).lower()
    for t in subject:
        chars = [c for c in t if is_han(c)]
        if t in s or (chars and 2 * sum(c in s for c in chars) >= len(chars)):
            return True
    return False


_COUNTED = MEASURE_WORDS.replace("万", "").replace("亿", "")  # measure words that say what is counted


def fact_match(info: QuestionInfo, sentence: str, tokenizer: Tokenizer | None = None) -> float:
    """Whether a sentence holds the kind of fact asked for (0..1): a rank for 第几, a date for
    什么时候, a span of time for 多久, a number (in the asked unit) for 多少/几, a name the question
    lacks for 哪家/叫什么; 1 when the question asks for no such fact.
    Numbers the question itself contains ("2024年的…是多少") are not an answer."""
    if not info.kind.asks_a_figure:
        if asks_a_name(info.text):
            return 1.0 if names_something_new(info.text, sentence, tokenizer) else 0.0
        return 1.0
    s = fold_width(sentence)
    for num in sorted(info.numbers, key=len, reverse=True):
        s = s.replace(num, " ")
    if info.kind is QuestionKind.RANK:  # a rank of the asked thing: 西宁's battery rank is not its 开发区's
        return 1.0 if _RANK_A.search(s) and names_the_subject(info, s) else 0.0
    if _DURATION_Q.search(info.text):  # 多久: a span of time (一两分钟, 5个工作日, 当天), not a date
        return 1.0 if _DURATION_A.search(_DATE_IN_TEXT.sub(" ", s)) else 0.0
    if info.kind is QuestionKind.DATE:
        if _CLOCK_Q.search(info.text):  # 几点: a time of day, not a date
            return 1.0 if _CLOCK_A.search(s) else 0.0
        return 1.0 if _DATE_A.search(s) else 0.0
    if _RATE_Q.search(info.text) and not _RATE_A.search(s):
        return 0.0  # 每月/每人/人均 asks a rate: a total (146万元, 3200万元) does not answer it
    if _MONEY_Q.search(info.text) and not re.search(r"率|比例|百分", info.text) and not _MONEY_A.search(s) \
            and not (_CHANGE_Q.search(info.text) and _SHARE_A.search(s)):
        # a sum of money is asked: a count of projects or people does not answer it (a sum in 元 is
        # only a number of the right kind: 146万元 of a talent fund does not answer a wage question)
        return 0.0
    units = _SAME_MEASURE.get(info.measure)  # a string of one-character units, or a tuple of units
    units = tuple(units) if units is not None else (info.measure,) if info.measure else ()
    # an approximate amount counts too: 670余套, 3000多名, 1.2万余人
    if units and re.search(rf"{_NUM}\s*[余多]?(?:万|亿)?[余多]?(?:{'|'.join(map(re.escape, units))})", s):
        return 1.0
    if "元" in units and _MONEY_A.search(s):  # 八毛, 两块钱
        return 1.0
    s = _DATE_IN_TEXT.sub(" ", s)  # a date does not answer 多少
    if units:  # nor, for 多少人, a number counting something else ("6.2级地震"); a bare one or a share may
        s = re.sub(rf"{_NUM}\s*[余多]?(?:万|亿)?[余多]?[{_COUNTED}]", " ", s)
        return 0.5 if re.search(r"\d|[%％]", s) else 0.0
    return 0.5 if _NUMBER_A.search(s) else 0.0


# --- rules 3 and 4: the asked place and year ------------------------------------------------------

_OWN_AREA = re.compile(r"[我本全][省市州县区]")


@dataclass(frozen=True)
class SentenceFacts:
    """What the index knows of one sentence: its span, places and years (computed at index time)."""

    article_id: str
    start: int
    end: int
    places: tuple[str, ...] = ()
    years: tuple[str, ...] = ()


def describe_sentences(articles, tokenizer: Tokenizer | None = None) -> list[SentenceFacts]:
    """The sentences of every article with their places and years (the index's sentence table), places
    by the index's ``tokenizer`` (default: one taught the places the articles name)."""
    articles = list(articles)
    if tokenizer is None:
        tokenizer = Tokenizer(places=local_place_names(a.title + "\n" + a.text for a in articles))
    place_names = tokenizer.place_names
    out = []
    for a in articles:
        for s, e in split_sentences(a.text):
            t = a.text[s:e]
            out.append(SentenceFacts(a.article_id, s, e, tuple(place_names(t)), tuple(years_in(t))))
    return out


def sentence_embed_text(title: str, sentence: str) -> str:
    """The text a sentence's vector is made from: the sentence under its article's title ("措施" and
    "它" alone do not say what about; measured on the held-out questions, colloquial answers 0.35 -> 0.41).

    >>> sentence_embed_text("格尔木推行电子劳动合同", "实现零跑腿。")
    '格尔木推行电子劳动合同：实现零跑腿。'
    """
    title = title.strip()
    return f"{title}：{sentence}" if title else sentence


def _related(a: str, b: str) -> bool:
    return a in b or b in a


def place_check(asked: tuple[str, ...], sentence_places: tuple[str, ...], article_places: tuple[str, ...]) -> tuple[str, ...]:
    """The asked places the evidence is not about (empty: the constraint holds).

    Evidence is about the asked place when the sentence names it, or when its article is about it
    (title, most frequent place, the paper's city for "我市"): a sentence of an article about 西宁
    does not answer for 格尔木, though 格尔木 is mentioned elsewhere in it; one naming 浙江 in
    passing in an article about 海西 still speaks for 海西."""
    missing = []
    for q in asked:
        if any(_related(q, p) for p in sentence_places):
            continue
        if not any(_related(q, p) for p in article_places):
            missing.append(q)  # neither the sentence nor its article is about the asked place
    if len(asked) >= 2 and len(missing) < len(asked):
        return ()  # a route or an origin ("从衢州到宁波", "北京来的专家…去茫崖"): about one of them will do
    return tuple(missing)


_SUFFIX = r"(?:自治州|自治县|特区|[省市州县区旗盟])?"


def listed_together(asked: tuple[str, ...], sentence_places: tuple[str, ...], sentence: str) -> tuple[str, ...]:
    """The asked places a sentence names only in a list with other places: a count or a rank given
    there is the list's, not the asked place's alone ("在西宁市、海东市和海南州等地区，对2000多家样本
    单位试点" does not say how many were in 海东); "西宁市需求234人、黄南州需求195人" gives each its own.

    >>> listed_together(("海东",), ("西宁", "海东", "海南"), "在西宁市、海东市和海南州等地区，对2000多家单位试点")
    ('海东',)
    >>> listed_together(("黄南",), ("西宁", "黄南"), "西宁市需求234人，黄南州需求195人")
    ()
    """
    s = fold_width(sentence)
    out = []
    for q in asked:
        others = [p for p in sentence_places if not _related(q, p)]
        spots = [m.start() for m in re.finditer(re.escape(q), s)]
        if not others or not spots:
            continue
        near = "|".join(map(re.escape, others))
        listed = re.compile(rf"^{_SUFFIX}[、和及与](?:{near})")
        listed_before = re.compile(rf"(?:{near}){_SUFFIX}[、和及与]$")
        if all(listed.match(s[i + len(q):]) or listed_before.search(s[:i]) for i in spots):
            out.append(q)
    return tuple(out)


def year_check(asked: tuple[str, ...], sentence_years: tuple[str, ...], article_years: tuple[str, ...]) -> tuple[str, ...]:
    """The asked years the evidence does not speak for (a sentence with its own year speaks for that one)."""
    missing = []
    for y in asked:
        if y in sentence_years:
            continue
        if sentence_years or y not in article_years:
            missing.append(y)
    return tuple(missing)


_PERIOD = re.compile(r"(?<!\d)(20\d\d)\s*年?\s*[-—–~～至到]\s*(20\d\d)(?!\d)")


def period_only(asked: tuple[str, ...], question: str, sentence: str) -> tuple[str, ...]:
    """The asked years a sentence names only as the end of a period ("2025年需求多少" and "2023-2025年
    共需求4156人": a figure for three years is not 2025's), unless the question asks for that period.

    >>> period_only(("2025",), "2025年需求多少人？", "《2023-2025年需求一览表》共征集4156人")
    ('2025',)
    >>> period_only(("2025",), "2025年需求多少人？", "2023—2025年共4156人，2025年需求1187人")
    ()
    """
    ends = {y for m in _PERIOD.finditer(fold_width(sentence)) for y in m.groups()}
    if not ends or _PERIOD.search(fold_width(question)):
        return ()
    alone = set(years_in(_PERIOD.sub(" ", fold_width(sentence))))
    return tuple(y for y in asked if y in ends and y not in alone)


_EDITION = re.compile(r"第\s*([0-9一二三四五六七八九十百]+)\s*([届次批期轮])")


@functools.lru_cache(maxsize=256)
def _editions_in(text: str) -> frozenset[tuple[str, str]]:
    return frozenset((m.group(1), m.group(2)) for m in _EDITION.finditer(fold_width(text)))


def edition_check(question: str, sentence: str, article: str) -> tuple[str, ...]:
    """The editions a question asks about ("第40届风筝会", "第二批口袋公园") that the evidence does not
    speak for: a sentence naming another one of the same kind ("第41届") does not, nor one naming none
    in an article that never names the asked one. Checked as the asked year is.

    >>> edition_check("第40届风筝会吸引了多少游客？", "第41届风筝会开幕，吸引游客12万人次", "")
    ('第40届',)
    >>> edition_check("第40届风筝会吸引了多少游客？", "开幕当天吸引游客12万人次", "第40届风筝会开幕")
    ()
    """
    asked = [(m.group(1), m.group(2)) for m in _EDITION.finditer(fold_width(question))]
    if not asked:
        return ()
    named = _editions_in(fold_width(sentence))
    whole = _editions_in(article)  # the same article text for each of its sentences: scanned once
    missing = []
    for num, kind in asked:
        if (num, kind) in named:
            continue
        if any(k == kind for _, k in named) or (num, kind) not in whole:
            missing.append(f"第{num}{kind}")
    return tuple(missing)


def relative_year_check(asked: tuple[str, ...], sentence_relative: tuple[str, ...], sentence_years: tuple[str, ...],
                        article_relative: tuple[str, ...]) -> tuple[str, ...]:
    """The asked relative years ("去年", "前年") the evidence does not speak for: a sentence saying
    another one ("前年" for 去年) does not, nor one without any year in an article that never says
    it; a sentence with a written year may (the paper's date is unknown, 2023年 may be 去年)."""
    missing = []
    for y in asked:
        if sentence_relative:
            if y not in sentence_relative:
                missing.append(y)
        elif not sentence_years and y not in article_relative:
            missing.append(y)
    return tuple(missing)


def _fold(text: str) -> str:
    """Width-folded and lower-cased, keeping every character's offset."""
    low = fold_width(text).lower()
    if len(low) != len(text):  # a few letters lower-case to two characters ("İ")
        low = "".join(c if len(c) == 1 else ch for ch, c in ((ch, ch.lower()) for ch in fold_width(text)))
    return low


WHOLE_READ_MAX = 100_000  # chunks whose vectors a loaded index keeps in memory for the rerank


class _PerArticle(Mapping):
    """What is derived from an article on first use (``get(article_id, default)``, as a dict of every
    article would answer), keeping at most ``keep`` recent answers: a million-chunk index has 250k
    articles and a question reads a few dozen."""

    def __init__(self, articles: dict, make, keep: int):
        self._articles, self._make, self._keep = articles, make, keep
        self._memo: dict = {}

    def __getitem__(self, article_id: str):
        found = self._memo.get(article_id)
        if found is None:
            found = self._make(self._articles[article_id])  # KeyError: not an article of the index
            if len(self._memo) >= self._keep:
                self._memo.clear()
            self._memo[article_id] = found
        return found

    def __contains__(self, article_id) -> bool:
        return article_id in self._articles

    def __iter__(self):
        return iter(self._articles)

    def __len__(self) -> int:
        return len(self._articles)


class _FactsView(RecordSequence):
    """The sentence records as ``SentenceFacts``, made on access."""

    _what = "sentence"

    def __init__(self, records: SentenceRecords):
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, row: int) -> SentenceFacts:
        r = self._records
        return SentenceFacts(r.article_ids[r.article_rows[row]], int(r.starts[row]), int(r.ends[row]),
                             r.names_of("places", row), r.names_of("years", row))


class SentenceTable:
    """The index's sentence facts and vectors, looked up by article and offset.

    The sentences are the index's columns (``rag.records.SentenceRecords``); what is derived per article
    (its places and years, its folded text) is made when a question first reads that article."""

    def __init__(self, facts: SentenceRecords | list[SentenceFacts | dict], vectors: np.ndarray, articles: dict,
                 tokenizer: Tokenizer | None = None):
        self._place_names = (tokenizer or default_tokenizer()).place_names
        records = facts if isinstance(facts, SentenceRecords) else SentenceRecords(articles, facts)
        self.records = records
        self.facts = _FactsView(records)
        self.vectors = vectors
        self._articles = articles
        # each article's sentence rows in order of their start: rows order[bounds[a]:bounds[a + 1]]
        self._order = np.lexsort((records.starts, records.article_rows))
        self._sorted_starts = records.starts[self._order]
        self._bounds = np.searchsorted(records.article_rows[self._order], np.arange(len(records.article_ids) + 1))
        # the paper's own area: the places its page names most often ("我市" means one of them)
        sources = {}
        source_of = np.array([sources.setdefault(articles[aid].source, len(sources)) if aid in articles else -1
                              for aid in records.article_ids], dtype=np.int64)
        rows, ids = records.name_ids("places")
        src = source_of[records.article_rows[rows]] if len(rows) else np.zeros(0, dtype=np.int64)
        keep = src >= 0
        keys, counts = np.unique(src[keep] * max(1, len(records.names)) + ids[keep], return_counts=True)
        page_counts: dict[int, dict[str, int]] = {}
        for key, n in zip(keys.tolist(), counts.tolist()):
            page, place = divmod(key, max(1, len(records.names)))
            page_counts.setdefault(page, {})[records.names[place]] = n
        names_of_source = list(sources)
        self.page_place = {names_of_source[page]: tuple(sorted(c, key=lambda p: (-c[p], p))[:2])
                           for page, c in page_counts.items()}
        self.article_places = _PerArticle(articles, self._places_of, 50_000)
        self.article_years = _PerArticle(articles, lambda art: tuple(years_in(art.title + "\n" + art.text)), 50_000)
        # width-folded, lower-cased title and text (length-preserving, so text offsets still hold)
        self.folded = _PerArticle(articles, lambda art: _fold(art.title + "\n" + art.text), 4096)
        self._relative = _PerArticle(articles, lambda art: tuple(relative_years(self.folded[art.article_id])), 50_000)

    def _rows_of(self, article_id: str) -> np.ndarray:
        a = self.records.row_of_article.get(article_id)
        if a is None:
            return self._order[:0]
        return self._order[self._bounds[a]:self._bounds[a + 1]]

    def _places_of(self, art) -> tuple[str, ...]:
        counts: dict[str, int] = {}
        for row in self._rows_of(art.article_id).tolist():
            for p in self.records.names_of("places", row):
                counts[p] = counts.get(p, 0) + 1
        own = list(self._place_names(art.title))
        own += sorted(counts, key=lambda p: (-counts[p], p))[:2]
        if _OWN_AREA.search(art.text):
            own += self.page_place.get(art.source, ())
        return tuple(dict.fromkeys(own))

    def relative_years(self, article_id: str) -> tuple[str, ...]:
        """The relative years ("去年", "前年") an article's text names."""
        return self._relative.get(article_id, ())

    def chunk_vectors(self, index, rows: list[int]) -> np.ndarray:
        """The passage vectors of these chunk rows: up to ``WHOLE_READ_MAX`` chunks the store's vectors
        are read back once and kept; a larger index is read row by row (a million chunks would keep
        1.5 GB of float32 in memory)."""
        if len(index.chunks) > WHOLE_READ_MAX:
            return index.chunk_vectors(list(rows))
        if not hasattr(self, "_chunk_vectors"):
            self._chunk_vectors = index.vectors()
        return self._chunk_vectors[list(rows)]

    def row_at(self, article_id: str, pos: int) -> int | None:
        """The sentence row holding article position ``pos``."""
        a = self.records.row_of_article.get(article_id)
        if a is None:
            return None
        lo, hi = int(self._bounds[a]), int(self._bounds[a + 1])
        i = int(np.searchsorted(self._sorted_starts[lo:hi], pos, side="right")) - 1
        return int(self._order[lo + i]) if i >= 0 else None


# --- gathering evidence -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Evidence:
    """A sentence (or clause window) of a retrieved chunk with its features."""

    chunk_id: str
    article_id: str
    rank: int  # fused retrieval rank of its chunk
    start: int  # offsets in the article text
    end: int
    text: str
    features: tuple[float, ...]
    missing_places: tuple[str, ...] = ()
    missing_years: tuple[str, ...] = ()
    about_places: tuple[str, ...] = ()  # the places and years the evidence is about (partial answers)
    about_years: tuple[str, ...] = ()
    missing_fact: bool = False  # a rank, date or count is asked and the evidence holds none

    @property
    def fits(self) -> bool:
        """About the asked place and year, and holding the kind of fact asked for: it may answer."""
        return not (self.missing_places or self.missing_years or self.missing_fact)


_CLAUSE_END = "，,；;：:"


def _windows(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The sentence and its windows of up to three consecutive clauses (to trim long sentences)."""
    spans = [(start, end)]
    if end - start <= 50:
        return spans
    cuts = [start] + [i + 1 for i in range(start, end - 1) if text[i] in _CLAUSE_END] + [end]
    clauses = list(zip(cuts, cuts[1:]))
    for i in range(len(clauses)):
        for j in range(i, min(len(clauses), i + 3)):
            if (i, j) != (0, len(clauses) - 1):
                spans.append((clauses[i][0], clauses[j][1]))
    return spans


_lock = threading.Lock()


def term_idf(index) -> dict[str, float]:
    """BM25-style IDF of every indexed token (``Index.term_idf``)."""
    return index.term_idf


def sentence_table(index) -> SentenceTable:
    """The index's sentence table (built once per loaded index, kept on it)."""
    with _lock:
        table = index.derived.get("sentence_table")
        if table is None:
            table = index.derived["sentence_table"] = SentenceTable(index.sentences, index.sentence_vectors, tokenizer=index.tokenizer, articles=
                                                                    index.articles)
        return table


_BODY_CHARS = set("机关部局委院厅处办校")  # jieba tags "直属机关" a place: a body is not one


def _foreign_places(query: str, corpus: str, known: tuple[str, ...], tokenizer: Tokenizer) -> tuple[str, ...]:
    """Places a question names that the newspapers never mention (jieba place words absent from the
    corpus: "包头", "呼和浩特"); jieba also tags common words as places ("深度"), but those the
    corpus uses, so a word tagged so and never used by the pages is taken to be a place they lack."""
    out = []
    for w, flag in tokenizer.pos_cut(fold_width(query)):
        if flag == "ns" and len(w) >= 2 and all(is_han(c) for c in w) and w.lower() not in corpus \
                and not any(c in _BODY_CHARS for c in w) \
                and not any(w in k or k in w for k in known):
            out.append(w)
    return tuple(dict.fromkeys(out))


def gather_evidence(index, info: QuestionInfo, query_vector: np.ndarray, ranked: list[tuple[int, int]],
                    params: ScoringParams) -> list[Evidence]:
    """Features of every sentence (and, for number/date/rank questions, clause window) of the given
    chunks, as (chunk row, fused rank) pairs, for the question ``info`` (``analyze_question``).
    Parameter-free apart from the similarity rescaling."""
    idf = term_idf(index)
    unknown_idf = math.log(1 + max(1, len(index.chunks)))
    corpus = index.corpus_text
    table = sentence_table(index)
    qv = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    weights = term_weights(info, idf, unknown_idf=unknown_idf, corpus=corpus)
    asked_places = info.places + _foreign_places(info.text, corpus, info.places, index.tokenizer)
    windows = info.kind.asks_a_figure
    explicit_years = tuple(y for y in info.years if y.isdigit())
    relative = tuple(y for y in info.years if not y.isdigit())
    editions = bool(_EDITION.search(fold_width(info.text)))
    shared_figure = info.kind in (QuestionKind.COUNT, QuestionKind.RANK) and bool(asked_places)
    seen: set[tuple[str, int, int]] = set()
    out: list[Evidence] = []
    passages = table.chunk_vectors(index, [row for row, _ in ranked]) @ qv if ranked else ()
    nearness = _Nearness(index, [t for t, _ in weights])
    near: list[float] = []
    for (row, rank), passage in zip(ranked, passages):
        chunk = index.chunks[row]
        art = index.articles[chunk.article_id]
        context = table.folded[art.article_id]
        offset = len(art.title) + 1
        a_places = table.article_places.get(art.article_id, ())
        a_years = table.article_years.get(art.article_id, ())
        passage = float(passage)
        near_of = nearness.chunk(art.article_id, chunk.start, context[offset + chunk.start:offset + chunk.end])
        for s, e in split_sentences(chunk.text):
            a0, a1 = chunk.start + s, chunk.start + e
            srow = table.row_at(art.article_id, a0)
            facts = table.facts[srow] if srow is not None else None
            sim = float(table.vectors[srow] @ qv) if srow is not None else params.sim_center
            s_places = facts.places if facts else ()
            s_years = facts.years if facts else ()
            miss_p = place_check(asked_places, s_places, a_places)
            if shared_figure and not miss_p and len(s_places) >= 2:
                miss_p = listed_together(asked_places, s_places, art.text[a0:a1])
            miss_y = year_check(explicit_years, s_years, a_years)
            if explicit_years and not miss_y and s_years:
                miss_y = period_only(explicit_years, info.text, art.text[a0:a1])
            if editions:
                miss_y += edition_check(info.text, art.text[a0:a1], context)
            if relative:
                miss_y += relative_year_check(relative, tuple(relative_years(art.text[a0:a1])), s_years,
                                              table.relative_years(art.article_id))
            for w0, w1 in (_windows(art.text, a0, a1) if windows else [(a0, a1)]):
                if (art.article_id, w0, w1) in seen:
                    continue
                seen.add((art.article_id, w0, w1))
                t = art.text[w0:w1]
                folded = context[offset + w0:offset + w1]
                near.append(near_coverage(weights, info.numbers, folded, near_of(w0, w1), params.near_threshold))
                feats = (coverage(weights, info.numbers, folded, context),
                         (sim - params.sim_center) * params.sim_scale,
                         fact_match(info, t, index.tokenizer),
                         0.0 if miss_p else 1.0,
                         0.0 if miss_y else 1.0,
                         1.0 / rank,
                         (passage - params.sim_center) * params.sim_scale)
                out.append(Evidence(chunk.chunk_id, art.article_id, rank, w0, w1, t, feats, miss_p, miss_y,
                                    s_places or a_places, s_years, missing_fact=feats[2] == 0.0))
    # how far each candidate falls short of the best one, in similarity and in term share
    best_sim = max((ev.features[1] for ev in out), default=0.0)
    best_cov = max((ev.features[0] for ev in out), default=0.0)
    best_near = max(near, default=0.0)
    return [replace(ev, features=ev.features + (ev.features[1] - best_sim, ev.features[0] - best_cov, n, n - best_near))
            for ev, n in zip(out, near)]


def rerank(evidence: list[Evidence], ranked: list[tuple[int, float]], chunk_rows: dict[str, int],
           params: ScoringParams) -> list[tuple[int, float]]:
    """Re-order fused candidates by their best sentence's logit (deeper ones keep their order); the
    score returned is that sentence's probability."""
    best: dict[int, float] = {}
    for ev in evidence:
        row = chunk_rows[ev.chunk_id]
        z = params.logit(ev.features)
        if z > best.get(row, -1e9):
            best[row] = z
    depth = ranked[: params.rerank_depth]
    order = sorted(depth, key=lambda x: (-(best.get(x[0], -1e9) + 1e-3 * x[1]), x[0]))
    scored = [(row, 1.0 / (1.0 + math.exp(-max(-50.0, best.get(row, -50.0))))) for row, _ in order]
    return scored + ranked[params.rerank_depth:]


# --- the decision ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Judgement:
    """What the evidence supports: an answer (``chosen``), a partial answer (``partial``) or nothing."""

    probability: float
    chosen: tuple[Evidence, ...] = ()
    partial: Evidence | None = None
    scores: dict = field(default_factory=dict)


def _value(ev: Evidence, params: ScoringParams) -> float:
    """The order of candidates: their logit, shorter ones first among near-ties."""
    return params.logit(ev.features) - params.length_penalty * len(ev.text)


def judge(evidence: list[Evidence], params: ScoringParams, *, limit: int = 3) -> Judgement:
    """Choose the answer sentences, or the near miss to report, or nothing (refuse)."""
    if not evidence:
        return Judgement(0.0)
    ranked = sorted(evidence, key=lambda ev: -_value(ev, params))
    best = ranked[0]
    p_best = params.probability(best.features)
    # the asked place, year and kind of fact must match: other evidence answers only partially, whatever its score
    fitting = [ev for ev in ranked if ev.fits]
    if fitting and params.probability(fitting[0].features) >= params.threshold:
        best = fitting[0]
        p_best = params.probability(best.features)
        ranked = fitting
        chosen = [best]
        for ev in ranked[1:]:
            p = params.probability(ev.features)
            if len(chosen) >= limit or p < max(params.threshold, params.keep_ratio * p_best):
                break
            if any(ev.article_id == x.article_id and ev.start < x.end and x.start < ev.end for x in chosen):
                continue
            chosen.append(ev)
        return Judgement(p_best, tuple(chosen))
    # a near miss: evidence that would answer if only the place or year were the asked one, or it held the fact
    def relaxed(ev: Evidence) -> float:
        f = list(ev.features)
        f[2] = f[3] = f[4] = 1.0
        return params.probability(tuple(f))
    misses = [ev for ev in evidence if not ev.fits]
    if misses and (not fitting or _value(max(misses, key=lambda ev: _value(ev, params)), params)
                   >= _value(fitting[0], params)):
        near = max(misses, key=lambda ev: relaxed(ev) - 1e-4 * len(ev.text))
        if relaxed(near) >= params.threshold:
            return Judgement(p_best, (), near)
    return Judgement(p_best)


def constraints_hold(features: np.ndarray) -> np.ndarray:
    """Which rows of a feature matrix may answer (``Evidence.fits``): the asked place and year, and the
    asked kind of fact (the fact feature is 1 when no figure is asked)."""
    f = np.asarray(features).reshape(-1, len(FEATURES))
    return (f[:, 3] == 1) & (f[:, 4] == 1) & (f[:, 2] > 0)


# --- fitting --------------------------------------------------------------------------------------

def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, sample_weight: np.ndarray | None = None,
                 iterations: int = 50) -> tuple[np.ndarray, float]:
    """Ridge-penalised logistic regression by Newton's method; returns (weights, bias).

    >>> w, b = fit_logistic(np.array([[0.], [1.], [2.], [3.]]), np.array([0, 0, 1, 1]), l2=0.1)
    >>> bool(w[0] > 0)
    True
    """
    n, d = x.shape
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    xb = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0  # the intercept is not penalised
    for _ in range(iterations):
        z = np.clip(xb @ theta, -30, 30)
        p = 1 / (1 + np.exp(-z))
        grad = xb.T @ (sw * (p - y)) + reg * theta
        h = (xb * (sw * p * (1 - p))[:, None]).T @ xb + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(h, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


# --- the evidence of a search, kept for its answer -------------------------------------------------

def _hits_key(info: QuestionInfo, hits) -> tuple:
    return (info.text, tuple(h.chunk.chunk_id for h in hits))


def remember_evidence(index, info: QuestionInfo, hits, evidence: list[Evidence]) -> None:
    """Keep the evidence a search scored, so that answering its hits does not score them again."""
    ids = {h.chunk.chunk_id for h in hits}
    with _lock:
        remembered = index.derived.setdefault("evidence", {})
        while len(remembered) >= 32:
            remembered.pop(next(iter(remembered)))
        remembered[_hits_key(info, hits)] = [ev for ev in evidence if ev.chunk_id in ids]


def evidence_of_hits(index, info: QuestionInfo, hits, query_vector: np.ndarray | None,
                     params: ScoringParams) -> list[Evidence]:
    """The scored sentences of a search's hits for the question ``info`` (remembered from the search,
    else scored now with the hits' ranks as their retrieval ranks)."""
    with _lock:
        found = index.derived.get("evidence", {}).get(_hits_key(info, hits))
    if found is not None:
        return found
    if query_vector is None:
        from .embed import index_encoder

        query_vector = index_encoder(index).encode_queries([info.text])[0]
    return gather_evidence(index, info, query_vector, [(index.chunks.row_of(h.chunk.chunk_id), h.rank) for h in hits],
                           params)
