"""The pipeline's settings: one small frozen record per stage (the model, chunking, retrieval,
answering, the local model), gathered in ``Settings``, which is saved into the index manifest."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from .errors import BadInput
from .types import AnswerMode, Retriever

__all__ = ["Settings", "ModelSettings", "ChunkSettings", "RetrievalSettings", "AnswerSettings", "LLMSettings",
           "BUNDLED_MODEL", "INDEX_SETTINGS", "FLAT", "default_cache_dir"]

BUNDLED_MODEL = "bundled:multilingual-e5-small"

# the settings that shape an index (section, field), read back from its manifest; the rest apply at query time
INDEX_SETTINGS = (("model", "name"), ("chunk", "sentences"), ("chunk", "overlap"), ("chunk", "max_chars"),
                  ("retrieval", "exact_search_max"))


def default_cache_dir() -> Path:
    """Where converted models live: $RAG_CACHE, else ~/.cache/rag."""
    env = os.environ.get("RAG_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HOME") or str(Path.home())
    return Path(home) / ".cache" / "rag"


def _positive(record, *names: str) -> None:
    for name in names:
        value = getattr(record, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadInput(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The encoder: the bundled model or any sentence-transformers name or folder, and the model cache."""

    name: str = BUNDLED_MODEL
    cache_dir: str | None = None

    def cache_path(self) -> Path:
        """The model cache folder these settings use."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


@dataclass(frozen=True, kw_only=True)
class ChunkSettings:
    """How articles are cut into chunks: up to ``sentences`` sentences (``overlap`` shared with the
    next chunk) and ``max_chars`` characters."""

    sentences: int = 3
    overlap: int = 1
    max_chars: int = 300

    def __post_init__(self) -> None:
        _positive(self, "sentences", "max_chars")
        if not isinstance(self.overlap, int) or not 0 <= self.overlap < self.sentences:
            raise BadInput(f"chunk overlap must be in [0, chunk sentences), got {self.overlap!r}")


@dataclass(frozen=True, kw_only=True)
class RetrievalSettings:
    """Search: the retriever, how many hits and candidates, the fusion, the rerank, and the size above
    which the FAISS index is approximate (HNSW)."""

    retriever: Retriever = Retriever.HYBRID
    top_k: int = 5
    candidates: int = 50
    rrf_k: int = 60
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    rerank: bool = True  # re-order the fused candidates by their best-matching sentence
    exact_search_max: int = 50_000  # above this many chunks an HNSW index is built

    def __post_init__(self) -> None:
        object.__setattr__(self, "retriever", Retriever.parse(self.retriever, "retriever"))
        _positive(self, "top_k", "candidates")


@dataclass(frozen=True, kw_only=True)
class AnswerSettings:
    """Answers: extractive or from the local model, how many sentences, and the longest question."""

    mode: AnswerMode = AnswerMode.EXTRACTIVE
    max_sentences: int = 3
    max_question_chars: int = 500

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", AnswerMode.parse(self.mode, "answer mode"))
        _positive(self, "max_sentences", "max_question_chars")


@dataclass(frozen=True, kw_only=True)
class LLMSettings:
    """The local model of llm mode."""

    model: str | None = None  # a GGUF path; None: $RAG_LLM_MODEL, else the bundled default
    max_tokens: int = 120
    timeout_s: float = 20.0  # counted from when the model starts writing, not from the queue
    # let llama.cpp repack weights into CPU-specific buffers (AMX…); None: $RAG_LLM_EXTRA_BUFTS, else off,
    # because llama.cpp's AMX matmul crashes on some CPUs
    extra_bufts: bool | None = None


_SECTIONS = {"model": ModelSettings, "chunk": ChunkSettings, "retrieval": RetrievalSettings,
             "answer": AnswerSettings, "llm": LLMSettings}
# the flat names of the command line and of manifests written before the split -> (section, field)
FLAT = {"model": ("model", "name"), "cache_dir": ("model", "cache_dir"),
        "chunk_sentences": ("chunk", "sentences"), "chunk_overlap": ("chunk", "overlap"),
        "chunk_max_chars": ("chunk", "max_chars"),
        **{n: ("retrieval", n) for n in ("retriever", "top_k", "candidates", "rrf_k", "bm25_weight", "dense_weight",
                                          "rerank", "exact_search_max")},
        "answer_mode": ("answer", "mode"), "max_answer_sentences": ("answer", "max_sentences"),
        "max_question_chars": ("answer", "max_question_chars"),
        "llm_model": ("llm", "model"), "llm_max_tokens": ("llm", "max_tokens"), "llm_timeout_s": ("llm", "timeout_s"),
        "llm_extra_bufts": ("llm", "extra_bufts")}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every stage's settings; each stage is handed its own section (``settings.chunk`` to chunking,
    ``settings.retrieval`` to search…). The sections that shape the index (``INDEX_SETTINGS``) are
    checked when it is loaded."""

    model: ModelSettings = field(default_factory=ModelSettings)
    chunk: ChunkSettings = field(default_factory=ChunkSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    answer: AnswerSettings = field(default_factory=AnswerSettings)
    llm: LLMSettings = field(default_factory=LLMSettings)

    def __post_init__(self) -> None:
        for name, kind in _SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise BadInput(f"settings.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    @classmethod
    def of(cls, **flat) -> "Settings":
        """Settings from flat option names (``chunk_max_chars=120``, ``retriever="bm25"``: ``FLAT``), as the
        command line gives them; unnamed fields keep their defaults."""
        return cls().replace(**flat)

    def replace(self, **flat) -> "Settings":
        """A copy with some fields changed, named flat (``llm_timeout_s=0.01``; validated again)."""
        changes: dict[str, dict] = {}
        for name, value in flat.items():
            if name not in FLAT:
                raise BadInput(f"unknown setting {name!r}")
            section, key = FLAT[name]
            changes.setdefault(section, {})[key] = value
        return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **kw) for s, kw in changes.items()})

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict, one object per section."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        """Settings saved by ``to_dict`` (or flat, by a rag before the sections); unknown keys (from a newer
        version) are ignored."""
        if any(isinstance(v, dict) for v in d.values()):
            sections = {}
            for name, kind in _SECTIONS.items():
                known = {f.name for f in dataclasses.fields(kind)}
                sections[name] = kind(**{k: v for k, v in (d.get(name) or {}).items() if k in known})
            return cls(**sections)
        return cls.of(**{k: v for k, v in d.items() if k in FLAT})
