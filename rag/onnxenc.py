"""The bundled encoder without torch: its BERT written as an ONNX graph (from the converted folder's
own weights) and run by onnxruntime, with the `tokenizers` tokenizer, mean pooling and L2
normalisation in numpy. Same vectors as the sentence-transformers folder (the reference).

The word-embedding matrix (250k x 384) stays out of the graph as a memory-mapped ``.npy`` whose
rows are gathered per batch, so a one-shot query pages in only the rows it uses; the tokenizer is
the same Unigram model as a SentencePiece file (loads in ~0.5 s and ~15 MB, not ~1.5 s and ~300 MB).

    enc = OnnxEncoder(model_dir, "bundled")   # a folder written by rag.bundled.convert
    enc.encode_queries(["格尔木的开发区排第几？"])   # (1, 384) float32, unit length
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from .errors import BadInput, ModelError

__all__ = ["OnnxEncoder", "export_onnx", "onnx_ready", "RUNTIME", "RUNTIME_INT8", "ONNX_DIR", "INT8_DIR"]


RUNTIME = "onnx-fp32"
# the same graph with its matrix products in 8-bit integers (weights per output channel, activations
# per run), the default where the CPU has 8-bit dot products (rag.embed.encoder_runtime): ~3x the
# passages per second, its own vectors (cosine >= 0.99 to fp32), so an index built with it is queried
# with it (figures: bench/bench_int8.py, bench/bench_encoder.py, README)
RUNTIME_INT8 = "onnx-int8"
# inside the converted model folder, one folder per format: a cache shared with an older rag keeps
# that one's files too, so neither rewrites (or swaps away) the files the other is loading
ONNX_DIR = "onnx-3"
_GRAPH, _WORDS, _MARKER = "encoder.onnx", "word_embeddings.npy", "rag_onnx.json"
_SPM, _TAIL = "tokenizer.model", "tokenizer_tail.json"
_FORMAT = "rag-onnx-bert/3"  # bump when the written files change (3: fused operators, `lengths` input)
# the int8 graph, quantised from ONNX_DIR's: a folder of its own, so that a cache shared with a rag
# without it keeps ONNX_DIR exactly as that rag wrote it
INT8_DIR = "onnx-3-int8"
_INT8_FORMAT = "rag-onnx-bert/3+int8-per-channel/1"


def _weights(model_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text("utf-8"))
    sd = load_file(str(model_dir / "model.safetensors"))
    return sd, config


def _graph(sd: dict[str, np.ndarray], config: dict):
    """The BERT encoder after the word-embedding lookup, as torch's eager BertModel computes it:
    (word + type[0]) + position, layer norm, then post-norm layers with exact-erf GELU — written with
    onnxruntime's fused CPU operators (com.microsoft Attention, SkipLayerNormalization, BiasGelu):
    90 nodes instead of 342 after optimisation, so fewer thread hand-offs per run, the same fp32
    arithmetic (cosine >= 0.9999998 to the plain-operator graph of format 2 on the seed chunks).

    Inputs: ``words`` (batch, seq, hidden) and ``lengths`` (batch,) int32, each row's real tokens
    (padding is at the right end: Attention's 1-D mask_index)."""
    from onnx import TensorProto, helper, numpy_helper

    H, heads, eps = config["hidden_size"], config["num_attention_heads"], float(config["layer_norm_eps"])
    nodes, inits = [], []
    ms = "com.microsoft"

    def const(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(arr)), name))
        return name

    def f32(key: str) -> str:
        return const(key, sd[key].astype(np.float32))

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def weight(pre: str) -> np.ndarray:  # torch's Linear stores (out, in); MatMul takes (in, out)
        return sd[pre + ".weight"].astype(np.float32).T

    # positions 0..T-1 and token type 0, as BertEmbeddings adds them
    seq = node("Slice", [node("Shape", ["words"], "shape"), const("one", np.array([1], np.int64)),
                         const("two", np.array([2], np.int64))], "seq_len")
    pos = node("Slice", [f32("embeddings.position_embeddings.weight"), const("zero", np.array([0], np.int64)), seq,
                         "zero"], "pos")
    typ = const("type0", sd["embeddings.token_type_embeddings.weight"][0].astype(np.float32))
    x = node("Add", [node("Add", ["words", typ], "emb.typed"), pos], "emb.sum")
    x = node("LayerNormalization", [x, f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias")],
             "emb.out", axis=-1, epsilon=eps)
    for n in range(config["num_hidden_layers"]):
        p, a = f"encoder.layer.{n}.", f"l{n}."
        s = p + "attention.self."
        qkv_w = const(a + "qkv.w", np.concatenate([weight(s + k) for k in ("query", "key", "value")], axis=1))
        qkv_b = const(a + "qkv.b", np.concatenate([sd[s + k + ".bias"].astype(np.float32)
                                                   for k in ("query", "key", "value")]))
        # softmax(QK^T / sqrt(d) over the first `lengths` keys) V, heads merged
        ctx = node("Attention", [x, qkv_w, qkv_b, "lengths"], a + "ctx", domain=ms, num_heads=heads)
        att = node("MatMul", [ctx, const(a + "ao.w", weight(p + "attention.output.dense"))], a + "ao")
        # LayerNorm(att + bias + x)
        x = node("SkipLayerNormalization", [att, x, f32(p + "attention.output.LayerNorm.weight"),
                                            f32(p + "attention.output.LayerNorm.bias"),
                                            f32(p + "attention.output.dense.bias")], a + "aln", domain=ms, epsilon=eps)
        h = node("MatMul", [x, const(a + "fi.w", weight(p + "intermediate.dense"))], a + "fi")
        g = node("BiasGelu", [h, f32(p + "intermediate.dense.bias")], a + "gelu", domain=ms)  # exact erf GELU
        o = node("MatMul", [g, const(a + "fo.w", weight(p + "output.dense"))], a + "fo")
        x = node("SkipLayerNormalization", [o, x, f32(p + "output.LayerNorm.weight"), f32(p + "output.LayerNorm.bias"),
                                            f32(p + "output.dense.bias")], a + "oln", domain=ms, epsilon=eps)
    nodes.append(helper.make_node("Identity", [x], ["hidden"], name="hidden"))
    graph = helper.make_graph(
        nodes, "rag-bundled-e5",
        [helper.make_tensor_value_info("words", TensorProto.FLOAT, ["batch", "seq", H]),
         helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)],
                             ir_version=8, producer_name="rag.onnxenc")


