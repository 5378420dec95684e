"""The only place that chains the stages: pages -> articles -> chunks -> index -> hits -> answers."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dataclasses import replace
from typing import Callable

from .answer import compose_answer
from .checkpoint import Staging, embed_pages
from .chunk import chunk_articles
from .generate import explain_fallback
from .config import INDEX_SETTINGS, Settings
from .errors import BadInput, IndexFormat, IndexNotFound
from .index import Index, check_fresh, load_index, seed_hashes, sidecar_hash, stale_pages, write_index
from .ingest import MAX_PAGE_CHUNKS, list_pages, page_name_problem, read_page
from .meta import SIDECAR, Filters, PageMeta, page_meta, read_sidecar, set_sidecar_entry
from .query import Question, in_context, resolve_followup
from .retrieve import check_query
from .score import ScoringParams, names_the_subject
from .retrieve import search as _search
from .segment import segment_page
from .storage import writer_lock
from .store import StoreSpec, check_store
from .types import Answer, AnswerMode, Article, Hit, Retriever, to_dict
from .zh import Tokenizer, extract_terms, is_han, local_place_names

__all__ = ["describe_collection", "load_articles", "build_index", "add_pages", "remove_pages", "index_status", "verify_index", "Engine", "get_engine", "warm_up", "explain_fallback"]

log = logging.getLogger("rag")


# above this many pages, pages are parsed in a process pool (starting one costs about a second)
PARALLEL_PAGES = 8


def _parse_page(path: Path) -> tuple[str, str, list[Article]]:
    page = read_page(path)
    return page.name, page.text, segment_page(page.text, page.name)


def _parsed_pages(paths: list[Path]):
    """(name, text, articles) of each page, in input order; many pages are parsed in a process pool."""
    if len(paths) <= PARALLEL_PAGES:
        yield from map(_parse_page, paths)
        return
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    workers = max(1, min(os.cpu_count() or 1, 8))
    pool = ProcessPoolExecutor(workers)
    try:
        results = pool.map(_parse_page, paths, chunksize=max(1, min(32, len(paths) // (4 * workers))))
        yield from tqdm(results, total=len(paths), desc="reading pages", unit="page", file=sys.stderr,
                        mininterval=1.0, disable=not (sys.stderr.isatty() or len(paths) >= 200))
    finally:  # on a bad page, the pages still queued are not parsed for nothing
        pool.shutdown(wait=True, cancel_futures=True)


def load_articles(seeds: str | Path, *, pages: list[Path] | None = None) -> list[Article]:
    """Read every page of a seeds folder (or the given pages) and rebuild its articles.

    More than ``PARALLEL_PAGES`` pages are parsed in a process pool; the articles come in page
    order either way, and a bad page stops the read with its one-line message.

    >>> arts = load_articles("seeds")  # doctest: +SKIP
    >>> arts[0].title  # doctest: +SKIP
    '以考促改以改促治答好党风廉政建设“年度考卷”'
    """
    paths = pages if pages is not None else list_pages(seeds)
    sidecar = read_sidecar(seeds)
    articles: list[Article] = []
    for name, text, found in _parsed_pages(list(paths)):
        if not found:
            raise BadInput(f"{name}: no article or caption could be read from this page")
        meta = page_meta(name, text, sidecar).fields()
        articles.extend(replace(a, **meta) for a in found)
    return articles


def _terms(articles: list[Article]) -> list[str]:
    terms: set[str] = set()
    for a in articles:
        terms |= extract_terms(a.title + "\n" + a.text)
    return sorted(terms)


def _tokenizer(articles: list[Article]) -> Tokenizer:
    """The new index's tokenizer: its quoted terms and the places its pages name, taught to its own jieba."""
    return Tokenizer(_terms(articles), local_place_names(a.title + "\n" + a.text for a in articles))


