"""Encoder figures on the real seed chunks: sentence-transformers (torch, the reference) vs the ONNX
graph through onnxruntime (fp32, the default), and an int8 quantisation of that graph (not adopted:
see the agreement columns). Each variant runs in its own fresh process, the variants interleaved and
repeated (--repeat, median), so that a machine shared with other work treats them alike.

    .venv/bin/python bench/bench_encoder.py [--repeat 3] [--passages 168]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
side, model_dir, graph, path, out = sys.argv[1:6]
texts, queries = json.load(open(path, encoding="utf-8"))
if side == "torch":
    from rag.embed import Encoder
    enc = Encoder(model_dir, "bundled")
else:
    from rag.onnxenc import OnnxEncoder
    enc = OnnxEncoder(model_dir, "bundled", graph=graph or None)
load = time.perf_counter() - t0
enc.encode_passages(texts[:4])
t1 = time.perf_counter()
vecs = enc.encode_passages(texts)
dt = time.perf_counter() - t1
qs = []
for q in queries[:15]:
    s = time.perf_counter(); enc.encode_queries([q]); qs.append(time.perf_counter() - s)
np.save(out + ".p.npy", vecs)
np.save(out + ".q.npy", enc.encode_queries(queries))
print(json.dumps({"load_s": load, "passages_per_s": len(texts) / dt, "query_ms": 1000 * sorted(qs)[len(qs) // 2],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--passages", type=int, default=0, help="use the first N chunks (0: all)")
    ap.add_argument("--no-int8", action="store_true")
    args = ap.parse_args()
    import numpy as np

    from rag.chunk import chunk_articles
    from rag.config import ModelSettings
    from rag.embed import resolve_model
    from rag.evaluate import load_qa
    from rag.pipeline import load_articles

    model_dir = resolve_model(ModelSettings())
    texts = [c.embed_text for c in chunk_articles(load_articles(ROOT / "seeds"))]
    texts = texts[: args.passages] if args.passages else texts
    queries = [q.question for q in load_qa(ROOT / "tests" / "data" / "qa.jsonl")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-enc-"))
    try:
        graphs = {"torch": "", "onnx-fp32": ""}
        if not args.no_int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8 = tmp / "encoder-int8.onnx"
            quantize_dynamic(str(Path(model_dir) / "onnx" / "encoder.onnx"), str(int8), weight_type=QuantType.QInt8)
            graphs["onnx-int8"] = str(int8)
        data = tmp / "texts.json"
        data.write_text(json.dumps([texts, queries], ensure_ascii=False), encoding="utf-8")
        runs: dict[str, list[dict]] = {side: [] for side in graphs}
        for n in range(args.repeat):
            for side, graph in graphs.items():
                proc = subprocess.run([sys.executable, "-c", CHILD, side, model_dir, graph, str(data), str(tmp / side)],
                                      capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    sys.exit(f"{side} failed: {proc.stderr[-1500:]}")
                runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"run {n + 1}/{args.repeat} {side}: {runs[side][-1]['passages_per_s']:.1f} passages/s",
                      file=sys.stderr, flush=True)
        ref_p, ref_q = np.load(tmp / "torch.p.npy"), np.load(tmp / "torch.q.npy")
        ref_top = np.argsort(-(ref_q @ ref_p.T), axis=1)[:, :5]
        print(f"{len(texts)} seed chunks (mean {sum(map(len, texts)) // len(texts)} chars), {len(queries)} questions, "
              f"2 cores shared; median of {args.repeat} fresh processes per variant\n")
        print(f"{'variant':10} {'load s':>7} {'passages/s':>11} {'query ms':>9} {'peak MB':>8} {'cos min':>8} "
              f"{'top-1 same':>11} {'top-5 same':>11}")
        base = None
        for side in graphs:
            med = {k: statistics.median(r[k] for r in runs[side]) for k in runs[side][0]}
            p, q = np.load(tmp / f"{side}.p.npy"), np.load(tmp / f"{side}.q.npy")
            cos = min(float((p * ref_p).sum(1).min()), float((q * ref_q).sum(1).min()))
            top = np.argsort(-(q @ p.T), axis=1)[:, :5]
            same1 = float((top[:, 0] == ref_top[:, 0]).mean())
            same5 = float(np.mean([list(a) == list(b) for a, b in zip(top, ref_top)]))
            base = base or med["passages_per_s"]
            print(f"{side:10} {med['load_s']:>7.2f} {med['passages_per_s']:>11.1f} {med['query_ms']:>9.1f} "
                  f"{med['peak_rss_mb']:>8.0f} {cos:>8.5f} {same1:>11.0%} {same5:>11.0%}")
        for side in graphs:
            if side != "torch":
                ratio = statistics.median(r["passages_per_s"] for r in runs[side]) / base
                print(f"throughput {side} / torch: {ratio:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
