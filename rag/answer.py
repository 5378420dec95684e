"""Hits -> a short extractive answer whose every sentence is a verbatim excerpt with its [n]
citation; a list of the measures an article enumerates; a partial answer saying which place or year
the pages do cover; or an honest refusal listing the closest articles. What counts as evidence is
decided in ``rag.score``."""
from __future__ import annotations

import re

import numpy as np

from .config import AnswerSettings
from .index import Index
from .query import Question, QuestionInfo
from .score import Evidence, ScoringParams, asks_a_name, evidence_of_hits, judge, load_scoring
from .types import Answer, Citation, Hit, QuestionKind
from .zh import numbers_in, split_sentences

__all__ = ["compose_answer", "refusal", "make_citation", "unsupported_numbers", "evidence_sentences", "list_items"]

_LEAD_TRIM = re.compile(r"^(据悉|据了解|据介绍|同时|此外|另外|其中|目前|与此同时|近日|日前)[，,]")
_CLAUSE_END = "，,；;：:"


def _trim(text: str, start: int) -> tuple[int, str]:
    m = _LEAD_TRIM.match(text)
    if m and len(text) - m.end() >= 8:
        return start + m.end(), text[m.end():]
    return start, text


def make_citation(n: int, index: Index, article_id: str, start: int, end: int) -> Citation:
    """A citation of article text [start, end): the excerpt is sliced from the article itself."""
    art = index.articles[article_id]
    _, line = art.raw_offset(start) if art.segments else (0, 0)
    return Citation(n=n, article_id=article_id, title=art.title, source=art.source,
                    excerpt=art.text[start:end], start=start, end=end, line=line)


def unsupported_numbers(answer: str, citations: list[Citation] | tuple[Citation, ...]) -> list[str]:
    """Numbers in the answer that none of the cited excerpts contains (markers [n] ignored)."""
    text = re.sub(r"\[\d+\]", "", answer)
    have = set()
    for c in citations:
        have.update(numbers_in(c.excerpt))
    return [n for n in numbers_in(text) if n not in have]


def refusal(question: str, hits: list[Hit], reason: str = "", *, asked: str | None = None) -> Answer:
    """The plain "not found" answer, offering the closest articles instead of a guess; it quotes
    ``asked`` (a follow-up as it was understood: "格尔木在动力电池产能城市中排第几", not "那格尔木呢"), else
    the question."""
    related, seen = [], set()
    for h in hits:
        if h.chunk.article_id not in seen:
            seen.add(h.chunk.article_id)
            related.append({"article_id": h.chunk.article_id, "title": h.title, "source": h.source})
    topic = (asked or question).strip().rstrip("？?。！!")
    text = f"在现有资料中没有找到“{topic}”的信息。"
    if related:
        text += "以下文章可能相关：" + "；".join(f"《{r['title']}》" for r in related[:3]) + "。"
    return Answer(question=question, answer=text, refused=True, citations=(), related=tuple(related[:5]))


def _excerpt(text: str, start: int) -> tuple[int, int, str]:
    """A cited span without a leading connective or trailing clause punctuation."""
    start, text = _trim(text, start)
    end = start + len(text)
    while end > start and text and text[-1] in _CLAUSE_END:
        end -= 1
        text = text[:-1]
    return start, end, text


def _shown(text: str) -> str:
    return text if text and text[-1] in "。！？!?”" else text + "。"


# enumerated items: 一是…, （一）…, 一、…, 1. …, 首先/其次/再次/最后
_ITEM = re.compile(r"^(?:[一二三四五六七八九十]+是|（[一二三四五六七八九十]+）|[一二三四五六七八九十]+、|\d{1,2}[.、．](?!\d)|"
                   r"首先|其次|再次|最后)")
_HEAD_MAX = 24


