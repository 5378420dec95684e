"""Dense (FAISS) and BM25 (jieba tokens) retrieval, fused by reciprocal rank fusion."""
from __future__ import annotations

import numpy as np

from .config import Settings
from .errors import BadInput
from .index import Index
from .query import analyze_question, fact_match, term_coverage
from .types import Hit
from .zh import is_han, split_sentences, tokenize

__all__ = ["check_query", "dense_ranking", "bm25_ranking", "fuse_ranks", "rerank", "term_idf", "search", "MAX_K"]

MAX_K = 100


def check_query(query: object, settings: Settings) -> str:
    """Validate a query and return it stripped; raise BadInput saying what was wrong."""
    if not isinstance(query, str):
        raise BadInput(f"query must be text, got {type(query).__name__}")
    q = query.strip()
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


def dense_ranking(index: Index, query_vector: np.ndarray, n: int) -> list[tuple[int, float]]:
    """(chunk row, cosine) pairs, best first."""
    if index.dense.ntotal == 0:
        return []
    scores, rows = index.dense.search(np.ascontiguousarray(query_vector.reshape(1, -1), dtype=np.float32),
                                      min(n, index.dense.ntotal))
    return [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]


def bm25_ranking(index: Index, query: str, n: int) -> list[tuple[int, float]]:
    """(chunk row, BM25 score) pairs with a positive score, best first."""
    vocab = index.bm25.vocab_dict
    ids = [vocab[t] for t in tokenize(query) if t in vocab]
    if not ids:
        return []
    scores = index.bm25.get_scores_from_ids(ids)
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


_idf_cache: dict[int, dict[str, float]] = {}


def term_idf(index: Index) -> dict[str, float]:
    """BM25-style IDF of every indexed token (from the BM25 index's document frequencies)."""
    key = id(index.bm25)
    if key not in _idf_cache:
        indptr = np.asarray(index.bm25.scores["indptr"])
        df = np.diff(indptr)
        n = max(1, len(index.chunks))
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        _idf_cache.clear()
        _idf_cache[key] = {t: float(idf[i]) for t, i in index.bm25.vocab_dict.items() if i < len(idf)}
    return _idf_cache[key]


def rerank(index: Index, query: str, ranked: list[tuple[int, float]], depth: int = 30) -> list[tuple[int, float]]:
    """Re-order the best fused candidates by how well their single best sentence answers the question:
    its share of the question's key terms (IDF-weighted, the title counting half) and whether it holds
    the kind of fact asked for (a rank, a date, a count in the asked-for unit, a list)."""
    if not ranked:
        return ranked
    info = analyze_question(query)
    idf = term_idf(index)
    unknown_idf = float(np.log(1 + max(1, len(index.chunks))))
    top = ranked[:depth]
    best_fused = top[0][1] or 1.0
    rescored = []
    for row, fused in top:
        chunk = index.chunks[row]
        title = index.articles[chunk.article_id].title
        best = 0.0
        for s, e in split_sentences(chunk.text):
            sent = chunk.text[s:e]
            cov = term_coverage(info, sent, idf, context=title, unknown_idf=unknown_idf)
            best = max(best, cov * (1 + 0.5 * fact_match(info, sent)))
        whole = term_coverage(info, chunk.text, idf, context=title, unknown_idf=unknown_idf)
        rescored.append((row, fused / best_fused + best + 0.5 * whole))
    rescored.sort(key=lambda x: (-x[1], x[0]))
    return rescored + ranked[depth:]


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


def search(index: Index, query: str, *, k: int = 5, settings: Settings | None = None,
           query_vector: np.ndarray | None = None, retriever: str | None = None) -> list[Hit]:
    """The top ``k`` chunks for a query, by the configured retriever (hybrid, bm25 or dense).

    ``query_vector`` is the encoded query (needed unless the retriever is bm25).
    """
    settings = settings or index.settings
    mode = retriever or settings.retriever
    if mode not in ("hybrid", "bm25", "dense"):
        raise BadInput(f"retriever must be hybrid, bm25 or dense, got {mode!r}")
    q = check_query(query, settings)
    k = check_k(k)
    n = max(settings.candidates, 4 * k)
    rankings, weights = [], []
    if mode in ("hybrid", "dense"):
        if query_vector is None:
            raise ValueError("dense retrieval needs the query vector")
        rankings.append(dense_ranking(index, query_vector, n))
        weights.append(settings.dense_weight)
    if mode in ("hybrid", "bm25"):
        rankings.append(bm25_ranking(index, q, n))
        weights.append(settings.bm25_weight)
    if len(rankings) == 1:
        ranked = rankings[0]
    else:
        ranked = fuse_ranks(rankings, weights, settings.rrf_k)
    if settings.rerank:
        ranked = rerank(index, q, ranked)
    hits = []
    for rank, (row, score) in enumerate(_dedupe(index, ranked, k), start=1):
        chunk = index.chunks[row]
        art = index.articles[chunk.article_id]
        hits.append(Hit(rank=rank, score=round(float(score), 6), chunk=chunk, title=art.title, source=art.source))
    return hits
