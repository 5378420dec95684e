"""The index folder: plain files, checked on load, atomic writes, incremental pages; FAISS and BM25
checked against straightforward references."""
from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import numpy as np
import pytest

from rag.errors import IndexFormat, IndexNotFound, IndexStale
from rag.index import FORMAT_VERSION, check_fresh, load_index
from rag.ingest import list_pages
from rag.pipeline import add_pages, build_index, get_engine, index_status
from rag.zh import tokenize

from .conftest import DATA, SEEDS, run_cli


def test_index_folder_holds_plain_files_with_a_manifest(index_dir):
    names = {p.name for p in index_dir.iterdir()}
    assert {"manifest.json", "articles.jsonl", "chunks.jsonl", "dense.faiss", "bm25", "terms.txt"} <= names
    m = json.loads((index_dir / "manifest.json").read_text(encoding="utf-8"))
    assert m["format_version"] == FORMAT_VERSION
    assert m["model"] == {"name": "bundled:multilingual-e5-small", "dimension": 384, "runtime": "onnx-fp32"}
    assert m["dense_index"] == "flat-ip"
    assert set(m["seeds"]) == {p.name for p in SEEDS.glob("*.txt")}
    assert {"faiss-cpu", "bm25s", "jieba", "sentence-transformers"} <= set(m["versions"])
    chunks = (index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
    assert m["counts"]["chunks"] == len(chunks)
    assert not list(index_dir.parent.glob(".index.tmp-*"))


def test_rows_line_up_and_faiss_matches_brute_force(engine, encoder):
    idx = engine.index
    vectors = idx.vectors()
    assert vectors.shape == (len(idx.chunks), 384)
    # row i is the embedding of chunk i
    again = encoder.encode_passages([idx.chunks[i].embed_text for i in (0, 7, len(idx.chunks) - 1)])
    assert np.allclose(again, vectors[[0, 7, len(idx.chunks) - 1]], atol=1e-4)
    q = encoder.encode_queries(["海西州给人才提供住房吗？"])
    scores, rows = idx.dense.search(q, 10)
    brute = np.argsort(-(vectors @ q[0]))[:10]
    assert list(rows[0]) == list(brute)
    assert np.allclose(scores[0], (vectors @ q[0])[brute], atol=1e-5)


def test_bm25_matches_a_straightforward_reference(engine):
    idx = engine.index
    docs = [tokenize(c.embed_text) for c in idx.chunks]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(t for d in docs for t in set(d))
    k1, b = 1.2, 0.75
    query = "格尔木昆仑经济技术开发区 排名 跃升"
    qtok = [t for t in tokenize(query) if t in idx.bm25.vocab_dict]

    def ref(doc):
        tf = Counter(doc)
        s = 0.0
        for t in qtok:
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            # Lucene's BM25 (bm25s's default): no (k1 + 1) factor in the numerator
            s += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(doc) / avgdl))
        return s

    expected = np.array([ref(d) for d in docs])
    got = idx.bm25.get_scores_from_ids([idx.bm25.vocab_dict[t] for t in qtok])
    assert np.abs(got - expected).max() < 2e-3 * max(1.0, expected.max()), np.abs(got - expected).max()


def test_names_learned_from_the_corpus_stay_whole_and_numbers_searchable(index_dir):
    # no word list ships with the package: the index learns the corpus's own names when it is built
    load_index(index_dir)
    toks = tokenize("格尔木昆仑经济技术开发区在2023年五经普中柴达木英才计划发放146万元")
    for t in ("格尔木", "昆仑", "开发区", "五经普", "柴达木英才", "2023", "146"):
        assert t in toks, (t, toks)
    assert "的" not in tokenize("海西州的人才")
    assert "海西州" in tokenize("海西州的人才")


