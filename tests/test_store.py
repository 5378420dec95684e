"""The two stores, faiss and milvus (on Milvus Lite), rank the same chunks and apply the same filters;
an index in either answers through the CLI; bad Milvus addresses are one-line messages."""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from rag.index import load_index, write_index  # noqa: E402
from rag.meta import Filters  # noqa: E402
from rag.retrieve import fused_ranking, search  # noqa: E402
from rag.store import StoreSpec  # noqa: E402

from .conftest import SEEDS, run_cli  # noqa: E402

# page metadata the seed pages do not carry, so that the paper and date filters have something to pick
PAGE_META = {
    "000_083e7fa3461b093d.txt": {"paper": "格尔木日报", "date": "2023-12-19", "city": "格尔木"},
    "001_c451c93762dc6e8f.txt": {"paper": "鄂尔多斯日报", "date": "2024-01-05"},
    "002_7e83b4c38362ee15.txt": {"paper": "青海日报", "date": "2024-03-02", "city": "西宁"},
    "003_a3fa46dbc4287a89.txt": {"paper": "青海日报", "date": "2024-05-20"},
}


def _copy(index, path, store: StoreSpec):
    """Write the session index's records (with PAGE_META) into a new index folder with this store."""
    arts = [replace(a, **PAGE_META.get(a.source, {})) for a in index.articles.values()]
    write_index(path, articles=arts, chunks=index.chunks, vectors=index.vectors(), settings=index.settings,
                model_name=index.model, seeds=index.manifest["seeds"], terms=(index.path / "terms.txt").read_text("utf-8").split(), sentences=index.sentences,
                sentence_vectors=index.sentence_vectors, page_meta_sha256=index.manifest["page_meta"]["sha256"],
                store=store)
    return path


@pytest.fixture(scope="module")
def both(index_dir, tmp_path_factory):
    """(faiss engine, milvus engine) over the same records, vectors and page metadata."""
    from rag.pipeline import get_engine

    base = load_index(index_dir)
    root = tmp_path_factory.mktemp("stores")
    faiss_dir = _copy(base, root / "faiss", StoreSpec())
    milvus_dir = _copy(base, root / "milvus", StoreSpec("milvus"))
    return get_engine(faiss_dir), get_engine(milvus_dir)


@pytest.fixture(scope="module")
def questions(qa_items, both):
    qs = [i.question for i in qa_items]
    return list(zip(qs, both[0].query_vectors(qs)))


def test_manifest_records_the_store(both):
    faiss_engine, milvus_engine = both
    assert faiss_engine.index.manifest["store"]["kind"] == "faiss"
    entry = milvus_engine.index.manifest["store"]
    assert entry["kind"] == "milvus" and entry["server"] is False and entry["collection"] == "chunks"
    path = milvus_engine.index.path
    assert (path / entry["uri"]).is_dir()  # the Lite folder is inside the index, swapped in with it
    assert not (path / "dense.faiss").exists() and not (path / "bm25").exists()
    assert type(milvus_engine.index.store).__name__ == "MilvusStore"


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_rankings_agree_with_faiss(both, questions, mode):
    """Same top-1 on every test question, nearly the same top 5 (orders, not scores: Lite's BM25 scores
    are negative)."""
    faiss_engine, milvus_engine = both
    overlap, differ = [], []
    for q, vec in questions:
        a = fused_ranking(faiss_engine.index, q, settings=faiss_engine.settings.retrieval, query_vector=vec, retriever=mode, n=50)
        b = fused_ranking(milvus_engine.index, q, settings=milvus_engine.settings.retrieval, query_vector=vec, retriever=mode,
                          n=50)
        assert bool(a) == bool(b), q
        if a and a[0][0] != b[0][0]:
            differ.append(q)
        overlap.append(len({r for r, _ in a[:5]} & {r for r, _ in b[:5]}) / max(1, min(5, len(a))))
    assert not differ, f"{mode}: another top-1 for {differ}"
    assert sum(overlap) / len(overlap) >= 0.95


def test_search_and_answers_agree(both, qa_items):
    faiss_engine, milvus_engine = both
    for item in qa_items[:12]:
        a, b = faiss_engine.ask(item.question), milvus_engine.ask(item.question)
        assert a.answer == b.answer, item.question
        assert [(c.article_id, c.start, c.end) for c in a.citations] == [(c.article_id, c.start, c.end) for c in b.citations]


@pytest.mark.parametrize("filters", [
    {"paper": "青海日报"},
    {"region": "格尔木"},
    {"region": "西宁"},  # a page's city
    {"since": "2024-01-01"},
    {"until": "2024-01-05"},
    {"paper": "青海日报", "since": "2024-04-01", "until": "2024-12-31"},
])
def test_filters_give_exactly_the_matching_articles(both, filters):
    faiss_engine, milvus_engine = both
    index = milvus_engine.index
    f = Filters.from_dict(filters)
    want = {i for i, c in enumerate(index.chunks) if f.admits(index.articles[c.article_id])}
    assert 0 < len(want) < len(index.chunks)
    allowed = milvus_engine.allowed_rows(f)
    vec = milvus_engine.query_vectors(["格尔木的开发区在全国排第几？"])[0]
    for mode in ("dense", "bm25", "hybrid"):
        got = fused_ranking(index, "格尔木的开发区在全国排第几？", settings=milvus_engine.settings.retrieval, query_vector=vec,
                            retriever=mode, n=len(index.chunks), allowed=allowed, filters=f)
        rows = {r for r, _ in got}
        assert rows <= want, (mode, filters)
        if mode == "dense":  # every allowed chunk has a cosine: the whole filtered set comes back
            assert rows == want
        ref = fused_ranking(faiss_engine.index, "格尔木的开发区在全国排第几？", settings=faiss_engine.settings.retrieval,
                            query_vector=vec, retriever=mode, n=len(index.chunks), allowed=allowed, filters=f)
        assert [r for r, _ in got[:3]] == [r for r, _ in ref[:3]], (mode, filters)
    hits = milvus_engine.search("开发区", k=10, filters=filters)
    assert hits and all(f.admits(index.articles[h.chunk.article_id]) for h in hits)


