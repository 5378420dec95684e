"""One frozen Settings dataclass: every tunable of the pipeline, saved into the index manifest."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from .errors import BadInput
from .types import AnswerMode, Retriever

__all__ = ["Settings", "BUNDLED_MODEL", "INDEX_SETTINGS", "default_cache_dir"]

BUNDLED_MODEL = "bundled:multilingual-e5-small"

# the settings that shape an index (read back from its manifest); the rest apply at query time
INDEX_SETTINGS = ("model", "chunk_sentences", "chunk_overlap", "chunk_max_chars", "exact_search_max")

def default_cache_dir() -> Path:
    """Where converted models live: $RAG_CACHE, else ~/.cache/rag."""
    env = os.environ.get("RAG_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HOME") or str(Path.home())
    return Path(home) / ".cache" / "rag"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Pipeline settings; the ones that shape the index are checked when it is loaded."""

    model: str = BUNDLED_MODEL
    cache_dir: str | None = None
    # chunking
    chunk_sentences: int = 3
    chunk_overlap: int = 1
    chunk_max_chars: int = 300
    # retrieval
    retriever: Retriever = Retriever.HYBRID
    top_k: int = 5
    candidates: int = 50
    rrf_k: int = 60
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    rerank: bool = True  # re-order the fused candidates by their best-matching sentence
    exact_search_max: int = 50_000  # above this many chunks an HNSW index is built
    # answering
    max_answer_sentences: int = 3
    refusal_threshold: float = 0.4  # calibrated on tests/data/qa.jsonl
    max_question_chars: int = 500
    # local-model answers
    answer_mode: AnswerMode = AnswerMode.EXTRACTIVE
    llm_model: str | None = None  # a GGUF path; None: $RAG_LLM_MODEL, else the bundled default
    llm_max_tokens: int = 120
    llm_timeout_s: float = 20.0  # counted from when the model starts writing, not from the queue
    # let llama.cpp repack weights into CPU-specific buffers (AMX…); None: $RAG_LLM_EXTRA_BUFTS, else off,
    # because llama.cpp's AMX matmul crashes on some CPUs
    llm_extra_bufts: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "answer_mode", AnswerMode.parse(self.answer_mode, "answer mode"))
        object.__setattr__(self, "retriever", Retriever.parse(self.retriever, "retriever"))
        for name in ("chunk_sentences", "top_k", "candidates", "chunk_max_chars", "max_question_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BadInput(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.chunk_overlap < self.chunk_sentences:
            raise BadInput(f"chunk_overlap must be in [0, chunk_sentences), got {self.chunk_overlap}")

    def replace(self, **changes) -> "Settings":
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def cache_path(self) -> Path:
        """The model cache folder these settings use."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        """Settings saved by ``to_dict``; unknown keys (from a newer version) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
