"""Dense and BM25 (jieba tokens) retrieval from the index's store, fused by reciprocal rank fusion."""
from __future__ import annotations

import numpy as np

from .config import AnswerSettings, RetrievalSettings
from .errors import BadInput
from .index import Index
from .ingest import clean_question
from .query import Question
from .store import Where, fuse_ranks
from .score import ScoringParams, gather_evidence, load_scoring, remember_evidence, rerank, term_idf
from .types import Hit, Retriever
from .zh import is_han

__all__ = ["check_query", "dense_ranking", "bm25_ranking", "fuse_ranks", "fused_ranking", "term_idf", "search", "MAX_K"]

MAX_K = 100


def check_query(query: object, settings: AnswerSettings) -> str:
    """Validate a query and return it stripped of spaces and of control and zero-width characters
    (so the chat and the API answer ``格尔木\x07的开发区…`` as the CLI does); raise BadInput
    saying what was wrong."""
    if not isinstance(query, str):
        raise BadInput(f"query must be text, got {type(query).__name__}")
    q = clean_question(query)[0].strip()
    if not q:
        raise BadInput("query is empty")
    if len(q) > settings.max_question_chars:
        raise BadInput(f"query is {len(q):,} characters; at most {settings.max_question_chars} are accepted")
    if not any(is_han(c) or c.isalnum() for c in q):
        raise BadInput(f"query {q[:20]!r} has no words to search for (only punctuation, symbols or emoji)")
    return q


def check_k(k: object) -> int:
    """Validate the number of hits asked for."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise BadInput(f"k must be an integer, got {k!r}")
    if not 1 <= k <= MAX_K:
        raise BadInput(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def _where(allowed: np.ndarray | None, filters) -> Where:
    return Where(rows=None if allowed is None else np.asarray(allowed, dtype=np.int64), filters=filters or None)


def dense_ranking(index: Index, query_vector: np.ndarray, n: int, allowed: np.ndarray | None = None,
                  filters=None) -> list[tuple[int, float]]:
    """(chunk row, cosine) pairs, best first, from the index's store; only rows in ``allowed`` (the rows
    of ``filters``, a ``meta.Filters``) when it is given."""
    return index.store.dense(query_vector, n, _where(allowed, filters))


def bm25_ranking(index: Index, query: str, n: int, allowed: np.ndarray | None = None,
                 filters=None) -> list[tuple[int, float]]:
    """(chunk row, BM25 score) pairs with a positive score, best first; only rows in ``allowed`` if given."""
    return index.store.bm25(index.tokenizer.tokenize(query), n, _where(allowed, filters))


def _dedupe(index: Index, ranked: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """Drop a chunk that mostly repeats better-ranked chunks of the same article."""
    kept: list[tuple[int, float]] = []
    for row, score in ranked:
        c = index.chunks[row]
        covered = sum(max(0, min(c.end, index.chunks[r].end) - max(c.start, index.chunks[r].start))
                      for r, _ in kept if index.chunks[r].article_id == c.article_id)
        if covered * 2 > c.end - c.start:  # mostly repeats a better hit
            continue
        kept.append((row, score))
        if len(kept) == k:
            break
    return kept


def fused_ranking(index: Index, query: str, *, settings: RetrievalSettings, query_vector: np.ndarray | None,
                  retriever: str, n: int, allowed: np.ndarray | None = None, filters=None) -> list[tuple[int, float]]:
    """(chunk row, fused score) pairs of the dense and/or BM25 rankings, best first, before the rerank
    (the hybrid is the store's: reciprocal rank fusion, ``fuse_ranks``)."""
    if retriever == Retriever.DENSE:
        return dense_ranking(index, query_vector, n, allowed, filters)
    if retriever == Retriever.BM25:
        return bm25_ranking(index, query, n, allowed, filters)
    return index.store.hybrid(index.tokenizer.tokenize(query), query_vector, n, _where(allowed, filters),
                              weights=(settings.dense_weight, settings.bm25_weight), k=settings.rrf_k)


def search(index: Index, query: str | Question, *, k: int = 5, settings: RetrievalSettings | None = None,
           query_vector: np.ndarray | None = None, retriever: str | None = None,
           scoring: ScoringParams | None = None, allowed: np.ndarray | None = None, filters=None) -> list[Hit]:
    """The top ``k`` chunks for a query, by the configured retriever (hybrid, bm25 or dense), reranked
    by the probability that their best sentence answers the question (``rag.score``).

    ``query`` is the question record ``Engine`` made (a plain text is checked and analysed here);
    ``query_vector`` is the encoded query (needed unless the retriever is bm25 without rerank);
    ``allowed`` the chunk rows a filter leaves (None: all), searched exactly; ``filters`` the
    ``meta.Filters`` they came from (a milvus store searches with them as an expression).
    """
    settings = settings or index.settings.retrieval
    mode = Retriever.parse(retriever or settings.retriever, "retriever")
    question = query if isinstance(query, Question) else Question.of(check_query(query, index.settings.answer), tokenizer=index.tokenizer)
    q = question.resolved
    k = check_k(k)
    params = scoring or load_scoring()
    if (mode is not Retriever.BM25 or settings.rerank) and query_vector is None:
        raise ValueError("dense retrieval and the rerank need the query vector")
    ranked = fused_ranking(index, q, settings=settings, query_vector=query_vector, retriever=mode,
                           n=max(settings.candidates, 4 * k), allowed=allowed, filters=filters)
    evidence = []
    if settings.rerank:
        depth = [(row, rank) for rank, (row, _) in enumerate(ranked[: params.rerank_depth], start=1)]
        evidence = gather_evidence(index, question.info, query_vector, depth, params)
        ranked = rerank(evidence, ranked, {index.chunks[r].chunk_id: r for r, _ in depth}, params)
    hits = []
    for rank, (row, score) in enumerate(_dedupe(index, ranked, k), start=1):
        chunk = index.chunks[row]
        art = index.articles[chunk.article_id]
        hits.append(Hit(rank=rank, score=round(float(score), 6), chunk=chunk, title=art.title, source=art.source,
                        **art.page_fields()))
    if evidence:
        remember_evidence(index, question.info, hits, evidence)
    return hits
