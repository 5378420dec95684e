"""Where the chunk vectors and the chunk text for BM25 live, and how they are searched: a store.

Two backends answer the same three rankings ((chunk row, score) pairs, best first):

- ``faiss`` (default): files in the index folder, a FAISS index and a bm25s index;
- ``milvus`` (``rag.milvus``): a Milvus collection, in a Milvus Lite folder inside the index folder or
  on a Milvus server, searched with Milvus's own dense, BM25 and hybrid (RRF) search, filters as
  Milvus expressions.

The records (articles, chunks, sentences and their vectors) stay in the index folder either way, so
the rerank and the answer above the store are the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import BadInput

__all__ = ["STORES", "StoreSpec", "Where", "Store", "FaissStore", "fuse_ranks", "top_rows", "check_store", "build_store", "open_store"]

STORES = ("faiss", "milvus")


@dataclass(frozen=True)
class StoreSpec:
    """Which store to build an index into.

    ``uri`` (milvus only): a Milvus Lite path (``index/milvus.db``: a folder inside the index folder,
    the default) or a server address ``http://host:19530``; ``token`` (``user:password`` or an API
    key) is used to connect and is never written to the manifest.
    """

    kind: str = "faiss"
    uri: str | None = None
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in STORES:
            raise BadInput(f"store must be {' or '.join(STORES)}, got {self.kind!r}")
        if self.kind == "faiss" and (self.uri or self.token):
            raise BadInput("--milvus-uri and --milvus-token need --store milvus")


@dataclass(frozen=True)
class Where:
    """The chunks a search may return: ``rows`` (chunk rows, None: all) and the ``filters`` they came
    from (a ``meta.Filters``, or None), which a store may evaluate itself."""

    rows: np.ndarray | None = None
    filters: object | None = None

    @property
    def empty(self) -> bool:
        return self.rows is not None and not len(self.rows)


class Store(Protocol):
    """What retrieval needs of a store."""

    kind: str

    def dense(self, vector: np.ndarray, n: int, where: Where) -> list[tuple[int, float]]:
        """(row, cosine) pairs, best first."""

    def bm25(self, tokens: list[str], n: int, where: Where) -> list[tuple[int, float]]:
        """(row, BM25 score) pairs of the chunks holding a query token, best first."""

    def hybrid(self, tokens: list[str], vector: np.ndarray, n: int, where: Where, *, weights: tuple[float, float],
               k: int) -> list[tuple[int, float]]:
        """Reciprocal rank fusion of the dense and BM25 rankings (``fuse_ranks``)."""

    def vectors(self) -> np.ndarray:
        """All chunk vectors, row i = chunk i."""

    def rows(self, rows: list[int]) -> np.ndarray:
        """The vectors of these chunk rows, in that order (what a question's rerank reads)."""

    def doc_freqs(self) -> dict[str, int]:
        """How many chunks hold each BM25 token."""

    def close(self) -> None:
        """Release what the store holds open."""


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


def top_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """The rows of the ``n`` highest scores, highest first, ties in row order: ``np.argsort(-scores,
    kind="stable")[:n]`` without sorting every row (a million BM25 scores: ~80 ms to sort).

    >>> top_rows(np.array([1.0, 3.0, 2.0, 3.0]), 3).tolist()
    [1, 3, 2]
    """
    if n <= 0 or not len(scores):
        return np.zeros(0, dtype=np.int64)
    if n >= len(scores):
        return np.argsort(-scores, kind="stable")
    cut = np.partition(scores, len(scores) - n)[len(scores) - n]  # the n-th highest score
    above = np.flatnonzero(scores > cut)
    tied = np.flatnonzero(scores == cut)[: n - len(above)]  # the first rows holding the cut score
    rows = np.concatenate([above, tied])
    return rows[np.argsort(-scores[rows], kind="stable")]


class FaissStore:
    """Chunk vectors in FAISS (exact inner product, HNSW above ``exact_search_max`` chunks, IVF-fp16 above
    ``HNSW_MAX``) and their jieba tokens in bm25s; filters are applied as row selections, exactly."""

    kind = "faiss"

    def __init__(self, dense, bm25) -> None:
        self.index = dense  # faiss.Index
        self.bm25_index = bm25  # bm25s.BM25

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def dense(self, vector: np.ndarray, n: int, where: Where) -> list[tuple[int, float]]:
        if self.index.ntotal == 0 or where.empty:
            return []
        extra = {}
        searcher = self.index
        if where.rows is not None:  # FAISS skips the other rows inside the search, so the filter is exact
            import faiss

            selector = faiss.IDSelectorBatch(where.rows)
            extra["params"] = faiss.SearchParameters(sel=selector)
            # a graph search (HNSW) can miss allowed rows the graph walk never reaches: scan its flat store
            storage = getattr(faiss.downcast_index(searcher), "storage", None)
            if storage is not None:
                searcher = faiss.downcast_index(storage)
            ivf = faiss.try_extract_index_ivf(searcher)
            if ivf is not None:  # an IVF search only visits nprobe lists: visit all of them
                extra["params"] = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nlist)
        scores, rows = searcher.search(np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32),
                                         min(n, self.index.ntotal), **extra)
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]

    def bm25(self, tokens: list[str], n: int, where: Where) -> list[tuple[int, float]]:
        vocab = self.bm25_index.vocab_dict
        ids = [vocab[t] for t in tokens if t in vocab]
        if not ids or where.empty:
            return []
        scores = self.bm25_index.get_scores_from_ids(ids)
        if where.rows is not None:
            kept = np.zeros_like(scores)
            kept[where.rows] = scores[where.rows]
            scores = kept
        held = np.flatnonzero(scores > 0)  # the chunks holding a query token; the rest never rank
        top = held[top_rows(scores[held], n)]
        return [(int(r), float(scores[r])) for r in top]

    def hybrid(self, tokens: list[str], vector: np.ndarray, n: int, where: Where, *, weights: tuple[float, float],
               k: int) -> list[tuple[int, float]]:
        return fuse_ranks([self.dense(vector, n, where), self.bm25(tokens, n, where)], list(weights), k)

    def _readable(self) -> None:
        import faiss

        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()  # IVF reads a row back through a row -> (list, offset) map

    def vectors(self) -> np.ndarray:
        n = self.index.ntotal
        if not n:
            return np.zeros((0, self.index.d), dtype=np.float32)
        self._readable()
        return self.index.reconstruct_n(0, n)

    def rows(self, rows: list[int]) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.index.d), dtype=np.float32)
        self._readable()
        return np.vstack([self.index.reconstruct(int(r)) for r in rows]).astype(np.float32, copy=False)

    def doc_freqs(self) -> dict[str, int]:
        df = np.diff(np.asarray(self.bm25_index.scores["indptr"]))
        return {t: int(df[i]) for t, i in self.bm25_index.vocab_dict.items() if i < len(df)}

    def close(self) -> None:
        pass


