"""Ingest at scale: pages parsed in a process pool, embedding checkpointed per page so that a killed
``rag index --add DIR`` resumes without embedding its finished pages again, and the FAISS index kind
chosen by size (exact under filters whatever the kind)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from rag.errors import BadInput
from rag.ingest import read_page
from rag.index import load_index

from .conftest import DATA, ROOT, SEEDS, build_two_page_index

SMALL_PAGES = sorted(p.with_name(p.name.replace(".gold.json", ".txt")) for p in (DATA / "pages").glob("*.gold.json"))


def write_variants(folder, copies: int = 2) -> list:
    """Copies of the small test pages with their digits changed (so each copy is a page of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(copies):
        shift = str.maketrans("0123456789", "0123456789"[k + 1:] + "0123456789"[:k + 1])
        for p in SMALL_PAGES:
            target = folder / f"v{k}_{p.name}"
            target.write_text(read_page(p).text.translate(shift), encoding="utf-8")
            out.append(target)
    return out


def test_many_pages_are_parsed_in_a_pool_into_the_same_articles_in_page_order(tmp_path, monkeypatch):
    from rag import pipeline

    pages = write_variants(tmp_path / "pages")
    assert len(pages) > pipeline.PARALLEL_PAGES
    pooled = pipeline.load_articles(tmp_path / "pages", pages=pages)
    monkeypatch.setattr(pipeline, "PARALLEL_PAGES", 10_000)
    serial = pipeline.load_articles(tmp_path / "pages", pages=pages)
    assert [asdict(a) for a in pooled] == [asdict(a) for a in serial]
    assert [a.source for a in pooled] == sorted((a.source for a in pooled), key=[p.name for p in pages].index)


def test_a_bad_page_among_many_fails_with_its_own_message(tmp_path):
    from rag.pipeline import load_articles

    pages = write_variants(tmp_path / "pages")
    shutil.copy(DATA / "pages" / "binary.txt", tmp_path / "pages" / "m_binary.txt")
    pages.insert(20, tmp_path / "pages" / "m_binary.txt")
    with pytest.raises(BadInput, match=r"^m_binary.txt: looks like a binary file"):
        load_articles(tmp_path / "pages", pages=pages)


def test_adding_a_folder_without_pages_says_so(tmp_path):
    from rag.pipeline import add_pages

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(BadInput, match=r"^folder .*empty holds no page to add"):
        add_pages([tmp_path / "empty"], tmp_path / "index", seeds=tmp_path / "seeds")
    assert not (tmp_path / "index").exists()


def _rag(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rag", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), timeout=900)


def test_a_killed_add_of_a_folder_resumes_without_embedding_its_finished_pages_again(index_dir, tmp_path):
    from rag.pipeline import add_pages

    pages = write_variants(tmp_path / "new", copies=1)
    runs = {}
    for name in ("killed", "clean"):
        shutil.copytree(index_dir, tmp_path / name / "index")
        shutil.copytree(SEEDS, tmp_path / name / "seeds")
        runs[name] = (tmp_path / name / "index", tmp_path / name / "seeds")
    index, seeds = runs["killed"]
    staging = index.parent / ".index.staging"
    before = (index / "manifest.json").read_text(encoding="utf-8")

    proc = _rag("index", "--add", str(tmp_path / "new"), "--index", str(index), "--seeds", str(seeds),
                env={"RAG_FAULT_KILL_AT": "embedded-3"})
    assert proc.returncode == -9, proc.stderr
    assert len(list(staging.glob("*.npy"))) == 3  # three pages checkpointed when it died
    assert (index / "manifest.json").read_text(encoding="utf-8") == before  # the old index is untouched
    assert len(load_index(index).chunks) == len(load_index(index_dir).chunks)

    proc = _rag("index", "--add", str(tmp_path / "new"), "--index", str(index), "--seeds", str(seeds))
    assert proc.returncode == 0, proc.stderr
    assert "resumed: 3 page(s) embedded by an interrupted run were reused" in proc.stderr
    assert f"added {len(pages)} pages" in proc.stderr
    assert not staging.exists()

    add_pages(pages, runs["clean"][0], seeds=runs["clean"][1])
    got, want = load_index(index), load_index(runs["clean"][0])
    assert [asdict(c) for c in got.chunks] == [asdict(c) for c in want.chunks]
    assert np.allclose(got.vectors(), want.vectors(), atol=1e-4)
    assert np.allclose(got.sentence_vectors, want.sentence_vectors, atol=2e-3)
    assert {p.name for p in pages} <= set(json.loads((index / "manifest.json").read_text("utf-8"))["seeds"])


def test_the_index_kind_follows_the_size_and_a_filtered_search_stays_exact(tmp_path):
    import faiss

    from rag.store import HNSW_EF_SEARCH, IVF_NPROBE, FaissStore, Where, _faiss_index

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 4000)] + 0.3 * rng.standard_normal((4000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    small, kind, params = _faiss_index(vectors[:500], 1000)
    assert kind == "flat-ip" and params["chunks"] == 500
    hnsw, kind, params = _faiss_index(vectors, 1000)
    assert kind == "hnsw-flat-ip" and params == {"chunks": 4000, "exact_search_max": 1000, "M": 32,
                                                  "efConstruction": 80, "efSearch": HNSW_EF_SEARCH}
    ivf, kind, params = _faiss_index(vectors, 1000, hnsw_max=3000)
    nlist = 4000 // 39  # fewer than 4 * sqrt(4000) lists: k-means wants >= 39 vectors a list
    assert kind == "ivf-fp16-ip" and params == {"chunks": 4000, "exact_search_max": 1000, "nlist": nlist,
                                                 "nprobe": min(IVF_NPROBE, nlist), "train": 4000}
    faiss.write_index(ivf, str(tmp_path / "ivf.faiss"))  # served from its file, as rag opens it
    ivf = faiss.read_index(str(tmp_path / "ivf.faiss"))
    assert faiss.extract_index_ivf(ivf).nprobe == min(IVF_NPROBE, nlist)
    stored = FaissStore(ivf, None).vectors()  # read back for add/remove and the rerank: float16-rounded
    assert stored.dtype == np.float32 and np.abs(stored - vectors).max() < 1e-3

    allowed = np.sort(rng.choice(4000, 60, replace=False))  # a narrow filter: 1.5% of the rows
    for dense, held in ((hnsw, vectors), (ivf, stored)):  # exact over the vectors the index holds
        store = FaissStore(dense, None)
        for q in vectors[rng.choice(4000, 30, replace=False)]:
            got = store.dense(q, 10, Where(rows=allowed))
            scores = held[allowed] @ q
            want = allowed[np.argsort(-scores, kind="stable")[:10]]
            assert [r for r, _ in got] == list(want)
            assert np.allclose([s for _, s in got], np.sort(vectors[allowed] @ q)[::-1][:10], atol=2e-3)


def test_an_ivf_index_probing_few_lists_still_filters_exactly(monkeypatch):
    """With nprobe far below nlist the unfiltered search is approximate, but a filter visits every list."""
    from rag import store as store_mod
    from rag.store import FaissStore, Where, _faiss_index

    monkeypatch.setattr(store_mod, "IVF_NPROBE", 2)
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 4000)] + 0.3 * rng.standard_normal((4000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ivf, kind, params = _faiss_index(vectors, 1000, hnsw_max=3000)
    assert kind == "ivf-fp16-ip" and params["nprobe"] == 2
    store = FaissStore(ivf, None)
    held = store.vectors()
    allowed = np.sort(rng.choice(4000, 60, replace=False))
    missed = 0
    for q in vectors[rng.choice(4000, 30, replace=False)]:
        exact = np.argsort(-(vectors @ q), kind="stable")[:10]
        missed += len(set(exact) - {r for r, _ in store.dense(q, 10, Where())})
        scores = held[allowed] @ q
        assert [r for r, _ in store.dense(q, 10, Where(rows=allowed))] == \
            list(allowed[np.argsort(-scores, kind="stable")[:10]])
    assert missed > 0  # the unfiltered search did probe only 2 of the 102 lists


def test_an_index_above_the_hnsw_size_is_ivf_float16_and_answers(tmp_path, encoder, monkeypatch):
    """Lowered thresholds: a real build records the IVF kind, searches and answers from it, and an add rebuilds it."""
    from rag import store as store_mod
    from rag.pipeline import add_pages, get_engine

    monkeypatch.setattr(store_mod, "HNSW_MAX", 1)
    seeds, m = build_two_page_index(tmp_path, exact_search_max=1)
    assert m["dense_index"] == "ivf-fp16-ip" and m["dense_params"]["nlist"] >= 1
    hits = get_engine(tmp_path / "index").search("垃圾分类投放点新建多少个？", k=2)
    assert hits and "120" in hits[0].chunk.text
    assert "120" in get_engine(tmp_path / "index").ask("垃圾分类投放点新建多少个？").answer
    summary = add_pages([DATA / "pages" / "zhangye_short_news.txt"], tmp_path / "index", seeds=seeds)
    m2 = json.loads((tmp_path / "index" / "manifest.json").read_text(encoding="utf-8"))
    assert m2["dense_index"] == "ivf-fp16-ip"
    assert m2["dense_params"]["chunks"] == summary["chunks"] > m["dense_params"]["chunks"]
    hits = get_engine(tmp_path / "index").search("垃圾分类投放点新建多少个？", k=2)
    assert hits and "120" in hits[0].chunk.text  # the old pages' vectors, read back from the IVF index, still found
