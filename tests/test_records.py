"""The index's chunks and sentences held as columns read back exactly as the records written to disk,
and the sentence table looks sentences up as a straightforward dict-of-lists reference does."""
from __future__ import annotations

import bisect
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from rag.index import load_index
from rag.records import ChunkTable, SentenceRecords
from rag.score import SentenceTable, sentence_table
from rag.types import Chunk, chunk_from_dict
from rag.zh import fold_width, years_in


def _jsonl(path):
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


@pytest.fixture(scope="module")
def index(index_dir):
    return load_index(index_dir)


def test_loaded_chunks_are_the_written_chunks(index, index_dir):
    written = [chunk_from_dict(d) for d in _jsonl(index_dir / "chunks.jsonl")]
    assert isinstance(index.chunks, ChunkTable) and len(index.chunks) == len(written) > 50
    assert list(index.chunks) == written and index.chunks == written
    assert index.chunks[-1] == written[-1] and index.chunks[3:6] == written[3:6]
    for c in index.chunks:  # what a user is shown is the article's own text
        assert c.text == index.articles[c.article_id].text[c.start:c.end]
    with pytest.raises(IndexError):
        index.chunks[len(written)]


def test_loaded_sentences_are_the_written_records(index, index_dir):
    written = _jsonl(index_dir / "sentences.jsonl")
    assert isinstance(index.sentences, SentenceRecords) and list(index.sentences) == written
    assert any(r["places"] for r in written) and any(r["years"] for r in written)  # the sparse lists are exercised
    assert index.sentences[-1] == written[-1]


def test_rows_of_articles_and_of_a_chunk_id(index):
    ids = {a for i, a in enumerate(index.articles) if i % 3 == 0}
    want = [i for i, c in enumerate(index.chunks) if c.article_id in ids]
    assert index.chunks.rows_of_articles(ids).tolist() == want and want
    assert index.chunks.rows_of_articles({"no-such-article"}).tolist() == []
    for row, c in enumerate(index.chunks):
        assert index.chunks.row_of(c.chunk_id) == row
    with pytest.raises(KeyError):
        index.chunks.row_of("no-such-article#0")


def test_a_chunk_that_is_not_its_articles_slice_is_kept_as_it_was(index):
    """An index written by another chunker (its own ids, texts or embed texts) reads back unchanged."""
    articles = index.articles
    chunks = list(index.chunks)[:6]
    odd = [replace(chunks[0], chunk_id="own-id"), replace(chunks[1], text="不是原文"),
           replace(chunks[2], embed_text="另一个标题\n" + chunks[2].text)]
    table = ChunkTable(articles, odd + chunks[3:])
    assert list(table) == odd + chunks[3:]
    assert table.row_of("own-id") == 0 and table.article_id(1) == chunks[1].article_id
    with pytest.raises(KeyError):
        ChunkTable(articles, [replace(chunks[0], article_id="no-such-article")])
    assert ChunkTable(articles, [json.loads(json.dumps(c.__dict__)) for c in chunks]) == chunks  # dicts too


def test_sentence_records_of_dicts_and_facts_without_an_article():
    from rag.types import Article

    arts = {"a": Article("a", "标题", "一。二。", "p.txt")}
    recs = [{"article_id": "a", "start": 0, "end": 2, "places": ["西宁", "西宁"], "years": []},
            {"article_id": "gone", "start": 0, "end": 3, "places": [], "years": ["2023"]}]
    got = SentenceRecords(arts, recs)
    assert list(got) == recs and len(got) == 2


def _reference_table(index):
    """The sentence table as it was built before the columns: dicts and lists of every sentence."""
    by_article: dict[str, tuple[list[int], list[int]]] = {}
    for i, f in enumerate(index.sentences):
        starts, rows = by_article.setdefault(f["article_id"], ([], []))
        starts.append(f["start"])
        rows.append(i)

    def row_at(aid, pos):
        found = by_article.get(aid)
        if not found:
            return None
        i = bisect.bisect_right(found[0], pos) - 1
        return found[1][i] if i >= 0 else None
    return row_at


