"""The core records that flow through the pipeline, as frozen dataclasses."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from .errors import BadInput

__all__ = ["PAGE_FIELDS", "Retriever", "AnswerMode", "AnswerKind", "QuestionKind", "FallbackReason", "Segment",
           "Article", "Chunk", "Hit", "Citation", "Answer", "to_dict", "article_from_dict", "chunk_from_dict"]


class _Choice(StrEnum):
    """A closed set of names; a member is its own string, so JSON and comparisons see the plain value."""

    @classmethod
    def parse(cls, value: object, what: str):
        """The member named ``value``; BadInput saying what is allowed otherwise (the one check of ``what``)."""
        try:
            return cls(value)
        except ValueError:
            names = [m.value for m in cls]
            allowed = ", ".join(names[:-1]) + " or " + names[-1]
            raise BadInput(f"{what} must be {allowed}, got {value!r}") from None


class Retriever(_Choice):
    """Which rankings find the passages: both fused, or one of them."""

    HYBRID = "hybrid"
    BM25 = "bm25"
    DENSE = "dense"


class AnswerMode(_Choice):
    """How an answer is asked to be written: the sources' sentences, or the local model's words."""

    EXTRACTIVE = "extractive"
    LLM = "llm"


class AnswerKind(_Choice):
    """How an answer was written (``Answer.mode``): a checked llm answer may have been repaired, and an
    llm answer that failed its check is the extractive one instead."""

    EXTRACTIVE = "extractive"
    LLM = "llm"
    LLM_REPAIRED = "llm-repaired"
    FALLBACK = "extractive-fallback"


class QuestionKind(_Choice):
    """The kind of fact a question asks for, recognised from its wording (``rag.query``)."""

    RANK = "rank"
    DATE = "date"
    COUNT = "count"
    LIST = "list"
    BENEFIT = "benefit"
    WHO = "who"
    OTHER = "other"

    @property
    def asks_a_figure(self) -> bool:
        """A rank, a date or a count: one fact a sentence holds or lacks."""
        return self in (QuestionKind.RANK, QuestionKind.DATE, QuestionKind.COUNT)


class FallbackReason(_Choice):
    """Why an llm-mode question got the extractive answer; ``Answer.fallback_reason`` starts with it."""

    NOT_ASKED = "the sources do not answer this question; the model was not asked"
    MODEL_UNAVAILABLE = "local model unavailable"
    MODEL_FAILED = "the local model failed"
    NOT_FINISHED = "the model's answer was not finished"
    NO_ANSWER = "the model produced no answer"
    DECLINED = "the model declined although the sources answer the question"
    UNGROUNDED = "no sentence of the model's answer passed the grounding check"
    LEFT_OUT_FACTS = "the model's answer left out the figures or names the sources give"

Kind = Literal["article", "caption"]
PAGE_FIELDS = ("paper", "date", "page", "region", "city")


@dataclass(frozen=True)
class Segment:
    """A run of article text copied from one raw-page line: text[start:start+length] == raw[raw_start:...]."""

    start: int
    raw_start: int
    length: int
    line: int  # 1-based line number in the raw page


@dataclass(frozen=True)
class Article:
    """One article (or photo caption) rebuilt from a newspaper page."""

    article_id: str
    title: str
    text: str
    source: str
    kind: Kind = "article"
    subtitle: str | None = None
    byline: str | None = None
    continuation: bool = False
    provisional_title: bool = False
    segments: tuple[Segment, ...] = ()
    # the page's metadata (rag.meta): None where neither pages.toml nor the page says
    paper: str | None = None
    date: str | None = None  # YYYY-MM-DD
    page: str | None = None
    region: str | None = None
    city: str | None = None  # the city its 我市/本市/全市 mean

    def page_fields(self) -> dict[str, str | None]:
        """paper, date, page, region and city of the article's page (what hits and citations carry)."""
        return {k: getattr(self, k) for k in PAGE_FIELDS}

    def to_json(self) -> dict:
        """The article as ``rag articles --json`` and ``GET /api/articles`` print it (no raw-line map)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "segments"}

    def raw_offset(self, pos: int) -> tuple[int, int]:
        """Return (raw page offset, raw line number) of character ``pos`` of ``text``."""
        if not 0 <= pos < len(self.text):
            raise IndexError(f"position must be in [0, {len(self.text)}), got {pos}")
        best = None
        for seg in self.segments:
            if seg.start <= pos < seg.start + seg.length:
                return seg.raw_start + pos - seg.start, seg.line
            if seg.start <= pos:
                best = seg
        # characters that were inserted by repair (a joining space) map to the end of the run before
        if best is None:
            best = self.segments[0]
        return best.raw_start + best.length, best.line


@dataclass(frozen=True)
class Chunk:
    """A few consecutive sentences of one article; row i of the index."""

    chunk_id: str
    article_id: str
    ordinal: int
    start: int
    end: int
    text: str  # the article's own text[start:end], shown to users
    embed_text: str  # the text that is embedded and BM25-indexed (carries the title)


@dataclass(frozen=True)
class Hit:
    """A chunk found for a query, with its fused score and rank (1-based)."""

    rank: int
    score: float
    chunk: Chunk
    title: str
    source: str
    paper: str | None = None
    date: str | None = None
    page: str | None = None
    region: str | None = None
    city: str | None = None

    def to_json(self) -> dict:
        """The hit as ``rag search --json`` and ``POST /api/search`` print it (the chunk flattened in)."""
        return {"rank": self.rank, "score": self.score, "chunk_id": self.chunk.chunk_id,
                "article_id": self.chunk.article_id, "title": self.title, "source": self.source,
                "text": self.chunk.text, "paper": self.paper, "date": self.date, "page": self.page,
                "region": self.region, "city": self.city}


@dataclass(frozen=True)
class Citation:
    """A verbatim excerpt of an article that supports a part of an answer."""

    n: int
    article_id: str
    title: str
    source: str
    excerpt: str
    start: int
    end: int
    line: int
    paper: str | None = None
    date: str | None = None
    page: str | None = None
    region: str | None = None
    city: str | None = None


@dataclass(frozen=True)
class Answer:
    """What ``ask`` returns: the answer text with [n] markers, its citations, or a refusal."""

    question: str
    answer: str
    refused: bool
    citations: tuple[Citation, ...] = ()
    related: tuple[dict, ...] = ()
    mode: AnswerKind = AnswerKind.EXTRACTIVE
    resolved_question: str | None = None
    fallback_reason: str | None = None  # the FallbackReason, then ": " and what happened where known
    check: dict = field(default_factory=dict)  # llm mode: what the grounding check repaired or dropped
    timings_ms: dict[str, float] = field(default_factory=dict)
    # the pages hold only a near miss (another place or year), said as such and cited; not an answer
    partial: bool = False

    # written last, and only when set (not None, not empty)
    _OPTIONAL_JSON = ("resolved_question", "fallback_reason", "check")

    @property
    def fallback(self) -> FallbackReason | None:
        """Why an llm-mode question got the extractive answer (None: it did not)."""
        if not self.fallback_reason:
            return None
        return next((r for r in FallbackReason if self.fallback_reason.startswith(r.value)), None)

    def to_json(self) -> dict:
        """The answer as ``rag ask --json`` and the HTTP API print it: every field in order, then the
        optional ones that are set."""
        d = dataclasses.asdict(self)
        out = {k: v for k, v in d.items() if k not in self._OPTIONAL_JSON}
        out.update((k, d[k]) for k in self._OPTIONAL_JSON if d[k] not in (None, "", {}))
        out["citations"], out["related"] = list(out["citations"]), list(out["related"])
        return out


def to_dict(record: Any) -> dict:
    """Serialise a record to a JSON-ready dict."""
    return dataclasses.asdict(record)


def article_from_dict(d: dict) -> Article:
    """Rebuild an Article from ``to_dict`` output."""
    d = dict(d)
    d["segments"] = tuple(Segment(**s) for s in d.get("segments", ()))
    return Article(**d)


def chunk_from_dict(d: dict) -> Chunk:
    """Rebuild a Chunk from ``to_dict`` output."""
    return Chunk(**d)
