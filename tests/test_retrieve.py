"""Hybrid retrieval on the real pages: the right passage first, bad queries refused clearly."""
from __future__ import annotations

import pytest

from rag.errors import BadInput
from rag.evaluate import evaluate_retrieval
from rag.retrieve import fuse_ranks

from .conftest import run_cli


def test_reciprocal_rank_fusion():
    fused = fuse_ranks([[(1, 0.9), (2, 0.8), (3, 0.1)], [(3, 9.0), (2, 5.0)]], [1.0, 1.0], k=60)
    assert [r for r, _ in fused] == [3, 2, 1]
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)
    assert fuse_ranks([[(1, 0.9)], [(2, 1.0)]], [2.0, 1.0])[0][0] == 1  # weights count


def test_hybrid_finds_the_gold_passage(engine, qa_items):
    res = evaluate_retrieval(engine, qa_items, retriever="hybrid", k=5)
    assert res["recall@5"] >= 0.98, res["misses"]
    assert res["recall@1"] >= 0.85, res["misses"]  # 0.896 with the scoring fitted on all 586 questions


def test_hybrid_beats_plain_single_retrievers(qa_items, index_dir):
    from rag.pipeline import get_engine

    plain = get_engine(index_dir, rerank=False)
    full = evaluate_retrieval(get_engine(index_dir), qa_items, retriever="hybrid")["mrr"]
    for r in ("bm25", "dense"):
        assert full > evaluate_retrieval(plain, qa_items, retriever=r)["mrr"] + 0.05


def test_hits_are_deduplicated_within_an_article(engine):
    hits = engine.search("电子劳动合同", k=8)
    for i, a in enumerate(hits):
        for b in hits[i + 1:]:
            if a.chunk.article_id == b.chunk.article_id:
                overlap = min(a.chunk.end, b.chunk.end) - max(a.chunk.start, b.chunk.start)
                assert overlap * 2 <= b.chunk.end - b.chunk.start


@pytest.mark.parametrize("query, message", [
    ("", "query is empty"),
    ("   \n\t ", "query is empty"),
    ("？？！！……", "no words to search for"),
    ("😀😀🎉", "no words to search for"),
    ("格" * 10_000, "characters; at most"),
])
def test_bad_queries_get_specific_messages(engine, query, message):
    with pytest.raises(BadInput, match=message):
        engine.search(query)


@pytest.mark.parametrize("k", [0, -1, 1000])
def test_bad_k(engine, k):
    with pytest.raises(BadInput, match="k must be between"):
        engine.search("格尔木", k=k)


def test_cli_search_batch_json(index_dir):
    proc = run_cli("search", "--index", str(index_dir), "--k", "3",
                   stdin="格尔木的开发区在全国排第几？\n\n？？？\n西宁跻身动力电池十强\n")
    assert proc.returncode == 0, proc.stderr
    import json

    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 3
    assert rows[0]["query"] == "格尔木的开发区在全国排第几？"
    assert set(rows[0]["hits"][0]) == {"rank", "score", "chunk_id", "article_id", "title", "source", "text",
                                       "paper", "date", "page", "region", "city"}  # page metadata (b718ed5)
    assert "128位" in rows[0]["hits"][0]["text"]
    assert "error" in rows[1] and rows[1]["hits"] == []
    assert "西宁" in rows[2]["hits"][0]["title"]


@pytest.mark.parametrize("args, message", [
    (["search", ""], "query is empty"),
    (["search", "格尔木", "--k", "0"], "argument --k: must be between 1 and 100, got 0"),
    (["search", "格尔木", "--index", "/nonexistent/idx"], "no index at"),
])
def test_cli_search_errors_are_one_line(args, message):
    proc = run_cli(*args)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_refuses_an_index_built_with_another_model(index_dir, tmp_path):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(index_dir, other)
    m = json.loads((other / "manifest.json").read_text(encoding="utf-8"))
    m["model"]["name"] = "BAAI/bge-small-zh-v1.5"
    (other / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    proc = run_cli("search", "格尔木", "--index", str(other), "--model", "bundled:multilingual-e5-small")
    assert proc.returncode == 1 and "built with model 'BAAI/bge-small-zh-v1.5'" in proc.stderr
    assert "rag index --model" in proc.stderr and "Traceback" not in proc.stderr
    # without --model the index's own model is used; here it cannot be fetched offline: a clear error
    proc = run_cli("search", "格尔木", "--index", str(other), env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "cannot load encoder model 'BAAI/bge-small-zh-v1.5'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_control_and_zero_width_characters_do_not_change_the_answer(engine):
    clean = engine.ask("格尔木的开发区在全国排第几？")
    dirty = engine.ask("格尔木的开发区\x07在全国\u200b排第几？\x00")
    assert not dirty.refused and dirty.answer == clean.answer and "128" in dirty.answer