def _sentences(articles: list[Article], encoder, old=None, *, chunks=(), staging: Staging | None = None,
               tokenizer: Tokenizer | None = None):
    """The sentence table of the articles (spans, places, years), its passage vectors, and the vectors
    of ``chunks``; the sentence vectors of an old index's unchanged articles are reused, the rest are
    embedded page by page (checkpointed in ``staging``).

    Returns:
        (sentence records, sentence vectors (float16), chunk vectors (float32), pages reused from staging)
    """
    import numpy as np

    from .score import describe_sentences, sentence_embed_text

    facts = [to_dict(f) for f in describe_sentences(articles, tokenizer)]
    by_id = {a.article_id: a for a in articles}
    # a sentence is embedded under its article's title, which says what "it" and "the measures" are about
    texts = [sentence_embed_text(by_id[f["article_id"]].title, by_id[f["article_id"]].text[f["start"]:f["end"]])
             for f in facts]
    known = {}
    if old is not None and old.sentence_vectors is not None:
        for rec, vec in zip(old.sentences, old.sentence_vectors):
            art = old.articles.get(rec["article_id"])
            if art is not None:
                known[(rec["article_id"], sentence_embed_text(art.title, art.text[rec["start"]:rec["end"]]))] = vec
    dim = encoder.dimension
    sentence_vectors = np.zeros((len(facts), dim), dtype=np.float16)  # as stored: half the memory
    chunk_vectors = np.zeros((len(chunks), dim), dtype=np.float32)
    pages: dict[str, tuple[list[int], list[int]]] = {}  # page -> (its chunk rows, its sentence rows to embed)
    for r, c in enumerate(chunks):
        pages.setdefault(by_id[c.article_id].source, ([], []))[0].append(r)
    for i, f in enumerate(facts):
        vec = known.get((f["article_id"], texts[i]))
        if vec is not None:
            sentence_vectors[i] = vec
        else:
            pages.setdefault(by_id[f["article_id"]].source, ([], []))[1].append(i)
    groups = list(pages.values())

    def keep(n: int, vecs) -> None:
        rows, sents = groups[n]
        chunk_vectors[rows] = vecs[:len(rows)]
        sentence_vectors[sents] = vecs[len(rows):]

    reused = embed_pages([[chunks[r].embed_text for r in rows] + [texts[i] for i in sents] for rows, sents in groups],
                         encoder, staging, keep)
    return facts, sentence_vectors, chunk_vectors, reused


def word_table(chunks, tokenizer: Tokenizer, encoder, old=None):
    """The chunks' BM25 tokens (the store is built from them too) and the index's word table: every
    token of two or more characters with a Han one, sorted, and its query vector (float16); an old
    index's vectors are reused for the words it had.

    Returns:
        (tokens, words, vectors)
    """
    import numpy as np

    tokens = [tokenizer.tokenize(c.embed_text) for c in chunks]
    words = sorted({t for toks in tokens for t in toks if len(t) >= 2 and any(is_han(c) for c in t)})
    vectors = np.zeros((len(words), encoder.dimension), dtype=np.float16)
    known = old.word_rows if old is not None and old.word_vectors is not None else {}
    have = [(i, known[w]) for i, w in enumerate(words) if w in known]
    if have:
        vectors[[i for i, _ in have]] = old.word_vectors[[r for _, r in have]]
    new = [i for i, w in enumerate(words) if w not in known]
    if new:
        log.info("embedding %d words", len(new))
        vectors[new] = encoder.encode_queries([words[i] for i in new], batch_size=128)
    return tokens, words, vectors


def _check_page_limits(articles: list[Article], chunks) -> None:
    """Refuse a page that would make more than MAX_PAGE_CHUNKS chunks (before embedding them)."""
    source = {a.article_id: a.source for a in articles}
    per_page: dict[str, int] = {}
    for c in chunks:
        per_page[source[c.article_id]] = per_page.get(source[c.article_id], 0) + 1
    for name, n in per_page.items():
        if n > MAX_PAGE_CHUNKS:
            raise BadInput(f"{name}: makes {n:,} chunks; a page may make at most {MAX_PAGE_CHUNKS:,} "
                           f"(split it into several pages)")


