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
from rag.zh import STOPWORDS, Tokenizer, default_tokenizer

from .conftest import DATA, SEEDS, build_two_page_index, run_cli


def test_index_folder_holds_plain_files_with_a_manifest(index_dir):
    names = {p.name for p in index_dir.iterdir()}
    assert {"manifest.json", "articles.jsonl", "chunks.jsonl", "dense.faiss", "bm25", "terms.txt", "places.txt",
            "stopwords.txt"} <= names
    m = json.loads((index_dir / "manifest.json").read_text(encoding="utf-8"))
    assert m["format_version"] == FORMAT_VERSION
    from rag.config import ModelSettings
    from rag.embed import encoder_runtime

    runtime = encoder_runtime(ModelSettings())  # int8 or fp32, by this CPU (or RAG_ENCODER)
    assert runtime in ("onnx-int8", "onnx-fp32")
    assert m["model"] == {"name": "bundled:multilingual-e5-small", "dimension": 384, "runtime": runtime}
    assert m["dense_index"] == "flat-ip"
    assert set(m["seeds"]) == {p.name for p in SEEDS.glob("*.txt")}
    assert {"faiss-cpu", "bm25s", "jieba", "sentence-transformers"} <= set(m["versions"])
    chunks = (index_dir / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
    assert m["counts"]["chunks"] == len(chunks)
    assert not list(index_dir.parent.glob(".index.tmp-*"))
    assert (m["tokenizer"]["k1"], m["tokenizer"]["b"]) == (1.2, 0.75)
    assert set((index_dir / "stopwords.txt").read_text(encoding="utf-8").split()) == STOPWORDS


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


def _check_bm25_against_reference(idx, query):
    """BM25 scores of the index equal Lucene's formula over the index's own tokens and its manifest's k1/b."""
    docs = [idx.tokenizer.tokenize(c.embed_text) for c in idx.chunks]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(t for d in docs for t in set(d))
    k1, b = idx.manifest["tokenizer"]["k1"], idx.manifest["tokenizer"]["b"]
    qtok = [t for t in idx.tokenizer.tokenize(query) if t in idx.bm25.vocab_dict]
    assert qtok

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


def test_bm25_matches_a_straightforward_reference(engine):
    _check_bm25_against_reference(engine.index, "格尔木昆仑经济技术开发区 排名 跃升")


def test_names_learned_from_the_corpus_stay_whole_and_numbers_searchable(index_dir):
    # no word list ships with the package: the index learns the corpus's own names when it is built
    tok = load_index(index_dir).tokenizer
    toks = tok.tokenize("格尔木昆仑经济技术开发区在2023年五经普中柴达木英才计划发放146万元")
    for t in ("格尔木", "昆仑", "开发区", "五经普", "柴达木英才", "2023", "146"):
        assert t in toks, (t, toks)
    assert "的" not in tok.tokenize("海西州的人才")
    assert "海西州" in tok.tokenize("海西州的人才")
    # ... for itself only: the default tokenizer (pages, OCR repair) never learns them
    assert "五经普" not in default_tokenizer().tokenize("在2023年五经普中")


def test_loading_an_index_changes_no_other_tokenizer(tmp_path, encoder):
    """Index A's pages name a made-up park (“青石岭湾”); loading A teaches it to A's tokenizer only."""
    page = (DATA / "pages" / "bom_page.txt").read_text(encoding="utf-8-sig")
    made_up = "\n\n新建公园开放\n\n本报讯 城东新建的“青石岭湾”生态公园3月起开放，青石岭湾公园占地120亩，设有步道8公里。\n"
    for name, text in (("a", page + made_up), ("b", page)):
        (tmp_path / f"seeds_{name}").mkdir()
        (tmp_path / f"seeds_{name}" / "page.txt").write_text(text, encoding="utf-8")
    text = "青石岭湾生态公园在城东"
    before = default_tokenizer().tokenize(text)
    assert "青石岭湾" not in before
    build_index(tmp_path / "seeds_b", tmp_path / "b")
    b = load_index(tmp_path / "b")
    b_before = b.tokenizer.tokenize(text)
    build_index(tmp_path / "seeds_a", tmp_path / "a")
    a = load_index(tmp_path / "a")
    assert "青石岭湾" in a.tokenizer.tokenize(text) and "青石岭湾" in a.tokenizer.terms
    assert default_tokenizer().tokenize(text) == before
    assert b.tokenizer.tokenize(text) == b_before == load_index(tmp_path / "b").tokenizer.tokenize(text)
    assert "青石岭湾" not in b_before
    hits = get_engine(tmp_path / "a").search("青石岭湾", k=1, retriever="bm25")
    assert hits and "青石岭湾" in hits[0].chunk.text


def test_the_manifests_stopwords_and_bm25_parameters_are_the_ones_used(engine, tmp_path):
    from rag.index import write_index

    idx = engine.index
    own = Tokenizer(idx.tokenizer.terms, idx.tokenizer.places, stopwords=STOPWORDS | {"公交"}, k1=2.0, b=0.5)
    write_index(tmp_path / "index", articles=list(idx.articles.values()), chunks=idx.chunks, vectors=idx.vectors(),
                settings=idx.settings, model_name=idx.model, seeds=idx.manifest["seeds"], terms=list(own.terms),
                sentences=idx.sentences, sentence_vectors=idx.sentence_vectors, tokenizer=own)
    m = json.loads((tmp_path / "index" / "manifest.json").read_text(encoding="utf-8"))
    assert (m["tokenizer"]["k1"], m["tokenizer"]["b"]) == (2.0, 0.5)
    loaded = load_index(tmp_path / "index")
    assert (loaded.tokenizer.k1, loaded.tokenizer.b) == (2.0, 0.5)
    assert "公交" not in loaded.tokenizer.tokenize("城市公交线路调整") and "公交" in idx.tokenizer.tokenize("城市公交线路调整")
    assert "公交" not in loaded.bm25.vocab_dict
    _check_bm25_against_reference(loaded, "格尔木昆仑经济技术开发区 排名 跃升")
    # an index that records no tokenizer (built before it was recorded) is refused with what to run
    del m["tokenizer"]
    (tmp_path / "index" / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(IndexFormat, match="records no tokenizer.*rebuild it with `rag index`"):
        load_index(tmp_path / "index")


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
    # the word table: the old words keep their vectors, the new page's words join with their own
    old_words = dict(zip(old.words, np.asarray(old.word_vectors)))
    new_vectors = np.asarray(new.word_vectors)
    assert set(old.words) <= set(new.words) and len(new.words) > len(old.words)
    assert all(np.array_equal(new_vectors[i], old_words[w]) for i, w in enumerate(new.words) if w in old_words)
    added = [w for w in new.words if w not in old_words][:20]
    want = encoder.encode_queries(added)
    got = new_vectors[[new.word_rows[w] for w in added]].astype(np.float32)
    assert np.all(np.sum(want * got, axis=1) > 0.999)


def test_large_indexes_switch_to_hnsw_and_record_it(tmp_path, encoder):
    _, m = build_two_page_index(tmp_path, exact_search_max=1)
    assert m["dense_index"] == "hnsw-flat-ip" and m["settings"]["retrieval"]["exact_search_max"] == 1
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


def test_corpus_lookups_answer_as_the_plain_string_does(index_dir, monkeypatch):
    """Index.corpus_text skips the scan for a word with a character pair the corpus lacks; every
    answer equals a substring test of the text (also with tiny blocks, so pairs across block edges count)."""
    import random

    from rag.index import CorpusText

    text = load_index(index_dir).corpus_text.text
    monkeypatch.setattr(CorpusText, "_BLOCK", 97)
    corpus = CorpusText(text)
    rng = random.Random(7)
    words = ["暖气费", "孩子上学", "格尔木", "电子劳动合同", "零跑腿", "x", ""]
    for _ in range(3000):
        a = rng.randrange(len(text))
        words.append(text[a:a + rng.randrange(1, 7)] if rng.random() < 0.5 else
                     "".join(rng.choice(text) for _ in range(rng.randrange(1, 5))))
    assert [w in corpus for w in words] == [w in text for w in words]
    assert sum(w in text for w in words) > 1000 and sum(w not in text for w in words) > 500
