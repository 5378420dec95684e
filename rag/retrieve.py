"""Dense (FAISS) and BM25 (jieba tokens) retrieval, fused by reciprocal rank fusion."""
from __future__ import annotations

import numpy as np

from .config import Settings
from .errors import BadInput
from .index import Index
from .ingest import clean_question
from .query import Question
from .score import ScoringParams, gather_evidence, load_scoring, remember_evidence, rerank, term_idf
from .types import Hit, Retriever
from .zh import is_han

__all__ = ["check_query", "dense_ranking", "bm25_ranking", "fuse_ranks", "fused_ranking", "term_idf", "search", "MAX_K"]

MAX_K = 100


def check_query(query: object, settings: Settings) -> str:
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


def dense_ranking(index: Index, query_vector: np.ndarray, n: int,
                  allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """(chunk row, cosine) pairs, best first; only rows in ``allowed`` (a filter) when it is given."""
    if index.dense.ntotal == 0 or (allowed is not None and not len(allowed)):
        return []
    extra = {}
    if allowed is not None:  # FAISS skips the other rows inside the search, so the filter is exact
        import faiss

        extra["params"] = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
    scores, rows = index.dense.search(np.ascontiguousarray(query_vector.reshape(1, -1), dtype=np.float32),
                                      min(n, index.dense.ntotal), **extra)
    return [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]


def bm25_ranking(index: Index, query: str, n: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """(chunk row, BM25 score) pairs with a positive score, best first; only rows in ``allowed`` if given."""
    vocab = index.bm25.vocab_dict
    ids = [vocab[t] for t in index.tokenizer.tokenize(query) if t in vocab]
    if not ids:
        return []
    scores = index.bm25.get_scores_from_ids(ids)
    if allowed is not None:
        kept = np.zeros_like(scores)
        kept[allowed] = scores[allowed]
        scores = kept
    top = np.argsort(-scores, kind="stable")[:n]
    return [(int(r), float(scores[r])) for r in top if scores[r] > 0]


def fuse_ranks(rankings: list[list[tuple[int, float]]], weights: list[float], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1.

    >>> fuse_ranks([[(1, .9), (2, .5)], [(2, 3.0), (3, 1.0)]], [1.0, 1.0], k=60)[0][0]
    2
    """
    fused: dict[int, float] = {}
    for ranking, w in zip(rankings, weights):
        for rank, (row, _) in enumerate(ranking, start=1):
            fused[row] = fused.get(row, 0.0) + w / (k + rank)
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))


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


def fused_ranking(index: Index, query: str, *, settings: Settings, query_vector: np.ndarray | None,
                  retriever: str, n: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """(chunk row, fused score) pairs of the dense and/or BM25 rankings, best first, before the rerank."""
    rankings, weights = [], []
    if retriever != Retriever.BM25:
        rankings.append(dense_ranking(index, query_vector, n, allowed))
        weights.append(settings.dense_weight)
    if retriever != Retriever.DENSE:
        rankings.append(bm25_ranking(index, query, n, allowed))
        weights.append(settings.bm25_weight)
    if len(rankings) == 1:
        return rankings[0]
    return fuse_ranks(rankings, weights, settings.rrf_k)


def search(index: Index, query: str | Question, *, k: int = 5, settings: Settings | None = None,
           query_vector: np.ndarray | None = None, retriever: str | None = None,
           scoring: ScoringParams | None = None, allowed: np.ndarray | None = None) -> list[Hit]:
    """The top ``k`` chunks for a query, by the configured retriever (hybrid, bm25 or dense), reranked
    by the probability that their best sentence answers the question (``rag.score``).

    ``query`` is the question record ``Engine`` made (a plain text is checked and analysed here);
    ``query_vector`` is the encoded query (needed unless the retriever is bm25 without rerank);
    ``allowed`` the chunk rows a filter leaves (None: all), searched exactly.
    """
    settings = settings or index.settings
    mode = Retriever.parse(retriever or settings.retriever, "retriever")
    question = query if isinstance(query, Question) else Question.of(check_query(query, settings), tokenizer=index.tokenizer)
    q = question.resolved
    k = check_k(k)
    params = scoring or load_scoring()
    if (mode is not Retriever.BM25 or settings.rerank) and query_vector is None:
        raise ValueError("dense retrieval and the rerank need the query vector")
    ranked = fused_ranking(index, q, settings=settings, query_vector=query_vector, retriever=mode,
                           n=max(settings.candidates, 4 * k), allowed=allowed)
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