def test_the_milvus_expression_is_the_filter(both):
    store = both[1].index.store
    from rag.store import Where

    expr = store.expression(Where(filters=Filters(paper="青海日报", region="西宁", since="2024-01-01")))
    assert expr == 'paper == "青海日报" and (city in ["西宁"]) and date >= 20240101'


def test_cli_answers_from_a_moved_milvus_index(both, tmp_path):
    """`rag ask --index X` in another process (a copy: this process holds the original Lite folder, and
    Lite lets one process open it), the same answer as the faiss store's."""
    faiss_engine, milvus_engine = both
    copy = tmp_path / "moved"
    shutil.copytree(milvus_engine.index.path, copy, ignore=shutil.ignore_patterns("LOCK"))
    q = "格尔木的开发区在全国排第几？"
    run = run_cli("ask", "--index", str(copy), "--json", q)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["answer"] == faiss_engine.ask(q).answer
    assert "128" in got["answer"]


def test_a_lite_index_open_in_another_process_is_one_line(both):
    run = run_cli("search", "--index", str(both[1].index.path), "开发区")
    assert run.returncode == 1
    assert "Milvus Lite lets one process open it" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:9", "cannot reach the Milvus server at http://127.0.0.1:9"),
    ("/tmp/elsewhere/milvus.db", "must be inside the index folder"),
    ("INDEX/milvus.txt", "must end in .db"),
])
def test_bad_milvus_uri_is_one_line_before_any_work(tmp_path, uri, message):
    index = tmp_path / "idx"
    run = run_cli("index", "--seeds", str(SEEDS), "--index", str(index), "--store", "milvus",
                  "--milvus-uri", uri.replace("INDEX", str(index)))
    assert run.returncode == 1, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "embedding" not in run.stderr  # refused before the pages are read and embedded
    assert not (index / "manifest.json").exists()


def test_missing_pymilvus_is_one_line(monkeypatch, tmp_path):
    from rag.errors import BadInput
    from rag.store import check_store

    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(BadInput, match="needs pymilvus and milvus-lite, which are not installed"):
        check_store(StoreSpec("milvus"), tmp_path / "idx")


def test_rebuild_keeps_the_store_and_faiss_flag_switches_back(both, tmp_path, encoder):
    """An index rewritten without naming a store (``rag index --add``, a rebuild) stays in Milvus."""
    base = both[1].index
    path = _copy(base, tmp_path / "m", StoreSpec("milvus"))
    from rag.pipeline import remove_pages

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    remove_pages(["001_c451c93762dc6e8f.txt"], path, seeds=seeds)
    again = load_index(path)
    assert again.manifest["store"]["kind"] == "milvus"
    assert len(again.chunks) < len(base.chunks)
    hits = search(again, "鄂尔多斯高新区", k=5, query_vector=encoder.encode_queries(["鄂尔多斯高新区"])[0])
    assert hits and all(h.source != "001_c451c93762dc6e8f.txt" for h in hits)
    _copy(again, path, StoreSpec())
    assert load_index(path).manifest["store"]["kind"] == "faiss"


def test_a_large_index_reranks_from_the_rows_it_needs_with_the_same_answers(both, monkeypatch):
    """Above WHOLE_READ_MAX chunks the rerank reads only its candidates' vectors, from either store, and
    answers as when it read the whole matrix."""
    from rag import score

    questions = ["格尔木的开发区在全国排第几？", "电子劳动合同有什么好处？", "海西州给人才提供住房吗？"]
    for engine in both:
        whole = [engine.ask(q) for q in questions]
        rows = [5, 0, len(engine.index.chunks) - 1, 5]
        assert np.allclose(engine.index.chunk_vectors(rows), engine.index.vectors()[rows], atol=1e-6)
        monkeypatch.setattr(score, "WHOLE_READ_MAX", 10)
        monkeypatch.setattr(type(engine.index.store), "vectors", lambda self: pytest.fail("read the whole matrix"))
        engine.index.derived.clear()
        try:
            assert [(a.answer, a.refused) for a in (engine.ask(q) for q in questions)] == \
                [(a.answer, a.refused) for a in whole]
        finally:
            monkeypatch.undo()
            engine.index.derived.clear()


@pytest.mark.parametrize("seed", range(4))
def test_top_rows_ranks_as_a_full_stable_sort(seed):
    """The BM25 ranking's top rows (without sorting every row) are a full stable sort's: best first,
    ties in row order, however many rows tie at the cut."""
    from rag.store import top_rows

    rng = np.random.default_rng(seed)
    for _ in range(300):
        size, n = int(rng.integers(1, 200)), int(rng.integers(0, 220))
        scores = (rng.integers(0, 4, size) * rng.choice([0.0, 0.5, 1.0], size)).astype(np.float32)
        if seed % 2:
            scores = rng.random(size).astype(np.float32)
        assert top_rows(scores, n).tolist() == np.argsort(-scores, kind="stable")[:n].tolist()
