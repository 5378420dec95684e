"""FAISS index kinds at 10k / 100k / 1M chunks: build time, disk size, query p50/p95, peak RSS, recall@10.

    .venv/bin/python bench/bench_scale.py [--sizes 10000,100000,1000000] [--queries 200] [--budget 480]
    .venv/bin/python bench/bench_scale.py --ingest-pages 60    # a real build: time and peak RSS

The vectors are SYNTHETIC at every size (the encoder embeds ~18 passages/s on 2 cores: 10k real
chunks would take ~10 min): unit vectors in 384 dimensions drawn around N/40 cluster centres that
share a common direction, as e5's passage vectors do (all cosines positive, neighbours close), so the
recall figures are about the index structure, not about the encoder. The exact top-10 (IndexFlatIP)
is the reference for recall@10. Each index kind is built in its own process (peak RSS of the build)
and served from its file in another (peak RSS of serving = load + queries, without the build's
copy of the vectors); queries are run one at a time, as the chat asks them. A build whose time,
extrapolated from the smaller size, would pass --budget seconds is skipped, and the table says so.
Artifacts (vectors, indexes) go to test-artifacts/bench_scale/ and are removed at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "test-artifacts" / "bench_scale"
DIM = 384


def _rss_mb() -> float:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_vectors(n: int, seed: int) -> np.ndarray:
    """n clustered unit vectors (float32), made in blocks so that the peak stays near the result."""
    rng = np.random.default_rng(12345)
    n_centres = max(16, n // 40)
    common = rng.standard_normal(DIM).astype(np.float32)
    common /= np.linalg.norm(common)
    centres = rng.standard_normal((n_centres, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres = centres + 2.0 * common  # e5-like: every pair of passages has a positive cosine
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, DIM), dtype=np.float32)
    gen = np.random.default_rng(seed)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        block = centres[gen.integers(0, n_centres, e - s)] + 0.025 * gen.standard_normal((e - s, DIM)).astype(np.float32)
        out[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def kinds(n: int) -> list[dict]:
    nlist = int(4 * math.sqrt(n)) // 16 * 16
    return [
        {"kind": "flat", "search": [{}]},
        {"kind": "hnsw", "M": 32, "efConstruction": 40, "search": [{"efSearch": 64}, {"efSearch": 128}]},
        {"kind": "ivf-flat", "nlist": nlist, "search": [{"nprobe": p} for p in (8, 16, 32, 64)]},
        {"kind": "ivf-sq8", "nlist": nlist, "search": [{"nprobe": p} for p in (8, 16, 32, 64)]},
        {"kind": "hnsw-sq8", "M": 32, "efConstruction": 40, "search": [{"efSearch": 64}, {"efSearch": 128}]},
    ]


def _make_index(spec: dict, base: np.ndarray):
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    kind = spec["kind"]
    if kind == "flat":
        return faiss.IndexFlatIP(DIM)
    if kind == "hnsw":
        idx = faiss.IndexHNSWFlat(DIM, spec["M"], ip)
    elif kind == "hnsw-sq8":
        idx = faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, spec["M"], ip)
    else:
        idx = faiss.index_factory(DIM, f"IVF{spec['nlist']},{'Flat' if kind == 'ivf-flat' else 'SQ8'}", ip)
    if kind.startswith("hnsw"):
        idx.hnsw.efConstruction = spec["efConstruction"]
    return idx


def worker_build(args: dict) -> dict:
    """Build one index from the stored vectors and write it; time, file size, peak RSS."""
    import faiss

    base = np.load(args["vectors"], mmap_mode="r")
    spec = args["spec"]
    t0 = time.perf_counter()
    idx = _make_index(spec, base)
    if not idx.is_trained:
        rng = np.random.default_rng(0)
        sample = np.ascontiguousarray(base[np.sort(rng.choice(len(base), min(len(base), 64 * spec.get("nlist", 1563)), replace=False))])
        idx.train(sample)
    for s in range(0, len(base), 50_000):  # added in batches: the build never holds a second full copy
        idx.add(np.ascontiguousarray(base[s:s + 50_000]))
    seconds = time.perf_counter() - t0
    faiss.write_index(idx, args["out"])
    return {"build_s": round(seconds, 1), "disk_mb": round(Path(args["out"]).stat().st_size / 2**20, 1),
            "build_rss_mb": round(_rss_mb())}


def worker_serve(args: dict) -> dict:
    """Load one index file and run the queries one by one with each search setting."""
    import faiss

    idx = faiss.read_index(args["out"])
    queries = np.load(args["queries"])
    truth = np.load(args["truth"])
    rows = []
    for params in args["spec"]["search"]:
        if "efSearch" in params:
            faiss.downcast_index(idx).hnsw.efSearch = params["efSearch"]
        if "nprobe" in params:
            faiss.extract_index_ivf(idx).nprobe = params["nprobe"]
        times, found = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, ids = idx.search(q.reshape(1, -1), 10)
            times.append((time.perf_counter() - t0) * 1000)
            found.append(ids[0])
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        times.sort()
        rows.append({"params": params, "p50_ms": round(times[len(times) // 2], 2),
                     "p95_ms": round(times[int(0.95 * len(times))], 2), "recall10": round(recall, 3)})
    return {"serve_rss_mb": round(_rss_mb()), "rows": rows}


def worker_ingest(args: dict) -> dict:
    """Build a real index (real encoder) of N pages made from the test pages; time and peak RSS."""
    sys.path.insert(0, str(ROOT))
    from rag.ingest import read_page
    from rag.pipeline import build_index

    folder = Path(args["folder"])
    seeds = folder / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    sources = sorted(p.with_name(p.name.replace(".gold.json", ".txt"))
                     for p in (ROOT / "tests" / "data" / "pages").glob("*.gold.json"))
    digits = "0123456789"
    for i in range(args["pages"]):  # each copy with its digits shifted: a page of its own
        k = i // len(sources) + 1
        text = read_page(sources[i % len(sources)]).text.translate(str.maketrans(digits, digits[k:] + digits[:k]))
        (seeds / f"p{i:05d}.txt").write_text(text, encoding="utf-8")
    t0 = time.perf_counter()
    summary = build_index(seeds, folder / "index")
    return {"pages": summary["pages"], "chunks": summary["chunks"], "seconds": round(time.perf_counter() - t0, 1),
            "rss_mb": round(_rss_mb())}


def _run_worker(mode: str, args: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", mode, json.dumps(args)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_size(n: int, n_queries: int, budget: float, previous: dict, only: set[str] | None = None) -> list[dict]:
    import faiss

    folder = WORK / str(n)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = make_vectors(n, seed=1)
    np.save(folder / "base.npy", base)
    rng = np.random.default_rng(7)
    picks = rng.choice(n, n_queries, replace=False)  # queries: perturbed passages (as a question near its answer)
    queries = base[picks] + 0.02 * rng.standard_normal((n_queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.save(folder / "queries.npy", queries)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(base)
    _, truth = exact.search(queries, 10)
    np.save(folder / "truth.npy", truth)
    del base, exact
    print(f"[{n:,}] synthetic vectors + exact top-10 in {time.perf_counter() - t0:.0f} s", flush=True)
    out = []
    for spec in kinds(n):
        if only and spec["kind"] not in only:
            continue
        label = spec["kind"] + "".join(f" {k}={v}" for k, v in spec.items() if k not in ("kind", "search"))
        est = previous.get(spec["kind"])
        if est is not None and est * (n / previous["n"]) * (1.3 if "hnsw" in spec["kind"] else 1.0) > budget:
            print(f"[{n:,}] {label}: skipped (build would take ~{est * n / previous['n']:.0f} s > budget {budget:.0f} s)",
                  flush=True)
            out.append({"n": n, "label": label, "skipped": True})
            continue
        args = {"vectors": str(folder / "base.npy"), "queries": str(folder / "queries.npy"),
                "truth": str(folder / "truth.npy"), "out": str(folder / f"{spec['kind']}.faiss"), "spec": spec}
        try:
            built = _run_worker("build", args, timeout=budget * 1.5 + 60)
            served = _run_worker("serve", args, timeout=600)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"[{n:,}] {label}: failed ({exc})", flush=True)
            out.append({"n": n, "label": label, "skipped": True})
            continue
        previous[spec["kind"]] = built["build_s"]
        for row in served["rows"]:
            rec = {"n": n, "label": label, **built, "serve_rss_mb": served["serve_rss_mb"], **row}
            out.append(rec)
            print(f"[{n:,}] {label} {row['params']}: build {built['build_s']} s, {built['disk_mb']} MB, "
                  f"p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, recall@10 {row['recall10']}, "
                  f"serving RSS {served['serve_rss_mb']} MB", flush=True)
    previous["n"] = n
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    global WORK
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        fn = {"build": worker_build, "serve": worker_serve, "ingest": worker_ingest}[sys.argv[2]]
        print(json.dumps(fn(json.loads(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--budget", type=float, default=480, help="seconds one build may take (default 480)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--kinds", default=None, help="only these kinds, e.g. hnsw,ivf-sq8 (default: all)")
    ap.add_argument("--work", default=None, help=f"scratch folder (default {WORK})")
    ap.add_argument("--ingest-pages", type=int, default=0,
                    help="instead: build a real index (real encoder) of this many pages made from the test pages")
    args = ap.parse_args()
    WORK = Path(args.work) if args.work else WORK
    if args.ingest_pages:
        shutil.rmtree(WORK / "ingest", ignore_errors=True)
        r = _run_worker("ingest", {"folder": str(WORK / "ingest"), "pages": args.ingest_pages}, timeout=3600)
        shutil.rmtree(WORK / "ingest", ignore_errors=True)
        print(f"real build of {r['pages']} pages ({r['chunks']} chunks, real encoder): {r['seconds']} s, "
              f"{r['pages'] / r['seconds']:.2f} pages/s, peak RSS {r['rss_mb']} MB")
        return
    print("vectors: SYNTHETIC clustered unit vectors (not the encoder), dim 384; queries one at a time; "
          "recall@10 against exact IndexFlatIP search\n", flush=True)
    rows, previous = [], {}
    for n in (int(s) for s in args.sizes.split(",")):
        rows += bench_size(n, args.queries, args.budget, previous, set(args.kinds.split(",")) if args.kinds else None)
    shutil.rmtree(WORK, ignore_errors=True)
    print(f"\n{'chunks':>9} {'index':34} {'search':14} {'build s':>8} {'disk MB':>8} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'rec@10':>6} {'serve RSS MB':>12}")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['n']:>9,} {r['label']:34} {'skipped':14}")
            continue
        params = " ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact"
        print(f"{r['n']:>9,} {r['label']:34} {params:14} {r['build_s']:>8} {r['disk_mb']:>8} {r['p50_ms']:>7} "
              f"{r['p95_ms']:>7} {r['recall10']:>6} {r['serve_rss_mb']:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
