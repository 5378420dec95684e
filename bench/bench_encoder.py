"""Encoder figures on the real seed chunks: sentence-transformers (torch, the reference) vs the ONNX
graph through onnxruntime (fp32: the default on a CPU without 8-bit dot products), the same graph
with onnxruntime's spinning worker threads (its default, turned off in rag.onnxenc), the code at
--before (e.g. the main checkout: its own ONNX graph, written into a private copy of the model
folder), and the int8 graph (RAG_ENCODER=int8; the default on a CPU with VNNI or Arm's dot products:
its vectors are its own, see the agreement columns). Each
variant runs in its own fresh process, the variants interleaved and repeated (--repeat, median), so
that a machine shared with other work treats them alike; the load average is printed with the
figures, and "per CPU-s" (passages per second of this process's CPU time) is the figure least moved
by that sharing.

    .venv/bin/python bench/bench_encoder.py [--repeat 3] [--passages 168] [--no-int8] [--before /work/main]
"""
from __future__ import annotations

import argparse
import json
import os
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
side, model_dir, graph, path, out = sys.argv[1:6]  # run with cwd = the checkout to measure
texts, queries = json.load(open(path, encoding="utf-8"))
if side == "torch":
    from rag.embed import Encoder
    enc = Encoder(model_dir, "bundled")
elif side == "before":
    from rag.onnxenc import OnnxEncoder
    enc = OnnxEncoder(model_dir, "bundled")
else:
    from rag.onnxenc import OnnxEncoder
    enc = OnnxEncoder(model_dir, "bundled", graph=graph or None, **({"spin": True} if side == "onnx-spin" else {}),
                      **({"runtime": "onnx-int8"} if side == "onnx-int8" else {}))
load = time.perf_counter() - t0
enc.encode_passages(texts[:4])
t1, c1 = time.perf_counter(), time.process_time()
vecs = enc.encode_passages(texts)
dt, cpu = time.perf_counter() - t1, time.process_time() - c1
qs = []
for q in queries[:15]:
    s = time.perf_counter(); enc.encode_queries([q]); qs.append(time.perf_counter() - s)
np.save(out + ".p.npy", vecs)
np.save(out + ".q.npy", enc.encode_queries(queries))
print(json.dumps({"load_s": load, "passages_per_s": len(texts) / dt, "passages_per_cpu_s": len(texts) / cpu,
                  "query_ms": 1000 * sorted(qs)[len(qs) // 2],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


ISSUE_BASELINE = 18.0  # passages/s on chunk texts when issue #16 was filed; its target is 2x that


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _before_model(before: Path, model_dir: str, tmp: Path) -> str:
    """A private copy of the model folder (hard links) whose onnx/ the --before checkout writes itself."""
    copy = tmp / "before-model"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("onnx*"),
                    copy_function=lambda a, b: os.link(a, b))
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); "
                           "from rag.onnxenc import export_onnx; export_onnx(sys.argv[1])", str(copy)],
                          capture_output=True, text=True, cwd=before)
    if proc.returncode:
        sys.exit(f"--before {before} could not write its ONNX files: {proc.stderr.strip()[-800:]}")
    return str(copy)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--passages", type=int, default=0, help="use the first N chunks (0: all)")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--no-torch", action="store_true", help="skip the sentence-transformers reference runs "
                    "(agreement is then measured against the ONNX default)")
    ap.add_argument("--before", default="", help="a checkout of the code to compare with (e.g. /work/main)")
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
        # side -> (checkout to run in, model folder, graph file or "")
        variants = {} if args.no_torch else {"torch": (ROOT, model_dir, "")}
        variants["onnx-fp32"] = (ROOT, model_dir, "")
        variants["onnx-spin"] = (ROOT, model_dir, "")
        if args.before:
            before = Path(args.before).resolve()
            variants["before"] = (before, _before_model(before, model_dir, tmp), "")
        if not args.no_int8:  # rag's RAG_ENCODER=int8: per-channel weights, one text per run
            resolve_model(ModelSettings(), "onnx-int8")
            variants["onnx-int8"] = (ROOT, model_dir, "")
        data = tmp / "texts.json"
        data.write_text(json.dumps([texts, queries], ensure_ascii=False), encoding="utf-8")
        load_start = _load()
        runs: dict[str, list[dict]] = {side: [] for side in variants}
        for n in range(args.repeat):
            for side, (checkout, folder, graph) in variants.items():
                proc = subprocess.run([sys.executable, "-c", CHILD, side, folder, graph, str(data), str(tmp / side)],
                                      capture_output=True, text=True, cwd=checkout)
                if proc.returncode:
                    sys.exit(f"{side} failed: {proc.stderr[-1500:]}")
                runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"run {n + 1}/{args.repeat} {side}: {runs[side][-1]['passages_per_s']:.1f} passages/s, "
                      f"query {runs[side][-1]['query_ms']:.1f} ms ({_load()})", file=sys.stderr, flush=True)
        ref = next(iter(variants))
        ref_p, ref_q = np.load(tmp / f"{ref}.p.npy"), np.load(tmp / f"{ref}.q.npy")
        ref_top = np.argsort(-(ref_q @ ref_p.T), axis=1)[:, :5]
        print(f"{len(texts)} seed chunks (mean {sum(map(len, texts)) // len(texts)} chars), {len(queries)} questions, "
              f"2 cores shared; median of {args.repeat} fresh processes per variant; "
              f"{load_start} at the start, {_load()} at the end; agreement vs {ref}\n")
        print(f"{'variant':10} {'load s':>7} {'passages/s':>11} {'per CPU-s':>10} {'query ms':>9} {'peak MB':>8} "
              f"{'cos min':>10} {'top-1 same':>11} {'top-5 same':>11}")
        med = {}
        for side in variants:
            med[side] = {k: statistics.median(r[k] for r in runs[side]) for k in runs[side][0]}
            p, q = np.load(tmp / f"{side}.p.npy"), np.load(tmp / f"{side}.q.npy")
            cos = min(float((p * ref_p).sum(1).min()), float((q * ref_q).sum(1).min()))
            top = np.argsort(-(q @ p.T), axis=1)[:, :5]
            same1 = float((top[:, 0] == ref_top[:, 0]).mean())
            same5 = float(np.mean([list(a) == list(b) for a, b in zip(top, ref_top)]))
            m = med[side]
            print(f"{side:10} {m['load_s']:>7.2f} {m['passages_per_s']:>11.1f} {m['passages_per_cpu_s']:>10.1f} "
                  f"{m['query_ms']:>9.1f} {m['peak_rss_mb']:>8.0f} {cos:>10.7f} {same1:>11.0%} {same5:>11.0%}")
        print()
        for side in variants:
            line = f"{side}: {med[side]['passages_per_s'] / ISSUE_BASELINE:.2f}x the issue's {ISSUE_BASELINE:g} passages/s"
            for other in ("torch", "before", "onnx-spin"):
                if other in med and other != side:
                    line += (f", {med[side]['passages_per_s'] / med[other]['passages_per_s']:.2f}x {other} "
                             f"(query {med[side]['query_ms'] / med[other]['query_ms']:.2f}x)")
            print(line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