def build_index(seeds: str | Path = "seeds", index_dir: str | Path = "index", *,
                settings: Settings | None = None, if_stale: bool = False, wait: bool = True,
                store: StoreSpec | None = None) -> dict:
    """Build the index of every page in ``seeds`` into ``index_dir`` (atomically); return a summary.

    Holds the index's writer lock throughout: another writer is waited for (``wait``) or refused.
    With ``if_stale``, an index that is already fresh is left alone (summary ``status`` "fresh").
    ``store`` (faiss or milvus, ``rag.store``) defaults to the store the index already uses, else faiss.

    >>> build_index("seeds", "index")  # doctest: +SKIP
    {'status': 'built', 'pages': 5, 'articles': 29, 'chunks': 168, ...}
    """
    settings = settings or Settings()
    with writer_lock(index_dir, wait=wait):
        if if_stale:
            status = index_status(seeds, index_dir, settings)
            if store is not None and status == "fresh" and _store_changed(index_dir, store):
                status = "in another store"
            if status == "fresh":
                return {"status": "fresh", "index": str(index_dir)}
            log.info("index at %s is %s; building it", index_dir, status)
        return {"status": "built", **_build_index(seeds, index_dir, settings=settings, store=store)}


def _store_changed(index_dir: str | Path, store: StoreSpec) -> bool:
    from .index import read_manifest, spec_of

    now = spec_of(Path(index_dir), read_manifest(Path(index_dir)))
    if store.kind != now.kind:
        return True
    return store.kind == "milvus" and bool(store.uri) and \
        (store.uri if "://" in store.uri else str(Path(store.uri).resolve())) != \
        (now.uri if "://" in (now.uri or "") else str(Path(now.uri).resolve()))


def _build_index(seeds: str | Path, index_dir: str | Path, *, settings: Settings | None = None,
                 store: StoreSpec | None = None) -> dict:
    from .embed import get_encoder

    settings = settings or Settings()
    if store is not None:
        check_store(store, Path(index_dir))
    t0 = time.perf_counter()
    pages = list_pages(seeds)
    articles = load_articles(seeds, pages=pages)
    chunks = chunk_articles(articles, settings.chunk)
    _check_page_limits(articles, chunks)
    encoder = get_encoder(settings.model)
    log.info("embedding %d chunks of %d articles with %s", len(chunks), len(articles), settings.model.name)
    staging = Staging(index_dir, f"{settings.model.name}|{encoder.runtime}")
    tokenizer = _tokenizer(articles)
    sentences, sentence_vectors, vectors, reused = _sentences(articles, encoder, chunks=chunks, staging=staging,
                                                              tokenizer=tokenizer)
    tokens, words, word_vectors = word_table(chunks, tokenizer, encoder)
    write_index(index_dir, articles=articles, chunks=chunks, vectors=vectors, settings=settings, tokenizer=tokenizer,
                model_name=settings.model.name, seeds=seed_hashes(pages), terms=tokenizer.terms,
                sentences=sentences, sentence_vectors=sentence_vectors, page_meta_sha256=sidecar_hash(seeds),
                model_runtime=encoder.runtime, store=store, tokens=tokens, words=words, word_vectors=word_vectors)
    staging.clear()
    _engines.clear()
    return {"pages": len(pages), "articles": len(articles), "chunks": len(chunks), "reused_pages": reused,
            "seconds": round(time.perf_counter() - t0, 1), "index": str(index_dir)}


