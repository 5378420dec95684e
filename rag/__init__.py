"""rag: question answering over OCR'd Chinese local-policy newspaper pages, with verbatim citations."""
from __future__ import annotations

from .config import Settings
from .errors import BadInput, IndexFormat, IndexNotFound, IndexStale, ModelError, RagError
from .pipeline import load_articles
from .types import Answer, Article, Chunk, Citation, Hit

__all__ = [
    "Settings", "Article", "Chunk", "Hit", "Citation", "Answer", "load_articles",
    "RagError", "BadInput", "IndexNotFound", "IndexFormat", "IndexStale", "ModelError",
]
__version__ = "0.1.0"
