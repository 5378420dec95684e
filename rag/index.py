"""Build, save and load the index folder: manifest, articles, chunks, sentences, terms and the store
(``rag.store``: FAISS + bm25s files, or a Milvus collection) that holds the chunk vectors and BM25 text.

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
from .embed import RUNTIMES
from .errors import BadInput, IndexFormat, IndexNotFound, IndexStale
from .meta import SIDECAR
from .store import Store, StoreSpec, build_store, open_store
from .storage import file_checksums, make_temp_dir, read_lock, swap_into_place, verify_files
from .records import ChunkTable, SentenceRecords, VectorRows
from .types import Article, Chunk, article_from_dict, to_dict
from .zh import Tokenizer, default_tokenizer, fold_width

__all__ = ["FORMAT_VERSION", "Index", "write_index", "load_index", "seed_hashes", "sidecar_hash", "stale_pages", "library_versions"]

# 2: the manifest lists every file with its size and sha256; 3: articles carry their page's paper, date,
# page, region and city (the manifest's "tokenizer" entry, with terms/places/stopwords.txt, came later
# in format 3: an index without it is refused, see _load_index)
FORMAT_VERSION = 6  # 4: sentence vectors embed the sentence under its article's title; 5: sentence places by the
# gazetteer; 6: the word table (words.txt, words.npy: the vector of every word of the pages)
# encoder variants whose vectors this rag reproduces: the ONNX fp32 graph gives the bundled model the same
# vectors as sentence-transformers (tests/test_embed.py), so either may query an index the other built;
# an int8 index only by the int8 graph (rag.embed.query_runtime)
_RUNTIMES = RUNTIMES
MANIFEST = "manifest.json"
WORDS_IN_MEMORY = 100_000  # a word table up to this many rows is held in memory (77 MB), a larger one read as needed
_UNCHECKED = (MANIFEST, "README.md")


@dataclass(eq=False)
class Index:
    """A loaded index: records plus the store that searches the chunks (``rag.store``), and what is
    derived from them once (its own state: nothing about an index is kept in a module-level cache)."""

    path: Path
    manifest: dict
    settings: Settings
    articles: dict[str, Article]
    # row i = vector i = BM25 document i; held as columns (``rag.records``), ``chunks[i]`` is the Chunk
    chunks: ChunkTable
    store: Store
    # one record per article sentence ({"article_id", "start", "end", "places", "years"}) and its
    # passage vector, row i = record i: the answer scoring's semantic and place/year evidence (columns too)
    sentences: SentenceRecords | None = None
    sentence_vectors: VectorRows | np.ndarray | None = None
    # the pages' words (their BM25 tokens of two or more characters with a Han one) and each one's
    # query vector, row i = word i: how near a question's word comes to a sentence's (rag.score)
    words: tuple[str, ...] = ()
    word_vectors: VectorRows | np.ndarray | None = None
    # what later stages derive from this index once (rag.score's sentence table, the evidence a search
    # scored for its answer); it goes when the index goes
    derived: dict = field(default_factory=dict, repr=False)
    # how this index splits text (BM25 build and query, term coverage, question analysis): its own
    # jieba dictionary with its terms and places, its stopwords and BM25 k1/b, as recorded when built
    tokenizer: Tokenizer = field(default_factory=default_tokenizer, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.chunks, ChunkTable):  # records given as lists (a caller's own index)
            self.chunks = ChunkTable(self.articles, self.chunks)
        if not isinstance(self.sentences, SentenceRecords):
            self.sentences = SentenceRecords(self.articles, self.sentences or ())

    @cached_property
    def word_rows(self) -> dict[str, int]:
        """Each word of the word table by its row."""
        return {w: i for i, w in enumerate(self.words)}

    @cached_property
    def corpus_text(self) -> "CorpusText":
        """Every article's title and text, width-folded and lower-cased: where a question's words are looked up."""
        return CorpusText(_folded_corpus(self.articles.values()))

    @cached_property
    def term_idf(self) -> dict[str, float]:
        """BM25-style IDF of every indexed token (from the BM25 index's document frequencies)."""
        n = max(1, len(self.chunks))
        return {t: float(np.log(1 + (n - df + 0.5) / (df + 0.5))) for t, df in self.store.doc_freqs().items()}

    @property
    def model(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def runtime(self) -> str:
        """The encoder variant that made the vectors (indexes from before it was recorded: torch's)."""
        return self.manifest["model"].get("runtime", "sentence-transformers")

    @property
    def dimension(self) -> int:
        return int(self.manifest["model"]["dimension"])

    @property
    def dense(self):
        """The faiss store's FAISS index."""
        return self.store.index

    @property
    def bm25(self):
        """The faiss store's bm25s index."""
        return self.store.bm25_index

    def vectors(self) -> np.ndarray:
        """All chunk vectors, row i = chunk i (read back from the store)."""
        return self.store.vectors() if self.chunks else np.zeros((0, self.dimension), dtype=np.float32)

    def chunk_vectors(self, rows: list[int]) -> np.ndarray:
        """The vectors of these chunk rows (read back from the store; a large index is not read whole)."""
        return self.store.rows(rows) if self.chunks else np.zeros((0, self.dimension), dtype=np.float32)

    def store_spec(self) -> StoreSpec:
        """The store this index was built into (to rebuild it into the same one)."""
        return spec_of(self.path, self.manifest)


class CorpusText:
    """The folded corpus, asked whether it holds a word (``word in corpus``) as a plain string would be,
    but without scanning it for most absent words: a word with a pair of adjacent characters the corpus
    never has is not in it (at a million chunks a scan of ~100 M characters took ~1 s per word). Answers
    are remembered."""

    _BLOCK = 2_000_000  # characters per block when collecting the pairs (bounded temporary memory)

    def __init__(self, text: str):
        self.text = text
        self._pairs: np.ndarray | None = None
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.text)

    def __eq__(self, other) -> bool:
        return self.text == (other.text if isinstance(other, CorpusText) else other)

    __hash__ = None

    @staticmethod
    def _codes(text: str) -> np.ndarray:
        chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        return (chars[:-1] << 21) | chars[1:]

    def _has_pairs(self, word: str) -> bool:
        if len(word) < 2:
            return True
        if self._pairs is None:
            step = self._BLOCK
            blocks = [np.unique(self._codes(self.text[i:i + step + 1])) for i in range(0, max(1, len(self.text)), step)]
            self._pairs = np.unique(np.concatenate(blocks)) if blocks else np.zeros(0, dtype=np.int64)
        codes = self._codes(word)
        at = np.searchsorted(self._pairs, codes)
        return bool(np.all((at < len(self._pairs)) & (self._pairs[np.minimum(at, len(self._pairs) - 1)] == codes)))

    def __contains__(self, word: str) -> bool:
        found = self._memo.get(word)
        if found is None:
            found = self._has_pairs(word) and word in self.text
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[word] = found
        return found


def _folded_corpus(articles) -> str:
    """``fold_width("\\n".join(title + "\\n" + text of every article)).lower()``, made a block of articles
    at a time (folding and lower-casing map one character at a time, and "\\n" ends a word for
    ``lower()``): the whole corpus's temporaries, and a piece per article that stayed in the heap once
    freed (+0.2 GB RSS at a million chunks), are not made."""
    blocks, texts, size = [], [], 0
    for a in articles:
        texts += (a.title, a.text)
        size += len(a.title) + len(a.text) + 2
        if size >= _CORPUS_BLOCK:
            blocks.append(fold_width("\n".join(texts)).lower())
            texts, size = [], 0
    if texts:
        blocks.append(fold_width("\n".join(texts)).lower())
    return "\n".join(blocks)


_CORPUS_BLOCK = 20_000_000  # characters: a block's strings are allocated and freed on their own (above malloc's heap sizes)


def spec_of(path: Path, manifest: dict | None) -> StoreSpec:
    """The StoreSpec of a manifest's store (faiss when it has none); a Lite path is inside ``path``."""
    entry = (manifest or {}).get("store") or {}
    if entry.get("kind") != "milvus":
        return StoreSpec()
    import os

    uri = entry.get("uri") if entry.get("server") else str(Path(path) / entry.get("uri", "milvus.db"))
    return StoreSpec("milvus", uri, os.environ.get("RAG_MILVUS_TOKEN"))


def read_manifest(path: Path) -> dict | None:
    """The manifest of an index folder, None if there is none or it cannot be read."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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


def _write_jsonl(path: Path, records) -> None:
    with path.open("w", encoding="utf-8") as out:
        for r in records:
            out.write(json.dumps(to_dict(r), ensure_ascii=False) + "\n")


def write_index(out_dir: str | Path, *, articles: list[Article], chunks: list[Chunk], vectors: np.ndarray,
                settings: Settings, model_name: str, seeds: dict[str, str], terms: list[str],
                sentences: list[dict] | None = None, sentence_vectors: np.ndarray | None = None,
                page_meta_sha256: str | None = None, model_runtime: str | None = None,
                store: StoreSpec | None = None, tokenizer: Tokenizer | None = None,
                tokens: list[list[str]] | None = None, words: list[str] | None = None,
                word_vectors: np.ndarray | None = None) -> Path:
    """Write a complete index folder atomically (temporary sibling, then rename). ``model_runtime``
    (rag.embed.encoder_runtime) records which encoder variant made the vectors.

    ``tokenizer`` is the index's (default: ``terms`` and no places, the default stopwords and k1/b);
    its terms, places and stopwords are written beside the store's files and its k1/b into the manifest.

    ``store`` says where the chunk vectors and BM25 text go (default: the store the index at
    ``out_dir`` already uses, else faiss); the manifest records it. ``tokens`` are the chunks' BM25
    tokens if the caller has them (``tokenizer.tokenize`` of each chunk's embed text).

    ``words`` and ``word_vectors`` are the word table (``rag.pipeline.word_table``); without them the
    index has none, and a question's words count only where a sentence has them verbatim.
    """
    out_dir = Path(out_dir)
    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    tokenizer = tokenizer or Tokenizer(terms)
    old_manifest = read_manifest(out_dir)
    store = store or spec_of(out_dir, old_manifest)
    tmp = make_temp_dir(out_dir)
    try:
        _write_jsonl(tmp / "articles.jsonl", articles)
        _write_jsonl(tmp / "chunks.jsonl", chunks)
        by_id = {a.article_id: a for a in articles}
        store_entry = build_store(tmp, out_dir, store, chunks=chunks,
                                  tokens=tokens if tokens is not None else
                                  [tokenizer.tokenize(c.embed_text) for c in chunks], vectors=vectors,
                                  articles=by_id, exact_search_max=settings.retrieval.exact_search_max,
                                  k1=tokenizer.k1, b=tokenizer.b)
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
        words = list(words or [])
        if word_vectors is None:
            word_vectors = np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float16)
        if len(words) != len(word_vectors) or any("\n" in w for w in words):
            raise ValueError(f"{len(words)} words but {len(word_vectors)} word vectors, or a word with a line break")
        (tmp / "words.txt").write_text("".join(w + "\n" for w in words), encoding="utf-8")
        np.save(tmp / "words.npy", np.ascontiguousarray(word_vectors, dtype=np.float16), allow_pickle=False)
        manifest = {
            "format_version": FORMAT_VERSION,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": library_versions(),
            "settings": settings.to_dict(),
            "model": {"name": model_name, "dimension": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
                      **({"runtime": model_runtime} if model_runtime else {})},
            "dense_index": store_entry.get("dense_index"),
            "dense_params": store_entry.get("dense_params"),
            "store": store_entry,
            "counts": {"pages": len(seeds), "articles": len(articles), "chunks": len(chunks)},
            "seeds": seeds,
            "page_meta": {"file": SIDECAR, "sha256": page_meta_sha256},
            "sentences": {"count": len(sentences), "files": ["sentences.jsonl", "sentences.npy"]},
            "words": {"count": len(words), "files": ["words.txt", "words.npy"]},
            "tokenizer": tokenizer.manifest(),
        }
        # last: every file written above, whatever it is, is listed and checked on load
        files = file_checksums(tmp, skip=_UNCHECKED)
        if store_entry["kind"] == "milvus" and not store_entry["server"]:  # Milvus Lite writes as it opens
            files = {k: v for k, v in files.items() if not k.startswith(store_entry["uri"] + "/")}
        manifest["files"] = files
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
        for extra in ("README.md",):  # keep the folder's own note (it is tracked in git)
            if (out_dir / extra).is_file():
                shutil.copy2(out_dir / extra, tmp / extra)
        if ((old_manifest or {}).get("store") or {}).get("kind") == "milvus":
            from .milvus import release_index

            release_index(out_dir, old_manifest["store"])  # this process's Lite server of the old folder
        swap_into_place(tmp, out_dir)
    except BaseException:
        if "store_entry" in locals() and store_entry.get("server"):
            from .milvus import drop_replaced

            drop_replaced(store_entry, {}, store.token)  # the new collection no index uses
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if ((old_manifest or {}).get("store") or {}).get("kind") == "milvus":
        from .milvus import drop_replaced

        drop_replaced((old_manifest or {}).get("store"), store_entry, store.token)
    return out_dir


def _iter_jsonl(path: Path, make):
    """The records of a JSON lines file, one at a time (a million chunks are not held as dicts at once)."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rec = make(json.loads(line))
                except (ValueError, TypeError, KeyError) as exc:
                    raise IndexFormat(f"{path} line {n} is corrupt ({exc}); rebuild the index with `rag index`") from None
                yield rec


def _read_jsonl(path: Path, make) -> list:
    return list(_iter_jsonl(path, make))


def _fields(required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """A check that a JSON record is an object with these fields (what rebuilding a dataclass checked)."""
    need, allowed = set(required), set(required) | set(optional)

    def check(d: dict) -> dict:
        if not isinstance(d, dict) or not need <= set(d) <= allowed:
            raise TypeError(f"fields {sorted(d) if isinstance(d, dict) else type(d).__name__}, expected {sorted(allowed)}")
        return d
    return check


_CHUNK_FIELDS = ("chunk_id", "article_id", "ordinal", "start", "end", "text", "embed_text")
_SENTENCE_FIELDS = ("article_id", "start", "end")


def load_index(path: str | Path, *, model: str | None = None, verify: bool = False,
               token: str | None = None) -> Index:
    """Load an index folder and check it is whole and of this format (and, if given, this model).

    Every file the manifest lists is checked against its recorded size and sha256 (files above
    ``storage.FULL_CHECK_BYTES`` by a head/tail sample, unless ``verify``: then in full). A milvus
    store is connected to with ``token`` (default: $RAG_MILVUS_TOKEN).

    Raises:
        IndexNotFound: no folder or no manifest.
        IndexFormat: another format version or model, or missing, changed, corrupt or inconsistent files.
    """
    path = Path(path)
    with read_lock(path):
        return _load_index(path, model=model, verify=verify, token=token)


def _load_index(path: Path, *, model: str | None, verify: bool, token: str | None = None) -> Index:
    manifest_path = path / MANIFEST
    if not path.is_dir() or not manifest_path.is_file():
        raise IndexNotFound(f"no index at {path} (missing {MANIFEST}); build it with `rag index --index {path}`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        version = manifest["format_version"]
        settings = Settings.from_dict(manifest["settings"])
        built_model = manifest["model"]["name"]
        dim = int(manifest["model"]["dimension"])
        runtime = manifest["model"].get("runtime", "sentence-transformers")
        files = dict(manifest["files"]) if version == FORMAT_VERSION else {}
    except (ValueError, KeyError, TypeError, BadInput) as exc:
        raise IndexFormat(f"{manifest_path} is corrupt ({type(exc).__name__}: {exc}); rebuild with `rag index`") from None
    if version != FORMAT_VERSION:
        raise IndexFormat(f"index at {path} has format version {version}, this rag reads version {FORMAT_VERSION}; "
                          f"rebuild it with `rag index`")
    if model is not None and model != built_model:
        raise IndexFormat(f"index at {path} was built with model {built_model!r}, but {model!r} is configured; "
                          f"rebuild it with `rag index --model {model}` or use the model it was built with")
    if runtime not in _RUNTIMES:
        raise IndexFormat(f"index at {path} was built by encoder runtime {runtime!r}, which this rag does not have "
                          f"(it has {', '.join(_RUNTIMES)}); rebuild it with `rag index`")
    verify_files(path, files, full=verify)
    try:
        articles = _read_jsonl(path / "articles.jsonl", article_from_dict)
        by_id = {a.article_id: a for a in articles}
        try:
            chunks = ChunkTable(by_id, _iter_jsonl(path / "chunks.jsonl", _fields(_CHUNK_FIELDS)))
        except KeyError:
            raise IndexFormat(f"index at {path} has chunks of unknown articles; rebuild it with `rag index`") from None
        except (TypeError, OverflowError) as exc:  # a field of the wrong type (an offset that is not a number)
            raise IndexFormat(f"{path / 'chunks.jsonl'} is corrupt ({exc}); rebuild the index with `rag index`") from None
        if "tokenizer" not in manifest:
            raise IndexFormat(f"index at {path} records no tokenizer (stopwords, BM25 k1/b; built by an older rag); "
                              f"rebuild it with `rag index`")
        tokenizer = _read_tokenizer(path, manifest["tokenizer"])
        if "sentences" not in manifest:
            raise IndexFormat(f"index at {path} has no sentence vectors (built by an older rag); rebuild it with `rag index`")
        try:
            sentences = SentenceRecords(by_id, _iter_jsonl(path / "sentences.jsonl",
                                                           _fields(_SENTENCE_FIELDS, ("places", "years"))))
        except (TypeError, OverflowError) as exc:
            raise IndexFormat(f"{path / 'sentences.jsonl'} is corrupt ({exc}); rebuild the index with `rag index`") from None
        # float16 as stored, read from the file: a question reads the rows of its candidates only (two
        # million sentences would be 3 GB as float32 in memory; a memory map kept what it had read)
        sentence_vectors = VectorRows(path / "sentences.npy")
        words = tuple((path / "words.txt").read_text(encoding="utf-8").splitlines())
        word_vectors = VectorRows(path / "words.npy")
        # small tables are read whole: a question compares its words with a few hundred of them
        word_vectors = np.asarray(word_vectors) if len(word_vectors) <= WORDS_IN_MEMORY else word_vectors
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise IndexFormat(f"index at {path} is damaged ({first}); rebuild it with `rag index`") from None
    # first: its chunk count and vector dimension are the first consistency checks
    store = open_store(path, manifest.get("store") or {"kind": "faiss"}, dimension=dim, count=len(chunks),
                       token=token, articles=by_id)
    if sentence_vectors.ndim != 2 or len(sentences) != len(sentence_vectors) or \
            (len(sentences) and sentence_vectors.shape[1] != dim):
        store.close()
        raise IndexFormat(f"index at {path} has {len(sentences)} sentences but {len(sentence_vectors)} sentence "
                          f"vectors; rebuild it with `rag index`")
    if word_vectors.ndim != 2 or len(words) != len(word_vectors) or (len(words) and word_vectors.shape[1] != dim):
        store.close()
        raise IndexFormat(f"index at {path} has {len(words)} words but {len(word_vectors)} word vectors; "
                          f"rebuild it with `rag index`")
    return Index(path, manifest, settings, by_id, chunks, store, sentences, sentence_vectors, words=words,
                 word_vectors=word_vectors, tokenizer=tokenizer)


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