# The dense index by size, chosen from bench/bench_scale.py (2 shared cores; chunk vectors made from real
# e5 sentence vectors, queries real e5 question vectors; the README's bench_scale table). Every add and
# remove rebuilds it, so build time counts. Exact IndexFlatIP up to ``Settings.exact_search_max`` chunks
# (recall 1; p50 60 ms at 100k, 370 ms at 1M). HNSW over full vectors up to HNSW_MAX chunks: recall@10
# 0.988 at 100k with efSearch 256 (0.968 with 128), 0.983 at 200k, built in 68 s / 168 s. Above, IVF
# with vectors stored as float16 (IVF_NLIST_PER_SQRT * sqrt(n) lists trained on at most IVF_TRAIN
# vectors, IVF_NPROBE probed): at 1M (4000 lists) recall@10 0.980 (tie-aware 1.000; 0.968 with 256
# probes), p95 13-19 ms, serving RSS 0.8 GB, built in 90-150 s -- the same recall as IVF over float32
# vectors for half the memory, while HNSW (0.970 at efSearch 256, 1.8 GB) took 990 s to build and
# 8-bit storage lost 1.4-2.3 points. A filtered search scans the stored vectors of the allowed rows
# exhaustively (FaissStore.dense): at 1M p95 21 ms for a 1% filter, 131 ms for a 25% one.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256
HNSW_MAX = 200_000
IVF_NLIST_PER_SQRT = 4
IVF_NPROBE = 384
IVF_TRAIN = 200_000
_ADD_BATCH = 50_000


