"""The only place that chains the stages: pages -> articles -> index -> hits -> answers."""
from __future__ import annotations

from pathlib import Path

from .errors import BadInput
from .ingest import list_pages, read_page
from .segment import segment_page
from .types import Article

__all__ = ["load_articles"]


def load_articles(seeds: str | Path, *, pages: list[Path] | None = None) -> list[Article]:
    """Read every page of a seeds folder (or the given pages) and rebuild its articles.

    >>> arts = load_articles("seeds")  # doctest: +SKIP
    >>> arts[0].title  # doctest: +SKIP
    '以考促改以改促治答好党风廉政建设“年度考卷”'
    """
    paths = pages if pages is not None else list_pages(seeds)
    articles: list[Article] = []
    for path in paths:
        page = read_page(path)
        found = segment_page(page.text, page.name)
        if not found:
            raise BadInput(f"{page.name}: no article or caption could be read from this page")
        articles.extend(found)
    return articles