def list_items(text: str, near: int, *, max_items: int = 6, max_chars: int = 360) -> list[tuple[int, int]]:
    """The enumerated items of an article nearest to position ``near``, as (start, end) spans: sentences
    opening with 一是/（一）/一、/1./首先…, or else its section heads (short lines without final
    punctuation). Each item is its sentence, cut at the first clause after 60 characters.

    >>> t = "全市采取三项措施。一是加强培训，提高能力。二是优化流程。三是强化考核。"
    >>> [t[s:e] for s, e in list_items(t, 0)]
    ['一是加强培训，提高能力。', '二是优化流程。', '三是强化考核。']
    """
    spans = split_sentences(text)
    groups: list[list[tuple[int, int]]] = []
    for s, e in spans:
        if _ITEM.match(text[s:e]):
            prev = groups[-1][-1] if groups else None
            # items of one list follow each other within a few sentences
            if prev is not None and sum(1 for a, _ in spans if prev[1] <= a < s) <= 3:
                groups[-1].append((s, e))
            else:
                groups.append([(s, e)])
    groups = [g for g in groups if len(g) >= 2]
    if not groups:
        heads, pos = [], 0
        for line in text.split("\n"):
            stripped = line.strip()
            if 2 <= len(stripped) <= _HEAD_MAX and stripped[-1] not in "。！？!?；;，,：:":
                s = pos + line.index(stripped)
                heads.append((s, s + len(stripped)))
            pos += len(line) + 1
        # section heads list what the article's opening sums up; evidence inside a section is about
        # that section, whose heads are not its items
        if len(heads) >= 2 and near < heads[0][0]:
            groups = [heads]
    if not groups:
        return []
    # the list the evidence is in, else the first one after it, else the last one before it
    def distance(g: list[tuple[int, int]]) -> tuple[int, int]:
        if g[0][0] <= near <= g[-1][1]:
            return (0, 0)
        return (1, g[0][0] - near) if g[0][0] > near else (2, near - g[-1][1])
    group = min(groups, key=distance)
    out, used = [], 0
    for s, e in group[:max_items]:
        if e - s > 60:
            cut = next((i + 1 for i in range(s + 40, e - 1) if text[i] in "，,；;："), e)
            e = cut if cut - s <= 90 else e
        if out and used + (e - s) > max_chars:
            break
        out.append((s, e))
        used += e - s
    return out


def _enumerates(sentence: str) -> bool:
    """Whether a sentence lists three or more things itself ("建成妇女之家、青年之家、工会驿站"): then it
    is the list asked for, not the numbered items elsewhere in its article."""
    return sentence.count("、") >= 2 or sentence.count("；") >= 2


def _answer_from(index: Index, question: str, spans: list[tuple[str, int, int]], **extra) -> Answer:
    citations, parts = [], []
    for n, (aid, s, e) in enumerate(spans, start=1):
        start, end, text = _excerpt(index.articles[aid].text[s:e], s)
        citations.append(make_citation(n, index, aid, start, end))
        parts.append(f"{_shown(text)}[{n}]")
    return Answer(question=question, answer="".join(parts), refused=False, citations=tuple(citations), **extra)


def _partial(index: Index, question: Question, ev: Evidence, hits: list[Hit]) -> Answer:
    """"资料中只有海西的信息：…[1]，没有德令哈的数字。" — what the pages hold instead, cited (or
    "…[1]，其中没有所问的日期。" when the place and year fit but the asked figure is not there)."""
    start, end, text = _excerpt(ev.text, ev.start)
    about = "".join(p for p in ev.about_places if p not in ev.missing_places)
    about += "".join(_year(y) for y in ev.about_years if y not in ev.missing_years)
    asked = "".join(_surface(question.resolved, p) for p in ev.missing_places) + "".join(_year(y) for y in ev.missing_years)
    thing = {QuestionKind.COUNT: "数字", QuestionKind.RANK: "排名", QuestionKind.DATE: "日期"}.get(
        question.info.kind, "名称" if asks_a_name(question.resolved) else "信息")
    head = f"资料中只有{about}的相关内容：" if about else "资料中只有以下相关内容："
    cite = make_citation(1, index, ev.article_id, start, end)
    if asked:
        text = f"{head}{text.rstrip('。！？!?')}[1]，没有{asked}的{thing}。"
    else:  # the right place and year, but not the asked figure ("哪天开园" of a sentence without a date)
        text = f"资料中的相关内容：{text.rstrip('。！？!?')}[1]，其中没有所问的{thing}。"
    related = refusal(question.text, hits).related
    return Answer(question=question.text, answer=text, refused=False, citations=(cite,), related=related,
                  partial=True)


