"""Article -> chunks of a few whole sentences, with whole-sentence overlap, never crossing articles."""
from __future__ import annotations

from .config import ChunkSettings
from .types import Article, Chunk
from .zh import split_sentences

__all__ = ["chunk_article", "chunk_articles"]


def _long_sentence_parts(text: str, s: int, e: int, limit: int) -> list[tuple[int, int]]:
    """Cut a sentence longer than ``limit`` at clause commas so no chunk is unreasonably long."""
    if e - s <= limit:
        return [(s, e)]
    parts, start = [], s
    while e - start > limit:
        cut = max(text.rfind(c, start, start + limit) for c in "，,；;")
        cut = cut + 1 if cut > start else start + limit
        parts.append((start, cut))
        start = cut
    parts.append((start, e))
    return parts


def chunk_article(article: Article, settings: ChunkSettings | None = None) -> list[Chunk]:
    """Split one article into chunks of ``chunk_sentences`` sentences overlapping by ``chunk_overlap``.

    ``chunk.text`` is ``article.text[chunk.start:chunk.end]``; ``embed_text`` prefixes the title.

    >>> from rag.types import Article
    >>> a = Article(article_id="p-01", title="标题", text="一。二。三。四。", source="p.txt")
    >>> [c.text for c in chunk_article(a, ChunkSettings(sentences=2, overlap=1))]
    ['一。二。', '二。三。', '三。四。']
    """
    settings = settings or ChunkSettings()
    sents: list[tuple[int, int]] = []
    for s, e in split_sentences(article.text):
        sents.extend(_long_sentence_parts(article.text, s, e, settings.max_chars))
    if not sents:
        return []
    chunks: list[Chunk] = []
    i = 0
    step_max = settings.sentences
    while i < len(sents):
        j = i + 1
        while j < len(sents) and j - i < step_max and sents[j][1] - sents[i][0] <= settings.max_chars:
            j += 1
        start, end = sents[i][0], sents[j - 1][1]
        text = article.text[start:end]
        head = article.title if article.title and not text.startswith(article.title) else ""
        chunks.append(Chunk(chunk_id=f"{article.article_id}#{len(chunks)}", article_id=article.article_id,
                            ordinal=len(chunks), start=start, end=end, text=text,
                            embed_text=f"{head}\n{text}" if head else text))
        if j >= len(sents):
            break
        i = max(i + 1, j - settings.overlap)
    return chunks


def chunk_articles(articles: list[Article], settings: ChunkSettings | None = None) -> list[Chunk]:
    """Chunks of every article, in article order."""
    out: list[Chunk] = []
    for a in articles:
        out.extend(chunk_article(a, settings))
    return out
