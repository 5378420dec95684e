"""Chunks: whole sentences, whole-sentence overlap, never across articles, exact offsets."""
from __future__ import annotations

import pytest

from rag.chunk import chunk_article, chunk_articles
from rag.config import ChunkSettings
from rag.types import Article
from rag.zh import split_sentences


@pytest.mark.parametrize("text, sentences", [
    ("他说：“好。”我们走吧！", ["他说：“好。”", "我们走吧！"]),
    ("第一句。第二句；第三句？", ["第一句。", "第二句；", "第三句？"]),
    ("没有句号的一行\n下一段。", ["没有句号的一行", "下一段。"]),
    ("“推广是重要举措。”市人社局介绍。", ["“推广是重要举措。”", "市人社局介绍。"]),
    ("数字6.2级地震。", ["数字6.2级地震。"]),
])
def test_split_sentences(text, sentences):
    assert [text[s:e] for s, e in split_sentences(text)] == sentences


def test_chunks_are_whole_sentences_with_overlap_and_exact_offsets(articles):
    settings = ChunkSettings()
    for art in articles:
        chunks = chunk_article(art, settings)
        assert chunks, art.article_id
        ends = {e for _, e in split_sentences(art.text)}
        starts = {s for s, _ in split_sentences(art.text)}
        for c in chunks:
            assert c.article_id == art.article_id
            assert art.text[c.start:c.end] == c.text
            assert c.embed_text.endswith(c.text) and art.title in c.embed_text
            if len(c.text) < settings.max_chars:  # only an over-long sentence is cut at a comma
                assert c.start in starts and c.end in ends
        for a, b in zip(chunks, chunks[1:]):
            if len(split_sentences(a.text)) > 1:
                assert b.start < a.end, "consecutive chunks share a whole sentence"
            else:  # a one-sentence chunk (a very long sentence) is followed directly
                assert b.start >= a.end
            assert b.start > a.start
        # together the chunks cover the article
        assert chunks[0].start == min(starts) and chunks[-1].end == max(ends)


def test_chunks_never_cross_articles(articles):
    chunks = chunk_articles(articles)
    ids = [c.chunk_id for c in chunks]
    assert len(set(ids)) == len(ids)
    by_id = {a.article_id: a for a in articles}
    for c in chunks:
        assert c.text in by_id[c.article_id].text


def test_a_very_long_sentence_is_cut_at_clauses():
    text = "，".join(["格尔木市持续推进城市更新项目建设"] * 40) + "。"
    art = Article(article_id="x-01", title="长句", text=text, source="x.txt")
    chunks = chunk_article(art, ChunkSettings(max_chars=120))
    assert len(chunks) > 3 and all(len(c.text) <= 120 for c in chunks)