def _year(y: str) -> str:
    return f"{y}年" if y.isdigit() else y  # "2023" -> 2023年; "去年" stays


def _surface(query: str, key: str) -> str:
    """The place as the question wrote it ("德令哈市" for the key "德令哈")."""
    m = re.search(re.escape(key) + r"(?:自治州|自治县|[省市州县区镇乡村])?", query)
    return m.group(0) if m else key


def compose_answer(index: Index, question: Question, hits: list[Hit], settings: AnswerSettings,
                   *, query_vector: np.ndarray | None = None, scoring: ScoringParams | None = None) -> Answer:
    """Answer from the hits: the best one to three sentences, the enumerated items for a 哪些/措施
    question, a partial answer when only the place, the year or the asked figure is missing, or a refusal."""
    if not hits:
        return refusal(question.text, hits, asked=question.resolved)
    params = scoring or load_scoring()
    info = question.info
    evidence = evidence_of_hits(index, info, hits, query_vector, params)
    limit = 2 if info.kind.asks_a_figure else settings.max_sentences
    verdict = judge(evidence, params, limit=limit)
    if verdict.chosen:
        best = verdict.chosen[0]
        if info.kind is QuestionKind.LIST and not _enumerates(best.text):
            items = list_items(index.articles[best.article_id].text, best.start,
                               max_items=params.list_items, max_chars=params.list_chars)
            if len(items) >= 2:
                return _answer_from(index, question.text, [(best.article_id, s, e) for s, e in items])
        rank = {h.chunk.chunk_id: h.rank for h in hits}
        chosen = sorted(verdict.chosen, key=lambda ev: (rank.get(ev.chunk_id, 99), ev.start))
        return _answer_from(index, question.text, [(ev.article_id, ev.start, ev.end) for ev in chosen])
    if verdict.partial is not None:
        return _partial(index, question, verdict.partial, hits)
    return refusal(question.text, hits, asked=question.resolved)


def evidence_sentences(index: Index, info: QuestionInfo, hits: list[Hit], *, limit: int = 3,
                       max_chars: int = 150, query_vector: np.ndarray | None = None,
                       scoring: ScoringParams | None = None) -> list[tuple[str, int, int]]:
    """The best evidence for a question (its ``analyze_question``), as (article_id, start, end), best first: the numbered
    excerpts a local model is given. Short on purpose (a 2-core CPU reads about 100 prompt tokens
    a second): whole sentences where they fit, else the clause windows that hold the fact."""
    params = scoring or load_scoring()
    ranked = sorted(evidence_of_hits(index, info, hits, query_vector, params),
                    key=lambda ev: -(params.logit(ev.features) - params.length_penalty * len(ev.text)))
    out: list[tuple[str, int, int]] = []
    used = 0
    for c in ranked:
        art_id = c.article_id
        start, end = _trim(c.text, c.start)[0], c.end
        # the whole sentence gives the model context, when it fits the budget
        text = index.articles[art_id].text
        s0 = max(text.rfind(ch, 0, c.start) for ch in "。！？；\n") + 1
        ends = [i for i in (text.find(ch, max(c.end - 1, 0)) for ch in "。！？；\n") if i >= 0]
        e0 = min(ends) + 1 if ends else len(text)
        if used + (e0 - s0) <= max_chars:
            start, end = s0, e0
        if any(a == art_id and s < end and start < e for a, s, e in out):
            continue
        if used + (end - start) > max_chars and out:
            continue
        out.append((art_id, start, end))
        used += end - start
        if len(out) >= limit:
            break
    return out