def _faiss_index(vectors: np.ndarray, exact_search_max: int, hnsw_max: int | None = None) -> tuple[object, str, dict]:
    """The FAISS index for these vectors, its kind and its parameters (both recorded in the manifest)."""
    import faiss

    n, dim = vectors.shape
    if n > (HNSW_MAX if hnsw_max is None else hnsw_max):
        # k-means wants >= 39 vectors a list: only a small index (a lowered threshold) gets fewer lists
        nlist = max(1, min(int(IVF_NLIST_PER_SQRT * math.sqrt(n)), n // 39))
        index = faiss.index_factory(dim, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = 1234  # k-means from a fixed seed: the same vectors give the same index
        sample = np.random.default_rng(0).choice(n, min(n, IVF_TRAIN), replace=False) if n > IVF_TRAIN else None
        index.train(np.ascontiguousarray(vectors if sample is None else vectors[np.sort(sample)], dtype=np.float32))
        ivf.nprobe = min(IVF_NPROBE, nlist)
        kind = "ivf-fp16-ip"
        params = {"nlist": nlist, "nprobe": int(ivf.nprobe), "train": int(min(n, IVF_TRAIN))}
    elif n > exact_search_max:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        kind = "hnsw-flat-ip"
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    else:
        index = faiss.IndexFlatIP(dim)
        kind, params = "flat-ip", {}
    for start in range(0, n, _ADD_BATCH):  # a batch at a time: no second copy of a large array
        index.add(np.ascontiguousarray(vectors[start:start + _ADD_BATCH], dtype=np.float32))
    return index, kind, {"chunks": int(n), "exact_search_max": exact_search_max, **params}


def build_store(folder: Path, index_dir: Path, spec: StoreSpec, *, chunks: list, tokens: list[list[str]],
                vectors: np.ndarray, articles: dict, exact_search_max: int, k1: float = 1.2,
                b: float = 0.75) -> dict:
    """Write the store of a new index (its files into ``folder``, the temporary index folder that will
    replace ``index_dir``) and return its manifest entry (``kind`` and what is needed to open it)."""
    if spec.kind == "milvus":
        from .milvus import build_milvus

        return build_milvus(folder, index_dir, spec, chunks=chunks, tokens=tokens, vectors=vectors,
                            articles=articles, k1=k1, b=b)
    import bm25s
    import faiss

    dense, kind, params = _faiss_index(vectors, exact_search_max)
    faiss.write_index(dense, str(folder / "dense.faiss"))
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index([t or [""] for t in tokens], show_progress=False)
    retriever.save(str(folder / "bm25"))
    return {"kind": "faiss", "dense_index": kind, "dense_params": params}


def check_store(spec: StoreSpec, index_dir: Path) -> None:
    """Refuse a store that cannot be built (no pymilvus, a server not answering, a Lite path outside the
    index) before the pages are read and embedded."""
    if spec.kind == "milvus":
        from .milvus import check_milvus

        check_milvus(spec, Path(index_dir))


def open_store(path: Path, entry: dict, *, dimension: int, count: int, token: str | None = None,
               articles: dict | None = None) -> Store:
    """Open the store a manifest entry describes, checking it holds ``count`` chunks of ``dimension``.

    Raises:
        IndexFormat: its files or collection are missing, damaged or inconsistent.
        BadInput: the milvus store cannot be reached (no pymilvus, server down, Lite folder in use).
    """
    from .errors import IndexFormat

    kind = entry.get("kind", "faiss")
    if kind == "milvus":
        from .milvus import open_milvus

        return open_milvus(path, entry, dimension=dimension, count=count, token=token, articles=articles)
    if kind != "faiss":
        raise IndexFormat(f"index at {path} uses the store {kind!r}, which this rag does not know; "
                          f"rebuild it with `rag index`")
    import bm25s
    import faiss

    try:
        dense = faiss.read_index(str(path / "dense.faiss"))
        bm25 = bm25s.BM25.load(str(path / "bm25"), load_corpus=False)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise IndexFormat(f"index at {path} is damaged ({first}); rebuild it with `rag index`") from None
    if dense.ntotal != count or bm25.scores.get("num_docs") != count or dense.d != dimension:
        raise IndexFormat(f"index at {path} is inconsistent ({count} chunks, {dense.ntotal} vectors of dimension "
                          f"{dense.d}, {bm25.scores.get('num_docs')} BM25 documents); rebuild it with `rag index`")
    return FaissStore(dense, bm25)