def add_pages(files: list[str | Path], index_dir: str | Path = "index", *, seeds: str | Path = "seeds",
              settings: Settings | None = None, wait: bool = True, meta: dict[str, PageMeta] | None = None) -> dict:
    """Add (or replace) pages in an existing index, embedding only their chunks.

    A folder among ``files`` stands for every page in it (``*.txt``, not hidden). Pages are embedded
    in batches and checkpointed beside the index, so an add that is killed resumes where it stopped
    when it is run again (``reused_pages`` in the summary).
    Each file is also copied into ``seeds`` (if it is not there already) so that the seeds folder
    and the index keep describing the same pages; so a file must be one the seeds scan reads
    (``*.txt``, not hidden). The index's writer lock is held from reading the old index to writing
    the new one, so concurrent adds all land: another writer is waited for (``wait``) or refused.
    ``meta`` (page name -> PageMeta) is written into the seeds' ``pages.toml`` under the same lock,
    and put back as it was if the add fails.
    """
    files = [p for f in files for p in (_pages_in(Path(f)) if Path(f).is_dir() else [f])]
    for f in files:
        why = page_name_problem(Path(f).name)
        if why:
            raise BadInput(f"{Path(f).name}: is {why}; pages are *.txt files whose name does not start with "
                           f"'.' (the seeds scan reads only those), so rename it")
    names = [Path(f).name for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInput(f"two of the files have the same name ({', '.join(twice)}); a page is known by its file name")
    with writer_lock(index_dir, wait=wait):
        sidecar = Path(seeds) / SIDECAR
        before = sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None
        try:
            for name, page_meta_ in (meta or {}).items():
                set_sidecar_entry(seeds, name, page_meta_)
            return _add_pages(files, index_dir, seeds=seeds, settings=settings)
        except BaseException:
            if meta:
                _restore(sidecar, before)
            raise


def _pages_in(folder: Path) -> list[Path]:
    try:
        return list_pages(folder)
    except BadInput:
        raise BadInput(f"folder {folder} holds no page to add (pages are *.txt files whose name does not start "
                       f"with '.')") from None


def _restore(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
    else:
        part = path.with_name(f".{path.name}.part-{os.getpid()}")
        part.write_text(text, encoding="utf-8")
        os.replace(part, path)


def remove_pages(names: list[str], index_dir: str | Path = "index", *, seeds: str | Path = "seeds",
                 wait: bool = True) -> dict:
    """Remove pages (by file name) from the index, the seeds folder and its ``pages.toml``.

    Under the index's writer lock; the index is written atomically, and if that fails the page file
    and its metadata are put back.
    """
    with writer_lock(index_dir, wait=wait):
        return _remove_pages(names, Path(index_dir), Path(seeds))


def _remove_pages(names: list[str], index_dir: Path, seeds: Path) -> dict:
    from .embed import index_encoder

    index = load_index(index_dir)
    known = {a.source for a in index.articles.values()}
    missing = sorted(set(names) - known)
    if missing:
        raise BadInput(f"not in the index: {', '.join(missing)}")
    if not known - set(names):
        raise BadInput("cannot remove every page: an index needs at least one page")
    articles = [a for a in index.articles.values() if a.source not in names]
    kept_ids = {a.article_id for a in articles}
    rows = index.chunks.rows_of_articles(kept_ids).tolist()
    sidecar = seeds / SIDECAR
    before = sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None
    moved = []
    try:
        for name in names:  # kept aside (hidden) until the new index is in place
            if (seeds / name).is_file():
                aside = seeds / f".{name}.removed-{os.getpid()}"
                os.replace(seeds / name, aside)
                moved.append((aside, seeds / name))
            set_sidecar_entry(seeds, name, None)
        tokenizer = _tokenizer(articles)
        sentences, sentence_vectors, _, _ = _sentences(articles, index_encoder(index), old=index,
                                                       tokenizer=tokenizer)
        hashes = {k: v for k, v in index.manifest.get("seeds", {}).items() if k not in names}
        chunks = [index.chunks[i] for i in rows]
        tokens, words, word_vectors = word_table(chunks, tokenizer, index_encoder(index), old=index)
        write_index(index_dir, articles=articles, chunks=chunks,
                    vectors=index.vectors()[rows], settings=index.settings, model_name=index.model, seeds=hashes,
                    terms=tokenizer.terms, tokenizer=tokenizer, sentences=sentences, sentence_vectors=sentence_vectors,
                    page_meta_sha256=sidecar_hash(seeds), model_runtime=index.runtime, tokens=tokens, words=words,
                    word_vectors=word_vectors)
    except BaseException:
        for aside, target in moved:
            os.replace(aside, target)
        _restore(sidecar, before)
        raise
    for aside, _ in moved:
        aside.unlink(missing_ok=True)
    _engines.clear()
    return {"removed_pages": sorted(names), "articles": len(articles), "chunks": len(rows)}


def _add_pages(files: list[str | Path], index_dir: str | Path, *, seeds: str | Path,
               settings: Settings | None) -> dict:
    from .embed import index_encoder

    index = load_index(index_dir)
    settings = settings or index.settings
    if settings.model.name != index.model:
        raise IndexFormat(f"index at {index_dir} was built with model {index.model!r}, not {settings.model.name!r}; "
                          f"rebuild it with `rag index` to change models")
    settings = index.settings
    paths = [Path(f) for f in files]
    new_articles = load_articles(seeds, pages=paths)  # validates every file before anything changes
    names = {p.name for p in paths}
    sidecar = read_sidecar(seeds)  # today's metadata for the kept pages too (a masthead date stays)
    kept_articles = [replace(a, **{k: v for k, v in sidecar[a.source].fields().items() if v or k != "date"})
                     if a.source in sidecar else a for a in index.articles.values() if a.source not in names]
    kept_ids = {a.article_id for a in kept_articles}
    rows = index.chunks.rows_of_articles(kept_ids).tolist()
    old_vectors = index.vectors()[rows] if rows else index.vectors()[:0]
    new_chunks = chunk_articles(new_articles, settings.chunk)
    _check_page_limits(new_articles, new_chunks)
    encoder = index_encoder(index)  # new vectors beside the old: the variant that made those
    articles = kept_articles + new_articles
    staging = Staging(index_dir, f"{index.model}|{encoder.runtime}")
    tokenizer = _tokenizer(articles)
    sentences, sentence_vectors, new_vectors, reused = _sentences(articles, encoder, old=index, chunks=new_chunks,
                                                                  tokenizer=tokenizer, staging=staging)
    import numpy as np

    seeds_dir = Path(seeds)
    seeds_dir.mkdir(parents=True, exist_ok=True)
    for p in paths:
        target = seeds_dir / p.name
        if not target.exists() or target.resolve() != p.resolve():
            part = seeds_dir / f".{p.name}.part-{os.getpid()}"  # hidden: the scan never reads half a copy
            shutil.copyfile(p, part)
            os.replace(part, target)
    hashes = dict(index.manifest.get("seeds", {}))
    hashes.update(seed_hashes([seeds_dir / p.name for p in paths]))
    chunks = [index.chunks[i] for i in rows] + new_chunks
    tokens, words, word_vectors = word_table(chunks, tokenizer, encoder, old=index)
    write_index(index_dir, articles=articles, chunks=chunks, vectors=np.vstack([old_vectors, new_vectors]),
                settings=settings, model_name=index.model, seeds=hashes, terms=tokenizer.terms, tokenizer=tokenizer,
                sentences=sentences, sentence_vectors=sentence_vectors, page_meta_sha256=sidecar_hash(seeds_dir),
                model_runtime=encoder.runtime, tokens=tokens, words=words, word_vectors=word_vectors)
    staging.clear()
    _engines.clear()
    return {"added_pages": sorted(names), "new_chunks": len(new_chunks), "reused_chunks": len(rows),
            "reused_pages": reused,
            "articles": len(articles), "chunks": len(chunks)}


def index_status(seeds: str | Path = "seeds", index_dir: str | Path = "index",
                 settings: Settings | None = None) -> str:
    """'missing', 'stale' (pages, model or format changed, or files damaged) or 'fresh'."""
    try:
        index = load_index(index_dir, model=(settings or Settings()).model.name)
    except IndexNotFound:
        return "missing"
    except IndexFormat as exc:
        log.info("%s", exc)
        return "stale"
    return "stale" if stale_pages(index.manifest, list_pages(seeds)) else "fresh"


def verify_index(index_dir: str | Path = "index") -> dict:
    """Check every file of an index in full against the sha256 its manifest records (and load it).

    Raises:
        IndexNotFound, IndexFormat: what is missing or damaged, with what to run.
    """
    index = load_index(index_dir, verify=True)
    return {"index": str(index_dir), "files": len(index.manifest.get("files", {})),
            "articles": len(index.articles), "chunks": len(index.chunks)}


@dataclass
class Engine:
    """A loaded index and its encoder: what the CLI, the UI and the API ask questions of."""

    index: Index
    settings: Settings

    @property
    def encoder(self):
        from .embed import get_encoder, query_runtime

        enc = get_encoder(self.settings.model, query_runtime(self.settings.model, self.index.runtime))
        if enc.dimension != self.index.dimension:
            raise IndexFormat(f"index at {self.index.path} holds {self.index.dimension}-dimensional vectors but the "
                              f"model {self.settings.model.name!r} makes {enc.dimension}; rebuild with `rag index`")
        return enc

    def query_vectors(self, queries: list[str], terms: tuple[str, ...] = ()) -> "np.ndarray":
        """The encoded queries (a few hundred recent ones are kept: an evaluation or a user asks again).
        ``terms`` (a question's words) are encoded in the same run where the index's word table lacks
        them, and kept for the answer scoring (``rag.score.term_vectors``)."""
        import numpy as np

        from .score import remember_term_vectors, terms_to_encode

        cache = self.__dict__.setdefault("_query_cache", {})
        todo = list(dict.fromkeys(q for q in queries if q not in cache))
        words = [t for t in terms_to_encode(self.index, terms) if t not in todo] if todo else []
        if todo:
            vectors = self.encoder.encode_queries(todo + words)
            if words:
                remember_term_vectors(self.index, words, vectors[len(todo):])
            for q, v in zip(todo, vectors):
                while len(cache) >= 1024:
                    cache.pop(next(iter(cache)))
                cache[q] = v
        return np.stack([cache[q] for q in queries]) if queries else np.zeros((0, self.index.dimension), np.float32)

    def question(self, text: object, *, history: list[str] | None = None,
                 filters: Filters | dict | None = None) -> Question:
        """Check a question once and make the record every later stage reads: its text, the standalone
        question a follow-up stands for (resolved against ``history``, oldest first), its analysis and
        its filters.

        Raises:
            BadInput: an empty, over-long or wordless question, or a bad filter.
        """
        text = check_query(text, self.settings.answer)
        resolved = resolve_followup(text, [h for h in (history or []) if isinstance(h, str)], self.index.tokenizer)
        if filters is not None and not isinstance(filters, Filters):
            filters = Filters.from_dict(filters)
        return Question.of(text, resolved=check_query(resolved, self.settings.answer), filters=filters,
                           tokenizer=self.index.tokenizer)

    def search(self, query: str | Question, *, k: int | None = None, retriever: str | None = None,
               scoring: ScoringParams | None = None, query_vector=None,
               filters: Filters | dict | None = None) -> list[Hit]:
        """Hybrid (or BM25 / dense) search of the index, reranked with ``scoring`` (default: the fitted one).

        ``filters`` (paper, region, since, until) restrict the hits to the articles inside them, exactly
        (a ``Question`` carries its own).

        Raises:
            BadInput: a bad query or filter, or filters that no article of the index is inside (said in Chinese).
        """
        question = query if isinstance(query, Question) else self.question(query, filters=filters)
        mode = Retriever.parse(retriever or self.settings.retrieval.retriever, "retriever")
        allowed = self.allowed_rows(question.filters)
        vector = query_vector
        if vector is None and (mode is not Retriever.BM25 or self.settings.retrieval.rerank):
            vector = self.query_vectors([question.resolved], terms=question.info.terms)[0]
        return _search(self.index, question, k=self.settings.retrieval.top_k if k is None else k, settings=self.settings.retrieval,
                       query_vector=vector, retriever=mode, scoring=scoring, allowed=allowed,
                       filters=question.filters)

    def allowed_rows(self, filters: Filters | dict | None) -> "np.ndarray | None":
        """The chunk rows of the articles inside ``filters`` (None: no filter)."""
        import numpy as np

        if filters is not None and not isinstance(filters, Filters):
            filters = Filters.from_dict(filters)
        if not filters:
            return None
        ids = {aid for aid, a in self.index.articles.items() if filters.admits(a)}
        if not ids:
            raise BadInput(f"没有符合筛选条件（{filters.describe()}）的文章。{describe_collection(self.index)} "
                           f"(no article matches the filters)")
        return self.index.chunks.rows_of_articles(ids)

    def ask(self, question: str, *, history: list[str] | None = None, k: int | None = None,
            retriever: str | None = None, mode: str | None = None,
            on_delta: Callable[[str], None] | None = None, on_status: Callable[[dict], None] | None = None,
            cancel: threading.Event | None = None, scoring: ScoringParams | None = None,
            filters: Filters | dict | None = None) -> Answer:
        """Answer a question from the index, with verbatim citations, or refuse.

        ``history`` holds the earlier questions of the conversation, oldest first; a follow-up
        ("那西宁呢？") is resolved against them before retrieval. ``filters`` (paper, region, since,
        until) restrict the sources, as in ``search``. ``mode`` "llm" has the local model
        phrase the answer (checked against the sources; ``on_delta`` receives its text as it streams,
        ``on_status`` the model's queue state, and setting ``cancel`` stops it).

        >>> get_engine("index").ask("格尔木的开发区在全国排第几？").answer  # doctest: +SKIP
        '格尔木昆仑经济技术开发区在全国230家国家级经济技术开发区中位列128位。[1]'
        """
        mode = AnswerMode.parse(mode or self.settings.answer.mode, "answer mode")
        t0 = time.perf_counter()
        q = self.question(question, history=history, filters=filters)
        spent = {"retrieve_ms": 0.0, "answer_ms": 0.0}

        def extractive(q: Question):
            t1 = time.perf_counter()
            vector = self.query_vectors([q.resolved], terms=q.info.terms)[0]
            hits = self.search(q, k=k, retriever=retriever, scoring=scoring, query_vector=vector)
            t2 = time.perf_counter()
            answer = compose_answer(self.index, q, hits, self.settings.answer, query_vector=vector, scoring=scoring)
            spent["retrieve_ms"] += (t2 - t1) * 1000
            spent["answer_ms"] += (time.perf_counter() - t2) * 1000
            return hits, answer, vector

        hits, answer, vector = extractive(q)
        if history:
            # a question that leans on the conversation without saying so ("登记啥时候开始？" after a
            # 五经普 question): the previous topic is tried too, and its answer kept if it is a full one
            # and the alone reading is refused, or scores lower (on pages where 登记 is also a firm's
            # change of name, the alone reading answers from that article)
            topic = in_context(q.text, [h for h in history if isinstance(h, str)], self.index.tokenizer)
            if topic and len(topic) <= self.settings.answer.max_question_chars:
                q2 = Question.of(q.text, resolved=topic, filters=q.filters, tokenizer=self.index.tokenizer)
                hits2, answer2, vector2 = extractive(q2)
                # the topic's words must not carry the answer alone: it names what the question itself
                # asks about ("差错率多少？" is not answered by the topic's "选聘6845名普查员")
                if not (answer2.refused or answer2.partial) and names_the_subject(
                        q.info, "".join(c.excerpt for c in answer2.citations)) and (
                        answer.refused or answer.partial
                        or self._support(q2, hits2, vector2, scoring) > self._support(q, hits, vector, scoring)):
                    q, hits, answer = q2, hits2, answer2
        timings = {name: round(ms, 1) for name, ms in spent.items()}
        if mode is AnswerMode.LLM:
            from .generate import generate_answer

            answer = generate_answer(self.index, q, hits, self.settings, answer, on_delta=on_delta,
                                     on_status=on_status, cancel=cancel)
            timings.update(answer.timings_ms)
        timings["total_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        extra = {"resolved_question": q.resolved} if q.resolved != q.text else {}
        return replace(self.with_page_fields(answer), timings_ms=timings, **extra)

    def _support(self, question: Question, hits: list[Hit], vector, scoring: ScoringParams | None) -> float:
        """How well the hits answer the question: the probability of its best fitting sentence."""
        from .score import evidence_of_hits, judge, load_scoring

        params = scoring or load_scoring()
        verdict = judge(evidence_of_hits(self.index, question.info, hits, vector, params), params)
        return verdict.probability if verdict.chosen else 0.0

    def with_page_fields(self, answer: Answer) -> Answer:
        """The answer with each citation and related article carrying its page's paper, date, page, region."""
        arts = self.index.articles
        cites = tuple(replace(c, **arts[c.article_id].page_fields()) if c.article_id in arts else c
                      for c in answer.citations)
        related = tuple({**r, **arts[r["article_id"]].page_fields()} if r.get("article_id") in arts else r
                        for r in answer.related)
        return replace(answer, citations=cites, related=related)


def describe_collection(index: Index) -> str:
    """What the index covers, in Chinese: its papers, regions and date range (what filters can pick)."""
    arts = list(index.articles.values())
    papers = sorted({a.paper for a in arts if a.paper})
    regions = sorted({a.region for a in arts if a.region})
    dates = sorted({a.date for a in arts if a.date})
    pages = len({a.source for a in arts})
    out = [f"资料库共 {pages} 个版面、{len(arts)} 篇文章"]
    out.append("报纸：" + ("、".join(f"《{p}》" for p in papers) if papers else "版面未注明"))
    out.append("地区：" + ("、".join(regions) if regions else "未注明"))
    out.append("日期：" + (f"{dates[0]} 至 {dates[-1]}" if dates else "版面未注明"))
    return "；".join(out) + "。"


_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(index_dir: str | Path = "index", *, seeds: str | Path | None = None,
               settings: Settings | None = None, model: str | None = None, **overrides) -> Engine:
    """Load an index (once per process) and pair it with its encoder.

    What shaped the index (model, chunking) comes from its manifest; the query-time settings come
    from ``settings`` (default: today's defaults) and ``overrides`` (retriever, top_k, answer_mode…).
    With ``model`` given, an index built with another model is refused; with ``seeds`` given, a
    stale index is refused, each with a message saying what to run.
    """
    base = settings or Settings()
    key = (str(Path(index_dir).resolve()), model, json.dumps(base.to_dict(), sort_keys=True, default=str),
           tuple(sorted(overrides.items())))
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            index = load_index(index_dir, model=model)
            merged = base
            for section, name in INDEX_SETTINGS:  # what shaped the index is the manifest's
                value = getattr(getattr(index.settings, section), name)
                if (section, name) == ("model", "name"):
                    value = index.model  # the model the manifest says built the vectors
                merged = dataclasses.replace(merged, **{section: dataclasses.replace(getattr(merged, section), **{name: value})})
            merged = merged.replace(**overrides)
            engine = Engine(index, merged)
            _engines[key] = engine
    if seeds is not None:
        check_fresh(engine.index, list_pages(seeds))
    return engine


def warm_up(index_dir: str | Path, seeds: str | Path | None, settings: Settings | None = None) -> Engine:
    """Load the index and its model before the first visitor of a server; warn if pages changed since.

    Raises RagError when there is no usable index (the server then says so to each visitor).
    """
    engine = get_engine(index_dir, settings=settings)
    engine.encoder  # load the model now, not on the first question
    if seeds is not None:
        stale = stale_pages(engine.index.manifest, list_pages(seeds))
        if stale:
            log.warning("the index is stale (%s changed); run `rag index`", ", ".join(stale[:3]))
    return engine
