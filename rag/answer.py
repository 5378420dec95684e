"""Hits -> a short extractive answer whose every sentence is a verbatim excerpt with its [n]
citation, or an honest refusal listing the closest articles."""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass

from .config import Settings
from .index import Index
from .query import analyze_question, fact_match, term_coverage
from .retrieve import term_idf
from .types import Answer, Citation, Hit
from .zh import fold_width, numbers_in, split_sentences

__all__ = ["Candidate", "score_sentences", "compose_answer", "refusal", "make_citation", "unsupported_numbers",
           "evidence_sentences"]

_LEAD_TRIM = re.compile(r"^(据悉|据了解|据介绍|同时|此外|另外|其中|目前|与此同时|近日|日前)[，,]")
_CLAUSE_END = "，,；;：:"


@dataclass(frozen=True)
class Candidate:
    """A sentence (or clause window) of a hit, scored against the question."""

    hit: Hit
    start: int  # offsets in the article text
    end: int
    text: str
    coverage: float
    fact: float
    score: float


_blobs: dict[int, str] = {}


def _corpus_text(index: Index) -> str:
    key = id(index)
    if key not in _blobs:
        _blobs.clear()
        _blobs[key] = fold_width("\n".join(a.title + "\n" + a.text for a in index.articles.values())).lower()
    return _blobs[key]


def _windows(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The sentence and its windows of consecutive clauses (for trimming long sentences)."""
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


_scored: dict[tuple, list[Candidate]] = {}
_scored_lock = threading.Lock()


def score_sentences(index: Index, question: str, hits: list[Hit]) -> list[Candidate]:
    """Every sentence of the hits (and, for long ones, their clause windows), best first.

    The last few results are kept, since the extractive answer and the local model's excerpts
    are both drawn from the same scoring of the same hits."""
    key = (id(index), question, tuple((h.rank, h.chunk.chunk_id) for h in hits))
    with _scored_lock:
        found = _scored.get(key)
    if found is None:
        found = _score_sentences(index, question, hits)
        with _scored_lock:
            while len(_scored) >= 16:
                _scored.pop(next(iter(_scored)))
            _scored[key] = found
    return found


def _score_sentences(index: Index, question: str, hits: list[Hit]) -> list[Candidate]:
    info = analyze_question(question)
    idf = term_idf(index)
    unknown_idf = math.log(1 + max(1, len(index.chunks)))
    corpus = _corpus_text(index)
    cands: list[Candidate] = []
    for hit in hits:
        art = index.articles[hit.chunk.article_id]
        context = art.title + "\n" + art.text
        prior = 0.15 / hit.rank
        for s, e in split_sentences(hit.chunk.text):
            a0 = hit.chunk.start + s
            a1 = hit.chunk.start + e
            spans = _windows(art.text, a0, a1) if info.kind in ("count", "rank", "date") else [(a0, a1)]
            for w0, w1 in spans:
                t = art.text[w0:w1]
                cov = term_coverage(info, t, idf, context=context, unknown_idf=unknown_idf, corpus=corpus)
                fact = fact_match(info, t)
                # shorter windows only win when they keep the evidence: a small length penalty
                score = cov * (1 + 0.5 * fact) + prior - 0.0008 * len(t)
                cands.append(Candidate(hit, w0, w1, t, cov, fact, score))
    cands.sort(key=lambda c: -c.score)
    return cands


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


def refusal(question: str, hits: list[Hit], reason: str = "") -> Answer:
    """The plain "not found" answer, offering the closest articles instead of a guess."""
    related, seen = [], set()
    for h in hits:
        if h.chunk.article_id not in seen:
            seen.add(h.chunk.article_id)
            related.append({"article_id": h.chunk.article_id, "title": h.title, "source": h.source})
    topic = question.strip().rstrip("？?。！!")
    text = f"在现有资料中没有找到“{topic}”的信息。"
    if related:
        text += "以下文章可能相关：" + "；".join(f"《{r['title']}》" for r in related[:3]) + "。"
    return Answer(question=question, answer=text, refused=True, citations=(), related=tuple(related[:5]))


def compose_answer(index: Index, question: str, hits: list[Hit], settings: Settings,
                   *, retrieval_query: str | None = None) -> Answer:
    """Pick the one to three best sentences and join them with their [n] markers, or refuse."""
    query = retrieval_query or question
    if not hits:
        return refusal(question, hits)
    cands = score_sentences(index, query, hits)
    info = analyze_question(query)
    needs_fact = info.kind in ("rank", "date", "count")
    # evidence: enough of the question's terms, and (for a number, date or rank question) such a fact
    eligible = [c for c in cands if c.coverage >= settings.refusal_threshold and (c.fact > 0 or not needs_fact)]
    if not eligible:
        return refusal(question, hits)
    best = eligible[0]
    chosen = [best]
    limit = settings.max_answer_sentences if info.kind in ("list", "benefit", "other", "who") else 2
    for c in eligible[1:]:
        if len(chosen) >= limit or c.score < 0.85 * best.score:
            break
        if any(c.hit.chunk.article_id == x.hit.chunk.article_id and c.start < x.end and x.start < c.end
               for x in chosen):
            continue
        chosen.append(c)
    chosen.sort(key=lambda c: (c.hit.rank, c.start))
    citations, parts = [], []
    for n, c in enumerate(chosen, start=1):
        start, text = _trim(c.text, c.start)
        end = start + len(text)
        while end > start and text and text[-1] in _CLAUSE_END:
            end -= 1
            text = text[:-1]
        citations.append(make_citation(n, index, c.hit.chunk.article_id, start, end))
        shown = text if text[-1] in "。！？!?”" else text + "。"
        parts.append(f"{shown}[{n}]")
    return Answer(question=question, answer="".join(parts), refused=False, citations=tuple(citations))


def evidence_sentences(index: Index, question: str, hits: list[Hit], *, limit: int = 3,
                       max_chars: int = 150) -> list[tuple[str, int, int]]:
    """The best evidence for a question, as (article_id, start, end), best first: the numbered
    excerpts a local model is given. Short on purpose (a 2-core CPU reads about 100 prompt tokens
    a second): whole sentences where they fit, else the clause windows that hold the fact."""
    out: list[tuple[str, int, int]] = []
    used = 0
    for c in score_sentences(index, question, hits):
        art_id = c.hit.chunk.article_id
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
