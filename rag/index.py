"""Build, save and load the index folder: manifest, articles, chunks, FAISS vectors, BM25, terms.

Everything is plain files (JSON, JSON lines, FAISS's own format, bm25s's numpy arrays); a build is
written into a temporary sibling folder and swapped into place (``storage``), so a crash, Ctrl-C or
kill never leaves a broken index where a good one was. The manifest records the size and sha256 of
every other file, checked on load.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .config import Settings
from .errors import BadInput, IndexFormat, IndexNotFound, IndexStale
from .meta import SIDECAR
from .storage import file_checksums, make_temp_dir, read_lock, swap_into_place, verify_files
from .types import Article, Chunk, article_from_dict, chunk_from_dict, to_dict
from .zh import Tokenizer, default_tokenizer, fold_width

__all__ = ["FORMAT_VERSION", "Index", "write_index", "load_index", "seed_hashes", "sidecar_hash", "stale_pages", "library_versions"]

# 2: the manifest lists every file with its size and sha256; 3: articles carry their page's paper, date,
# page, region and city (the manifest's "tokenizer" entry, with terms/places/stopwords.txt, came later
# in format 3: an index without it is refused, see _load_index)
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
_UNCHECKED = (MANIFEST, "README.md")


@dataclass(eq=False)
class Index:
    """A loaded index: records plus the FAISS and BM25 search structures, and what is derived from
    them once (its own state: nothing about an index is kept in a module-level cache)."""

    path: Path
    manifest: dict
    settings: Settings
    articles: dict[str, Article]
    chunks: list[Chunk]
    dense: object  # faiss.Index
    bm25: object  # bm25s.BM25
    # one record per article sentence ({"article_id", "start", "end", "places", "years"}) and its
    # passage vector, row i = record i: the answer scoring's semantic and place/year evidence
    sentences: list[dict] = field(default_factory=list)
    sentence_vectors: np.ndarray | None = None
    # what later stages derive from this index once (rag.score's sentence table, the evidence a search
    # scored for its answer); it goes when the index goes
    derived: dict = field(default_factory=dict, repr=False)
    # how this index splits text (BM25 build and query, term coverage, question analysis): its own
    # jieba dictionary with its terms and places, its stopwords and BM25 k1/b, as recorded when built
    tokenizer: Tokenizer = field(default_factory=default_tokenizer, repr=False)

    @cached_property
    def corpus_text(self) -> str:
        """Every article's title and text, width-folded and lower-cased: where a question's words are looked up."""
        return fold_width("\n".join(a.title + "\n" + a.text for a in self.articles.values())).lower()

    @cached_property
    def term_idf(self) -> dict[str, float]:
        """BM25-style IDF of every indexed token (from the BM25 index's document frequencies)."""
        df = np.diff(np.asarray(self.bm25.scores["indptr"]))
        n = max(1, len(self.chunks))
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        return {t: float(idf[i]) for t, i in self.bm25.vocab_dict.items() if i < len(idf)}

    @property
    def model(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def dimension(self) -> int:
        return int(self.manifest["model"]["dimension"])

    def vectors(self) -> np.ndarray:
        """All chunk vectors, row i = chunk i (read back from FAISS)."""
        n = self.dense.ntotal
        return self.dense.reconstruct_n(0, n) if n else np.zeros((0, self.dimension), dtype=np.float32)


def seed_hashes(pages: list[Path]) -> dict[str, str]:
    """sha256 of every page file, by file name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pages}


def sidecar_hash(seeds: str | Path) -> str | None:
    """sha256 of the seeds folder's page metadata (``pages.toml``), None without one; recorded in the
    manifest so that editing the metadata makes the index stale too."""
    path = Path(seeds) / SIDECAR
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an index, recorded in the manifest."""
    from importlib import metadata

    out = {}
    for name in ("rag", "faiss-cpu", "bm25s", "jieba", "sentence-transformers", "torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _faiss_index(vectors: np.ndarray, settings: Settings) -> tuple[object, str]:
    import faiss

    dim = vectors.shape[1]
    if len(vectors) > settings.exact_search_max:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
        kind = "hnsw-flat-ip"
    else:
        index = faiss.IndexFlatIP(dim)
        kind = "flat-ip"
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index, kind


def _bm25(chunks: list[Chunk], tokenizer: Tokenizer):
    import bm25s

    retriever = bm25s.BM25(k1=tokenizer.k1, b=tokenizer.b)
    corpus = [tokenizer.tokenize(c.embed_text) or [""] for c in chunks]
    retriever.index(corpus, show_progress=False)
    return retriever


def _write_jsonl(path: Path, records) -> None:
    with path.open("w", encoding="utf-8") as out:
        for r in records:
            out.write(json.dumps(to_dict(r), ensure_ascii=False) + "\n")


def write_index(out_dir: str | Path, *, articles: list[Article], chunks: list[Chunk], vectors: np.ndarray,
                settings: Settings, model_name: str, seeds: dict[str, str], terms: list[str],
                sentences: list[dict] | None = None, sentence_vectors: np.ndarray | None = None,
                page_meta_sha256: str | None = None, tokenizer: Tokenizer | None = None) -> Path:
    """Write a complete index folder atomically (temporary sibling, then rename).

    ``tokenizer`` is the index's (default: ``terms`` and no places, the default stopwords and k1/b);
    its terms, places and stopwords are written beside the BM25 files and its k1/b into the manifest."""
    import faiss

    out_dir = Path(out_dir)
    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    tokenizer = tokenizer or Tokenizer(terms)
    tmp = make_temp_dir(out_dir)
    try:
        _write_jsonl(tmp / "articles.jsonl", articles)
        _write_jsonl(tmp / "chunks.jsonl", chunks)
        dense, kind = _faiss_index(vectors, settings)
        faiss.write_index(dense, str(tmp / "dense.faiss"))
        _bm25(chunks, tokenizer).save(str(tmp / "bm25"))
        for name, items in (("terms.txt", tokenizer.terms), ("places.txt", tokenizer.places),
                            ("stopwords.txt", tokenizer.stopwords)):
            (tmp / name).write_text("".join(w + "\n" for w in sorted(items)), encoding="utf-8")
        sentences = sentences or []
        if sentence_vectors is None:
            sentence_vectors = np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
        if len(sentences) != len(sentence_vectors):
            raise ValueError(f"{len(sentences)} sentences but {len(sentence_vectors)} sentence vectors")
        with (tmp / "sentences.jsonl").open("w", encoding="utf-8") as out:
            for rec in sentences:
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        np.save(tmp / "sentences.npy", np.ascontiguousarray(sentence_vectors, dtype=np.float16), allow_pickle=False)
        manifest = {
            "format_version": FORMAT_VERSION,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": library_versions(),
            "settings": settings.to_dict(),
            "model": {"name": model_name, "dimension": int(vectors.shape[1]) if vectors.ndim == 2 else 0},
            "dense_index": kind,
            "counts": {"pages": len(seeds), "articles": len(articles), "chunks": len(chunks)},
            "seeds": seeds,
            "page_meta": {"file": SIDECAR, "sha256": page_meta_sha256},
            "sentences": {"count": len(sentences), "files": ["sentences.jsonl", "sentences.npy"]},
            "tokenizer": tokenizer.manifest(),
        }
        # last: every file written above, whatever it is, is listed and checked on load
        manifest["files"] = file_checksums(tmp, skip=_UNCHECKED)
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
        for extra in ("README.md",):  # keep the folder's own note (it is tracked in git)
            if (out_dir / extra).is_file():
                shutil.copy2(out_dir / extra, tmp / extra)
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _read_jsonl(path: Path, make) -> list:
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append(make(json.loads(line)))
                except (ValueError, TypeError, KeyError) as exc:
                    raise IndexFormat(f"{path} line {n} is corrupt ({exc}); rebuild the index with `rag index`") from None
    return out


def load_index(path: str | Path, *, model: str | None = None, verify: bool = False) -> Index:
    """Load an index folder and check it is whole and of this format (and, if given, this model).

    Every file the manifest lists is checked against its recorded size and sha256 (files above
    ``storage.FULL_CHECK_BYTES`` by a head/tail sample, unless ``verify``: then in full).

    Raises:
        IndexNotFound: no folder or no manifest.
        IndexFormat: another format version or model, or missing, changed, corrupt or inconsistent files.
    """
    path = Path(path)
    with read_lock(path):
        return _load_index(path, model=model, verify=verify)


def _load_index(path: Path, *, model: str | None, verify: bool) -> Index:
    import bm25s
    import faiss

    manifest_path = path / MANIFEST
    if not path.is_dir() or not manifest_path.is_file():
        raise IndexNotFound(f"no index at {path} (missing {MANIFEST}); build it with `rag index --index {path}`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        version = manifest["format_version"]
        settings = Settings.from_dict(manifest["settings"])
        built_model = manifest["model"]["name"]
        dim = int(manifest["model"]["dimension"])
        files = dict(manifest["files"]) if version == FORMAT_VERSION else {}
    except (ValueError, KeyError, TypeError, BadInput) as exc:
        raise IndexFormat(f"{manifest_path} is corrupt ({type(exc).__name__}: {exc}); rebuild with `rag index`") from None
    if version != FORMAT_VERSION:
        raise IndexFormat(f"index at {path} has format version {version}, this rag reads version {FORMAT_VERSION}; "
                          f"rebuild it with `rag index`")
    if model is not None and model != built_model:
        raise IndexFormat(f"index at {path} was built with model {built_model!r}, but {model!r} is configured; "
                          f"rebuild it with `rag index --model {model}` or use the model it was built with")
    verify_files(path, files, full=verify)
    try:
        articles = _read_jsonl(path / "articles.jsonl", article_from_dict)
        chunks = _read_jsonl(path / "chunks.jsonl", chunk_from_dict)
        dense = faiss.read_index(str(path / "dense.faiss"))
        bm25 = bm25s.BM25.load(str(path / "bm25"), load_corpus=False)
        if "tokenizer" not in manifest:
            raise IndexFormat(f"index at {path} records no tokenizer (stopwords, BM25 k1/b; built by an older rag); "
                              f"rebuild it with `rag index`")
        tokenizer = _read_tokenizer(path, manifest["tokenizer"])
        if "sentences" not in manifest:
            raise IndexFormat(f"index at {path} has no sentence vectors (built by an older rag); rebuild it with `rag index`")
        sentences = _read_jsonl(path / "sentences.jsonl", dict)
        sentence_vectors = np.load(path / "sentences.npy", allow_pickle=False).astype(np.float32)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise IndexFormat(f"index at {path} is damaged ({first}); rebuild it with `rag index`") from None
    n = len(chunks)
    if dense.ntotal != n or bm25.scores.get("num_docs") != n or dense.d != dim:
        raise IndexFormat(f"index at {path} is inconsistent ({n} chunks, {dense.ntotal} vectors of dimension "
                          f"{dense.d}, {bm25.scores.get('num_docs')} BM25 documents); rebuild it with `rag index`")
    by_id = {a.article_id: a for a in articles}
    if len(sentences) != len(sentence_vectors) or (len(sentences) and sentence_vectors.shape[1] != dim):
        raise IndexFormat(f"index at {path} has {len(sentences)} sentences but {len(sentence_vectors)} sentence "
                          f"vectors; rebuild it with `rag index`")
    if any(c.article_id not in by_id for c in chunks):
        raise IndexFormat(f"index at {path} has chunks of unknown articles; rebuild it with `rag index`")
    return Index(path, manifest, settings, by_id, chunks, dense, bm25, sentences, sentence_vectors, tokenizer=tokenizer)


def _read_tokenizer(path: Path, spec: dict) -> Tokenizer:
    """The tokenizer an index was built with, from its manifest entry and word files."""
    files = spec["files"]
    lists = {key: (path / files[key]).read_text(encoding="utf-8").split() for key in ("terms", "places", "stopwords")}
    tokenizer = Tokenizer(lists["terms"], lists["places"], stopwords=lists["stopwords"], k1=float(spec["k1"]),
                          b=float(spec["b"]))
    if tokenizer.manifest()["stopwords_sha256"] != spec["stopwords_sha256"]:
        raise ValueError(f"{files['stopwords']} does not match the manifest's stopwords_sha256")
    return tokenizer


def stale_pages(index_manifest: dict, pages: list[Path]) -> list[str]:
    """Names of pages added, removed or changed since the index was built (empty: fresh)."""
    built = index_manifest.get("seeds", {})
    now = seed_hashes(pages)
    changed = [n for n in now if built.get(n) != now[n]]
    removed = [n for n in built if n not in now]
    if pages and sidecar_hash(pages[0].parent) != (index_manifest.get("page_meta") or {}).get("sha256"):
        changed.append(SIDECAR)
    return sorted(changed + removed)


def check_fresh(index: Index, pages: list[Path]) -> None:
    """Raise IndexStale when the seed pages differ from those the index was built from."""
    stale = stale_pages(index.manifest, pages)
    if stale:
        raise IndexStale(f"index at {index.path} is stale: {len(stale)} page(s) changed since it was built "
                         f"({', '.join(stale[:3])}{'…' if len(stale) > 3 else ''}); rebuild it with `rag index`")
