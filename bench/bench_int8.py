"""Would an int8 encoder do? Builds the evaluation index (seeds + test pages with gold articles) with
the ONNX fp32 graph or its int8 quantisation, queries with the same, and prints the retrieval and
held-out answer figures as JSON. Run once per variant and compare (the bar: within 0.01 of fp32).

    .venv/bin/python bench/bench_int8.py fp32 ; .venv/bin/python bench/bench_int8.py int8

int8 is rag's RAG_ENCODER=int8 graph; int8-tensor the first one measured (per-tensor scales, batched).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from build_eval_index import copy_eval_pages  # noqa: E402  (bench/ is this script's folder)


def main(variant: str) -> None:
    import rag.embed as embed
    from rag.config import ModelSettings
    from rag.evaluate import evaluate_heldout, evaluate_retrieval, load_qa
    from rag.onnxenc import ONNX_DIR, OnnxEncoder
    from rag.pipeline import build_index, get_engine

    if variant not in ("fp32", "int8", "int8-tensor"):
        sys.exit(f"variant must be fp32, int8 or int8-tensor, got {variant!r}")
    model_dir = embed.resolve_model(ModelSettings(), "onnx-int8" if variant == "int8" else "onnx-fp32")
    tmp = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    try:
        if variant == "int8-tensor":  # the first int8 tried: one scale per weight matrix, batches of 32
            from onnx import TensorProto
            from onnxruntime.quantization import QuantType, quantize_dynamic

            graph = tmp / "int8.onnx"
            # the fused operators have no ONNX shape inference: name the float type (Attention becomes QAttention)
            quantize_dynamic(str(Path(model_dir) / ONNX_DIR / "encoder.onnx"), str(graph), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
            enc = OnnxEncoder(model_dir, "bundled", graph=graph)
        else:  # what rag runs: RAG_ENCODER=int8 (one scale per output channel, one text per run) or fp32
            enc = OnnxEncoder(model_dir, "bundled", runtime="onnx-" + variant)
        embed.get_encoder = lambda settings=None, runtime=None: enc  # build and query with this variant only
        seeds = tmp / "seeds"
        seeds.mkdir()
        copy_eval_pages(seeds)
        t0 = time.perf_counter()
        build_index(seeds, tmp / "index")
        print(f"{variant}: index built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        items = [i for p in ("tests/data/qa_residents.jsonl", "tests/data/qa.jsonl") for i in load_qa(ROOT / p)]
        out = {"variant": variant, "questions": len(items)}
        for r in ("dense", "hybrid"):
            row = evaluate_retrieval(get_engine(tmp / "index", retriever=r), items, retriever=r, k=5)
            out[r] = {k: row[k] for k in ("recall@1", "recall@5", "mrr")}
            print(f"{variant} {r}: {out[r]}", file=sys.stderr, flush=True)
        h = evaluate_heldout(get_engine(tmp / "index"), items)["heldout"]
        out["heldout"] = {k: h[k] for k in ("answer_accuracy", "answerable_refused", "unanswerable_refused",
                                            "recall@1", "recall@5")}
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "int8")