def test_sentence_table_finds_the_same_sentences_and_facts(index):
    table = SentenceTable(index.sentences, index.sentence_vectors, index.articles, index.tokenizer)
    listed = SentenceTable(list(index.sentences), index.sentence_vectors, index.articles, index.tokenizer)
    row_at = _reference_table(index)
    for aid, art in index.articles.items():
        for pos in range(-1, len(art.text) + 2, 3):
            assert table.row_at(aid, pos) == row_at(aid, pos) == listed.row_at(aid, pos)
        assert table.article_years.get(aid) == tuple(years_in(art.title + "\n" + art.text))
        assert table.folded[aid] == fold_width(art.title + "\n" + art.text).lower()
        assert table.article_places.get(aid) == listed.article_places.get(aid)
        assert set(table.article_places[aid]) >= set(index.tokenizer.place_names(art.title))
    assert table.row_at("no-such-article", 0) is None and table.article_places.get("no-such-article", ()) == ()
    for row in (0, len(index.sentences) // 2, len(index.sentences) - 1):
        f, rec = table.facts[row], index.sentences[row]
        assert (f.article_id, f.start, f.end, list(f.places), list(f.years)) == \
            (rec["article_id"], rec["start"], rec["end"], rec["places"], rec["years"])
    # the paper's own area: the places a page's sentences name most often
    assert table.page_place == listed.page_place and table.page_place
    source, places = next(iter(table.page_place.items()))
    counts: dict[str, int] = {}
    for rec in index.sentences:
        if index.articles[rec["article_id"]].source == source:
            for p in rec["places"]:
                counts[p] = counts.get(p, 0) + 1
    assert places == tuple(sorted(counts, key=lambda p: (-counts[p], p))[:2])


def test_sentence_table_of_a_loaded_index_answers(index):
    table = sentence_table(index)
    art = next(a for a in index.articles.values() if "格尔木" in a.text)
    pos = art.text.index("格尔木")
    row = table.row_at(art.article_id, pos)
    rec = index.sentences[row]
    assert rec["article_id"] == art.article_id and rec["start"] <= pos < rec["end"]
    assert np.asarray(table.vectors[row]).shape == (index.dimension,)


def test_sentence_vectors_are_read_from_the_file_as_stored(index, index_dir, tmp_path):
    from rag.records import VectorRows

    stored = np.load(index_dir / "sentences.npy")
    rows = index.sentence_vectors
    assert isinstance(rows, VectorRows) and rows.shape == stored.shape and rows.dtype == stored.dtype
    assert np.array_equal(np.asarray(rows), stored) and np.array_equal(rows[[4, 0, 4]], stored[[4, 0, 4]])
    assert np.array_equal(rows[-1], stored[-1]) and np.array_equal(np.stack(list(rows)), stored)
    with pytest.raises(IndexError):
        rows[len(stored)]
    (tmp_path / "cut.npy").write_bytes((index_dir / "sentences.npy").read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        VectorRows(tmp_path / "cut.npy")


@pytest.mark.parametrize("name, field, value", [("chunks.jsonl", "start", "zero"), ("chunks.jsonl", "article_id", "gone"),
                                                ("sentences.jsonl", "end", [1]), ("sentences.jsonl", "places", 7)])
def test_a_record_with_a_wrong_field_is_refused_as_corrupt(index_dir, tmp_path, name, field, value):
    """A hand-edited record is 'rebuild it with `rag index`', not a traceback (the checksums are skipped
    by removing the file's manifest entry, as an edit that also fixed the manifest would)."""
    from rag.errors import IndexFormat

    folder = tmp_path / "index"
    shutil.copytree(index_dir, folder)
    lines = (folder / name).read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[1])
    rec[field] = value
    lines[1] = json.dumps(rec, ensure_ascii=False)
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    del manifest["files"][name]
    (folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(IndexFormat, match="rebuild"):
        load_index(folder)


def test_the_word_table_holds_every_word_of_the_pages_with_its_query_vector(index, encoder):
    """The words a question's terms are compared with: the pages' BM25 tokens of two or more characters
    with a Han one, sorted, each with the encoder's query vector (stored as float16)."""
    from rag.zh import is_han

    tokens = {t for c in index.chunks for t in index.tokenizer.tokenize(c.embed_text)}
    want = sorted(t for t in tokens if len(t) >= 2 and any(is_han(ch) for ch in t))
    assert list(index.words) == want and len(want) > 1000
    sample = want[::97]
    got = np.asarray(index.word_vectors)[[index.word_rows[w] for w in sample]].astype(np.float32)
    assert np.all(np.sum(encoder.encode_queries(sample) * got, axis=1) > 0.999)


@pytest.mark.parametrize("damage", ["a word less", "vectors cut"])
def test_a_word_table_that_does_not_match_is_refused_as_corrupt(index_dir, tmp_path, damage):
    from rag.errors import IndexFormat

    folder = tmp_path / "index"
    shutil.copytree(index_dir, folder)
    if damage == "a word less":
        words = (folder / "words.txt").read_text(encoding="utf-8").splitlines()
        (folder / "words.txt").write_text("\n".join(words[1:]) + "\n", encoding="utf-8")
    else:
        np.save(folder / "words.npy", np.load(folder / "words.npy")[:-3])
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    del manifest["files"]["words.txt" if damage == "a word less" else "words.npy"]  # past the checksums
    (folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(IndexFormat, match="words but .* word vectors; rebuild"):
        load_index(folder)