def test_missing_and_corrupt_indexes_get_specific_errors(index_dir, tmp_path):
    with pytest.raises(IndexNotFound, match="rag index"):
        load_index(tmp_path / "nothing")
    bad = tmp_path / "bad"
    shutil.copytree(index_dir, bad)
    (bad / "chunks.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(IndexFormat, match="damaged"):
        load_index(bad)
    shutil.rmtree(bad)
    shutil.copytree(index_dir, bad)
    (bad / "dense.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexFormat, match="damaged"):
        load_index(bad)


def test_other_model_or_format_is_refused_with_what_to_run(index_dir, tmp_path):
    with pytest.raises(IndexFormat, match="rag index --model"):
        load_index(index_dir, model="BAAI/bge-small-zh-v1.5")
    old = tmp_path / "old"
    shutil.copytree(index_dir, old)
    m = json.loads((old / "manifest.json").read_text(encoding="utf-8"))
    m["format_version"] = 0
    (old / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(IndexFormat, match="format version 0"):
        load_index(old)


def test_an_index_of_the_previous_format_says_rebuild_in_every_front_end(index_dir, tmp_path):
    """Format 2 had no page metadata: the CLI says to rebuild, in one line, with no traceback."""
    old = tmp_path / "v2"
    shutil.copytree(index_dir, old)
    m = json.loads((old / "manifest.json").read_text(encoding="utf-8"))
    m["format_version"] = 2
    (old / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    out = run_cli("ask", "格尔木的开发区在全国排第几？", "--index", str(old))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "format version 2" in out.stderr and "rebuild it with `rag index`" in out.stderr


def test_articles_carry_their_pages_metadata(engine):
    arts = engine.index.articles.values()
    assert {a.region for a in arts if a.source == "003_a3fa46dbc4287a89.txt"} == {"海西州"}
    assert {a.city for a in arts if a.source == "004_03d7d0636abde70e.txt"} == {"格尔木"}
    assert all(a.paper is None and a.date is None for a in arts)  # the seed pages print neither


def test_editing_the_page_metadata_makes_the_index_stale(index_dir, tmp_path):
    seeds = tmp_path / "seeds"
    shutil.copytree(SEEDS, seeds)
    assert index_status(seeds, index_dir) == "fresh"
    with (seeds / "pages.toml").open("a", encoding="utf-8") as f:
        f.write('\n["005_new.txt"]\nregion = "西宁"\n')
    with pytest.raises(IndexStale, match="pages.toml"):
        check_fresh(load_index(index_dir), list_pages(seeds))


def test_stale_index_is_detected(index_dir, tmp_path):
    seeds = tmp_path / "seeds"
    shutil.copytree(SEEDS, seeds)
    idx = load_index(index_dir)
    check_fresh(idx, list_pages(seeds))
    (seeds / "000_083e7fa3461b093d.txt").write_text("本报讯（记者 张三）改动后的页面。\n", encoding="utf-8")
    with pytest.raises(IndexStale, match="000_083e7fa3461b093d.txt"):
        check_fresh(idx, list_pages(seeds))
    assert index_status(seeds, index_dir) == "stale"
    assert index_status(SEEDS, index_dir) == "fresh"
    assert index_status(SEEDS, tmp_path / "none") == "missing"


def test_a_crash_mid_build_leaves_the_old_index_intact(index_dir, tmp_path, monkeypatch):
    target = tmp_path / "index"
    shutil.copytree(index_dir, target)
    before = (target / "manifest.json").read_text(encoding="utf-8")
    import faiss

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(KeyboardInterrupt):
        build_index(SEEDS, target)
    assert (target / "manifest.json").read_text(encoding="utf-8") == before
    load_index(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".index.tmp")]


def test_adding_a_page_reuses_old_vectors(index_dir, tmp_path, encoder):
    target = tmp_path / "index"
    seeds = tmp_path / "seeds"
    shutil.copytree(index_dir, target)
    shutil.copytree(SEEDS, seeds)
    old = load_index(target)
    old_vectors = {c.chunk_id: v for c, v in zip(old.chunks, old.vectors())}
    page = DATA / "pages" / "bom_page.txt"
    summary = add_pages([page], target, seeds=seeds)
    assert summary["new_chunks"] >= 1 and summary["reused_chunks"] == len(old.chunks)
    new = load_index(target)
    for c, v in zip(new.chunks, new.vectors()):
        if c.chunk_id in old_vectors:
            assert np.array_equal(v, old_vectors[c.chunk_id])
    assert (seeds / "bom_page.txt").exists()
    assert index_status(seeds, target) == "fresh"
    hits = get_engine(target).search("12路公交线路延伸到哪里？", k=3)
    assert hits[0].source == "bom_page.txt"


def test_large_indexes_switch_to_hnsw_and_record_it(tmp_path, encoder):
    from rag.config import Settings

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for name in ("bom_page.txt", "gbk_page.txt"):
        shutil.copy(DATA / "pages" / name, seeds / name)
    build_index(seeds, tmp_path / "index", settings=Settings(exact_search_max=1))
    m = json.loads((tmp_path / "index" / "manifest.json").read_text(encoding="utf-8"))
    assert m["dense_index"] == "hnsw-flat-ip" and m["settings"]["exact_search_max"] == 1
    hits = get_engine(tmp_path / "index").search("垃圾分类投放点新建多少个？", k=2)
    assert hits and "120" in hits[0].chunk.text


def test_adding_a_bad_page_changes_nothing(index_dir, tmp_path):
    from .conftest import run_cli

    target = tmp_path / "index"
    shutil.copytree(index_dir, target)
    before = (target / "manifest.json").read_text(encoding="utf-8")
    proc = run_cli("index", "--add", str(DATA / "pages" / "binary.txt"), "--index", str(target),
                   "--seeds", str(tmp_path / "seeds"))
    assert proc.returncode == 1 and "binary.txt: looks like a binary file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (target / "manifest.json").read_text(encoding="utf-8") == before
    assert not (tmp_path / "seeds").exists()