def _sentencepiece_model(model_dir: Path) -> tuple[bytes, dict]:
    """The folder's tokenizer as a SentencePiece model (same pieces, scores and normalisation charsmap;
    it loads in a fraction of the time and memory of the `tokenizers` Unigram), and what it needs to
    give the same ids: `tokenizers` keeps one trailing space as a ``▁`` piece, SentencePiece drops it."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from .bundled import bundled_weight_path, read_e5_file

    spec = json.loads((model_dir / "tokenizer.json").read_text("utf-8"))
    vocab = spec["model"]["vocab"]
    charsmap = next(n["precompiled_charsmap"] for n in spec["normalizer"]["normalizers"] if n["type"] == "Precompiled")
    special = {t["content"]: t["id"] for t in spec["added_tokens"]}
    unk = spec["model"]["unk_id"]
    piece = pb.ModelProto.SentencePiece
    mp = pb.ModelProto()
    for i, (text, score) in enumerate(vocab):
        sp = mp.pieces.add()
        sp.piece, sp.score = text, float(score)
        sp.type = piece.UNKNOWN if i == unk else (piece.CONTROL if text in special else piece.NORMAL)
    mp.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    mp.trainer_spec.unk_id, mp.trainer_spec.bos_id = unk, special["<s>"]
    mp.trainer_spec.eos_id, mp.trainer_spec.pad_id = special["</s>"], special["<pad>"]
    import base64

    mp.normalizer_spec.name = "rag-e5"
    mp.normalizer_spec.precompiled_charsmap = base64.b64decode(charsmap)
    mp.normalizer_spec.add_dummy_prefix = mp.normalizer_spec.remove_extra_whitespaces = True
    mp.normalizer_spec.escape_whitespaces = True
    rules = read_e5_file(bundled_weight_path()).norm_rules
    tail = {"space_id": next(i for i, (t, _) in enumerate(vocab) if t == "▁"),
            "bos_id": special["<s>"], "eos_id": special["</s>"],
            "max_length": int(json.loads((model_dir / "sentence_bert_config.json").read_text("utf-8"))["max_seq_length"]),
            "to_space": sorted({cp for cp, rep in rules if rep and rep[-1] == 0x20} | {0x20}),
            "dropped": sorted(cp for cp, rep in rules if not rep)}
    return mp.SerializeToString(), tail


def _publish(tmp: Path, target: Path, fmt: str, runtime: str, names: tuple[str, ...]) -> None:
    """Mark a written temporary folder complete (its files' sizes) and swap it into place: a damaged
    one is exchanged in one step, never half there (rag.storage.swap_into_place)."""
    from .storage import swap_into_place

    sizes = {name: (tmp / name).stat().st_size for name in names}
    (tmp / _MARKER).write_text(json.dumps({"format": fmt, "runtime": runtime, "sizes": sizes}), "utf-8")
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    os.chmod(tmp, 0o755)
    swap_into_place(tmp, target)


def export_onnx(model_dir: str | Path) -> Path:
    """Write ``onnx-3/`` (graph, memory-mappable word embeddings, marker) into a converted bundled
    model folder, atomically: a temporary sibling swapped into place (rag.storage.swap_into_place)."""
    import onnx

    model_dir = Path(model_dir)
    sd, config = _weights(model_dir)
    target = model_dir / ONNX_DIR
    tmp = Path(tempfile.mkdtemp(prefix=ONNX_DIR + ".tmp-", dir=model_dir))
    try:
        onnx.save_model(_graph(sd, config), str(tmp / _GRAPH))
        # fp16 as stored in the folder: the reference casts the same values to fp32 on load
        np.save(tmp / _WORDS, np.ascontiguousarray(sd["embeddings.word_embeddings.weight"]), allow_pickle=False)
        sp_model, tail = _sentencepiece_model(model_dir)
        (tmp / _SPM).write_bytes(sp_model)
        (tmp / _TAIL).write_text(json.dumps(tail), "utf-8")
        _publish(tmp, target, _FORMAT, RUNTIME, (_GRAPH, _WORDS, _SPM, _TAIL))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def export_int8(model_dir: str | Path) -> Path:
    """Write ``onnx-3-int8/``: ``onnx-3/``'s graph with every matrix product (the attention's QKV
    included) quantised to 8 bits by onnxruntime's dynamic quantisation — weights signed, one scale
    per output channel; activations unsigned, one scale per run. Atomic like ``export_onnx``."""
    import logging

    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model_dir = Path(model_dir)
    target = model_dir / INT8_DIR
    tmp = Path(tempfile.mkdtemp(prefix=INT8_DIR + ".tmp-", dir=model_dir))
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)  # its advice to pre-process the graph, logged on the root logger
        # the fused operators have no ONNX shape inference: name the float type (Attention -> QAttention)
        quantize_dynamic(str(model_dir / ONNX_DIR / _GRAPH), str(tmp / _GRAPH), weight_type=QuantType.QInt8,
                         per_channel=True, extra_options={"DefaultTensorType": TensorProto.FLOAT})
        _publish(tmp, target, _INT8_FORMAT, RUNTIME_INT8, (_GRAPH,))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        root.setLevel(level)
    return target


def _complete(folder: Path, fmt: str) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text("utf-8"))
        return marker.get("format") == fmt and all(
            (folder / name).stat().st_size == size for name, size in marker["sizes"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def onnx_ready(model_dir: str | Path, runtime: str = RUNTIME) -> bool:
    """True if the folder's ``onnx-3/`` (and for ``onnx-int8`` its ``onnx-3-int8/``) was completely
    written by this format (sizes as recorded)."""
    model_dir = Path(model_dir)
    return _complete(model_dir / ONNX_DIR, _FORMAT) and (
        runtime != RUNTIME_INT8 or _complete(model_dir / INT8_DIR, _INT8_FORMAT))


class OnnxEncoder:
    """The bundled model through onnxruntime: L2-normalised float32 embeddings with e5's
    ``query: `` / ``passage: `` prompts, batched by token length."""

    def __init__(self, model_dir: str | Path, name: str, *, runtime: str = RUNTIME, threads: int | None = None,
                 graph: str | Path | None = None, spin: bool = False):
        import onnxruntime as ort
        import sentencepiece as spm

        if runtime not in (RUNTIME, RUNTIME_INT8):
            raise BadInput(f"runtime must be {RUNTIME!r} or {RUNTIME_INT8!r}, got {runtime!r}")
        model_dir = Path(model_dir)
        folder = model_dir / ONNX_DIR
        graph = graph or (model_dir / INT8_DIR if runtime == RUNTIME_INT8 else folder) / _GRAPH
        self.name, self.runtime = name, runtime
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        cores = min(os.cpu_count() or 1, 4)
        # int8 runs one text at a time (below): one thread per run, and the texts of a batch in as many
        # runs side by side as there are cores (measured on 2 cores: a query 5.3 -> 3.9 ms, passages
        # 60 -> 82 per second); fp32 batches its texts and spreads each run over the cores
        one_lane = runtime == RUNTIME_INT8 and not threads
        opts.intra_op_num_threads = 1 if one_lane else threads or cores
        self._lanes = cores if one_lane else 1
        opts.inter_op_num_threads = 1
        # onnxruntime's worker threads spin between operators by default; on 2 cores shared with other
        # work that spinning takes the CPU the main thread needs (measured: one query 43 -> 22 ms, passages
        # +8 % with the machine loaded; bench/bench_encoder.py compares both)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        # onnxruntime builds the session without the GIL: overlap it with the tokenizer load
        session: list = []

        def build_session() -> None:
            try:
                session.append(ort.InferenceSession(str(graph), sess_options=opts,
                                                    providers=["CPUExecutionProvider"]))
            except Exception as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
                session.append(exc)

        builder = threading.Thread(target=build_session, name="rag-onnx-load", daemon=True)
        builder.start()
        try:
            prompts = json.loads((model_dir / "config_sentence_transformers.json").read_text("utf-8"))["prompts"]
            self._query_prompt, self._passage_prompt = prompts["query"], prompts["passage"]
            tail = json.loads((folder / _TAIL).read_text("utf-8"))
            self._space, self._bos, self._eos = tail["space_id"], tail["bos_id"], tail["eos_id"]
            self._max_pieces = int(tail["max_length"]) - 2
            self._to_space, self._dropped = frozenset(map(chr, tail["to_space"])), frozenset(map(chr, tail["dropped"]))
            self.sentencepiece = spm.SentencePieceProcessor(model_file=str(folder / _SPM))
            self.words = np.load(folder / _WORDS, mmap_mode="r", allow_pickle=False)
            builder.join()
            if isinstance(session[0], Exception):
                raise session[0]
            self.session = session[0]
        except Exception as exc:  # onnxruntime raises its own classes for a damaged graph
            builder.join()
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load the ONNX encoder in {Path(graph).parent}: {first}; delete that folder to "
                             f"rebuild it, or set RAG_ENCODER=torch") from None
        self.dimension = int(self.words.shape[1])

    def _ends_with_space(self, text: str) -> bool:
        end = len(text)
        while end and text[end - 1] in self._dropped:
            end -= 1
        return end > 0 and text[end - 1] in self._to_space

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids with ``<s>`` and ``</s>``, truncated to the model's length: the same ids as the
        folder's tokenizer.json (what sentence-transformers uses), held to it in tests/test_embed.py."""
        out = []
        for text, ids in zip(texts, self.sentencepiece.encode(texts)):
            if self._ends_with_space(text):
                ids.append(self._space)
            out.append([self._bos, *ids[:self._max_pieces], self._eos])
        return out

    def _embed_batch(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(t) for t in ids)
        mat = np.zeros((len(ids), width), dtype=np.int64)  # padding rows are masked out below
        mask = np.zeros((len(ids), width), dtype=np.float32)
        for i, t in enumerate(ids):
            mat[i, :len(t)] = t
            mask[i, :len(t)] = 1.0
        words = self.words[mat].astype(np.float32)
        lengths = np.array([len(t) for t in ids], dtype=np.int32)
        (hidden,) = self.session.run(["hidden"], {"words": words, "lengths": lengths})
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def _encode(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BadInput("texts must be a list of strings")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        ids = self.token_ids([prompt + t for t in texts])
        if self.runtime == RUNTIME_INT8:
            # one text per run: the int8 graph quantises its activations with one scale per run, so a
            # batch would make each text's vector depend on the others beside it (cosine 0.996 measured)
            batch_size = 1
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: little padding
        out = np.zeros((len(ids), self.dimension), dtype=np.float32)
        bar = None
        if len(texts) >= 64:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc="embedding", unit="text", leave=False)
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

        def run(rows: list[int]) -> None:
            out[rows] = self._embed_batch([ids[i] for i in rows])
            if bar is not None:
                bar.update(len(rows))

        if self._lanes > 1 and len(batches) > 1:  # onnxruntime runs without the GIL, a session in many threads
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self._lanes, thread_name_prefix="rag-onnx-run") as pool:
                list(pool.map(run, batches))
        else:
            for rows in batches:
                run(rows)
        if bar is not None:
            bar.close()
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed questions (with the query prompt)."""
        return self._encode(texts, self._query_prompt, batch_size)

    def encode_passages(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed passages (with the passage prompt)."""
        return self._encode(texts, self._passage_prompt, batch_size)
