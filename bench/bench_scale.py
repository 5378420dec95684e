"""FAISS index kinds at 10k / 100k / 1M chunks: build time, disk size, query p50/p95, peak RSS, recall@10.

    .venv/bin/python bench/bench_scale.py [--sizes 10000,100000,1000000] [--queries 200] [--budget 1800]
    .venv/bin/python bench/bench_scale.py --sizes 1000000 --kinds rag,ivf-fp16 --nprobe 256,384
    .venv/bin/python bench/bench_scale.py --ingest-pages 60    # a real build: time and peak RSS

The vectors are SYNTHETIC (the encoder embeds ~18 passages/s on 2 cores: 1M real chunks would take
15 hours) but DERIVED FROM REAL e5 VECTORS, as the synthetic corpus's text is derived from real
sentences (--vectors e5mix, the default): each chunk vector is normalize(mean of 2-4 distinct random
real sentence vectors + N(0, 0.01^2) per dimension), the real sentence vectors being an index's
``sentences.npy`` (--sentences; by default /tmp/eval-index2/sentences.npy, else an index of the seed
pages is built once with the real encoder). The queries are REAL question vectors: the ``question``
fields of tests/data/qa_residents.jsonl encoded by the real encoder with its query prompt.
(--vectors clusters is the older generator: N/40 tight clusters of near-identical unit vectors.)

The exact top-10 (IndexFlatIP) is the reference. Two recall@10 figures: strict (the share of the exact
top-10 ids returned) and tie-aware (ann-benchmarks' definition: a returned id counts when its true
similarity is >= the exact 10th similarity - 1e-3), since near-ties make the strict figure partly
tie-breaking noise. Each index kind is built in its own process (peak RSS of the build) and served from
its file in another (peak RSS of serving = load + queries); queries are run one at a time, as the chat
asks them, with faiss.omp_set_num_threads(2). A build whose time, extrapolated from the smaller size,
would pass --budget seconds is skipped, and the table says so. Artifacts (vectors, indexes) go to
test-artifacts/bench_scale/ and are removed at the end.
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
NOISE = 0.01  # per dimension: a noise vector of norm ~0.2 on a mean of real vectors of norm ~0.95
TIE = 1e-3  # ann-benchmarks' epsilon for the tie-aware recall
DEFAULT_SENTENCES = Path("/tmp/eval-index2/sentences.npy")


def _rss_mb() -> float:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _normalize(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def real_sentence_vectors(path: Path | None) -> np.ndarray:
    """Real e5 passage vectors of sentences: an index's sentences.npy, or one built from the seeds."""
    if path is None:
        path = DEFAULT_SENTENCES
        if not path.exists():
            path = WORK / "seed-index" / "sentences.npy"
            if not path.exists():
                print(f"no {DEFAULT_SENTENCES}: indexing the seed pages with the real encoder (a few minutes)",
                      flush=True)
                sys.path.insert(0, str(ROOT))
                from rag.pipeline import build_index

                build_index(ROOT / "seeds", path.parent)
    if not path.exists():
        sys.exit(f"bench_scale: no sentence vectors at {path}")
    return _normalize(np.load(path).astype(np.float32))


def real_query_vectors(n: int) -> np.ndarray:
    """The first n questions of tests/data/qa_residents.jsonl, encoded by the real encoder (query prompt)."""
    sys.path.insert(0, str(ROOT))
    from rag.embed import get_encoder

    lines = (ROOT / "tests" / "data" / "qa_residents.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()][:n]
    return np.asarray(get_encoder().encode_queries(questions), dtype=np.float32)


def make_vectors_e5mix(n: int, real: np.ndarray, seed: int) -> np.ndarray:
    """n chunk vectors, each normalize(mean of 2-4 random real vectors + Gaussian noise)."""
    gen = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        k = gen.integers(2, 5, e - s)
        picks = gen.integers(0, len(real), (e - s, 4))
        acc = np.zeros((e - s, DIM), dtype=np.float32)
        for j in range(4):
            use = k > j
            acc[use] += real[picks[use, j]]
        acc /= k[:, None].astype(np.float32)
        acc += NOISE * gen.standard_normal((e - s, DIM)).astype(np.float32)
        out[s:e] = _normalize(acc)
    return out


def make_vectors_clusters(n: int, seed: int) -> np.ndarray:
    """The older generator: n unit vectors around N/40 tight cluster centres sharing a common direction."""
    rng = np.random.default_rng(12345)
    n_centres = max(16, n // 40)
    common = rng.standard_normal(DIM).astype(np.float32)
    common /= np.linalg.norm(common)
    centres = _normalize(rng.standard_normal((n_centres, DIM)).astype(np.float32))
    centres = _normalize(centres + 2.0 * common)
    out = np.empty((n, DIM), dtype=np.float32)
    gen = np.random.default_rng(seed)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        block = centres[gen.integers(0, n_centres, e - s)] + 0.025 * gen.standard_normal((e - s, DIM)).astype(np.float32)
        out[s:e] = _normalize(block)
    return out


def kinds(n: int, nlist: int | None, nprobes: list[int], efs: list[int]) -> list[dict]:
    nlist = nlist or int(4 * math.sqrt(n)) // 16 * 16
    ivf = [{"nprobe": p} for p in nprobes]
    hnsw = [{"efSearch": e} for e in efs]
    return [
        {"kind": "rag", "search": [{}]},  # what rag.store builds at this size, with its own search settings
        {"kind": "flat", "search": [{}]},
        {"kind": "hnsw", "M": 32, "efConstruction": 80, "search": hnsw},
        {"kind": "hnsw16", "M": 16, "efConstruction": 80, "search": hnsw},
        {"kind": "ivf-flat", "nlist": nlist, "search": ivf},
        {"kind": "ivf-hnsw-flat", "nlist": nlist, "search": ivf},
        {"kind": "ivf-sq8", "nlist": nlist, "search": ivf},
        {"kind": "ivf-fp16", "nlist": nlist, "search": ivf},
    ]


def _make_index(spec: dict):
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    kind = spec["kind"]
    if kind == "flat":
        return faiss.IndexFlatIP(DIM)
    if kind.startswith("hnsw"):
        idx = faiss.IndexHNSWFlat(DIM, spec["M"], ip)
        idx.hnsw.efConstruction = spec["efConstruction"]
        return idx
    quantizer = f"IVF{spec['nlist']}_HNSW32" if kind == "ivf-hnsw-flat" else f"IVF{spec['nlist']}"
    storage = {"ivf-flat": "Flat", "ivf-hnsw-flat": "Flat", "ivf-sq8": "SQ8", "ivf-fp16": "SQfp16"}[kind]
    return faiss.index_factory(DIM, f"{quantizer},{storage}", ip)


def worker_build(args: dict) -> dict:
    """Build one index from the stored vectors and write it; time, file size, peak RSS."""
    import faiss

    faiss.omp_set_num_threads(2)
    base = np.load(args["vectors"], mmap_mode="r")
    spec = args["spec"]
    t0 = time.perf_counter()
    if spec["kind"] == "rag":
        sys.path.insert(0, str(ROOT))
        from rag.config import Settings
        from rag.store import _faiss_index

        idx, kind, params = _faiss_index(base, Settings().retrieval.exact_search_max)
        seconds = time.perf_counter() - t0
        faiss.write_index(idx, args["out"])
        return {"build_s": round(seconds, 1), "train_s": "n/a",
                "disk_mb": round(Path(args["out"]).stat().st_size / 2**20, 1), "build_rss_mb": round(_rss_mb()),
                "chosen": f"{kind} {params}"}
    idx = _make_index(spec)
    train_s = 0.0
    if not idx.is_trained:
        rng = np.random.default_rng(0)
        size = min(len(base), args["train"], 64 * spec["nlist"])
        sample = np.ascontiguousarray(base[np.sort(rng.choice(len(base), size, replace=False))])
        idx.train(sample)
        train_s = time.perf_counter() - t0
        del sample
    for s in range(0, len(base), 50_000):  # added in batches: the build never holds a second full copy
        idx.add(np.ascontiguousarray(base[s:s + 50_000]))
        if s and s % 200_000 == 0:
            print(f"  added {s:,} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    faiss.write_index(idx, args["out"])
    return {"build_s": round(seconds, 1), "train_s": round(train_s, 1),
            "disk_mb": round(Path(args["out"]).stat().st_size / 2**20, 1), "build_rss_mb": round(_rss_mb())}


def worker_serve(args: dict) -> dict:
    """Load one index file and run the queries one by one with each search setting; ids to a file."""
    import faiss

    faiss.omp_set_num_threads(2)
    idx = faiss.read_index(args["out"])
    queries = np.load(args["queries"])
    rows = []
    for i, params in enumerate(args["spec"]["search"]):
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
        np.save(f"{args['out']}.ids{i}.npy", np.asarray(found))
        times.sort()
        rows.append({"params": params, "p50_ms": round(times[len(times) // 2], 2),
                     "p95_ms": round(times[int(0.95 * len(times))], 2)})
    filtered = {}
    if args["spec"]["kind"] == "rag":  # rag's filtered search (exact over the allowed rows): its latency
        sys.path.insert(0, str(ROOT))
        from rag.store import FaissStore, Where

        store, rng = FaissStore(idx, None), np.random.default_rng(0)
        for share in (0.01, 0.25):
            where = Where(rows=np.sort(rng.choice(idx.ntotal, max(1, int(share * idx.ntotal)), replace=False)))
            times = []
            for q in queries[:50]:
                t0 = time.perf_counter()
                store.dense(q, 10, where)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            filtered[f"{share:.0%}"] = [round(times[len(times) // 2], 1), round(times[int(0.95 * len(times))], 1)]
    return {"serve_rss_mb": round(_rss_mb()), "rows": rows, "filtered": filtered}


def recalls(found: np.ndarray, truth: np.ndarray, truth_sims: np.ndarray, base: np.ndarray,
            queries: np.ndarray) -> tuple[float, float]:
    """Strict recall@10 (overlap with the exact top-10) and the tie-aware one (ann-benchmarks)."""
    strict, ties = [], []
    for f, t, ts, q in zip(found, truth, truth_sims, queries):
        strict.append(len(set(f.tolist()) & set(t.tolist())) / 10)
        ok = f[f >= 0]
        sims = base[np.sort(ok)] @ q if len(ok) else np.zeros(0)
        ties.append(int(np.sum(sims >= ts[9] - TIE)) / 10)
    return float(np.mean(strict)), float(np.mean(ties))


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


def exact_top10(base: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    exact = faiss.IndexFlatIP(DIM)
    exact.add(base)
    sims, ids = exact.search(queries, 10)
    return ids, sims


def bench_size(n: int, opts, queries: np.ndarray, real: np.ndarray | None, previous: dict) -> list[dict]:
    folder = WORK / str(n)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = make_vectors_e5mix(n, real, seed=1) if real is not None else make_vectors_clusters(n, seed=1)
    np.save(folder / "base.npy", base)
    np.save(folder / "queries.npy", queries)
    truth, truth_sims = exact_top10(base, queries)
    del base
    base = np.load(folder / "base.npy", mmap_mode="r")
    print(f"[{n:,}] vectors + exact top-10 in {time.perf_counter() - t0:.0f} s (exact 1st/10th similarity: "
          f"{truth_sims[:, 0].mean():.3f}/{truth_sims[:, 9].mean():.3f})",
          flush=True)
    out = []
    only = set(opts.kinds.split(",")) if opts.kinds else None
    for spec in kinds(n, opts.nlist, [int(x) for x in opts.nprobe.split(",")], [int(x) for x in opts.ef.split(",")]):
        if only and spec["kind"] not in only:
            continue
        label = spec["kind"] + "".join(f" {k}={v}" for k, v in spec.items() if k not in ("kind", "search"))
        est = previous.get(spec["kind"])
        if est is not None and est * (n / previous["n"]) * (1.3 if "hnsw" in spec["kind"] else 1.0) > opts.budget:
            print(f"[{n:,}] {label}: skipped (build would take ~{est * n / previous['n']:.0f} s > budget "
                  f"{opts.budget:.0f} s)", flush=True)
            out.append({"n": n, "label": label, "skipped": True})
            continue
        args = {"vectors": str(folder / "base.npy"), "queries": str(folder / "queries.npy"),
                "out": str(folder / f"{spec['kind']}.faiss"), "spec": spec, "train": opts.train}
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"[{n:,}] {label}: building, then serving {len(queries)} queries (load {' '.join(load)})", flush=True)
        try:
            built = _run_worker("build", args, timeout=opts.budget * 1.5 + 60)
            served = _run_worker("serve", args, timeout=1800)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"[{n:,}] {label}: failed ({exc})", flush=True)
            out.append({"n": n, "label": label, "skipped": True})
            continue
        previous[spec["kind"]] = built["build_s"]
        if "chosen" in built:
            label = f"rag: {built['chosen'].split()[0]}"
            print(f"[{n:,}] rag builds {built['chosen']}", flush=True)
        for i, row in enumerate(served["rows"]):
            found = np.load(f"{args['out']}.ids{i}.npy")
            strict, tie = recalls(found, truth, truth_sims, base, queries)
            rec = {"n": n, "label": label, **built, "serve_rss_mb": served["serve_rss_mb"], **row,
                   "recall10": round(strict, 3), "recall10_ties": round(tie, 3), "load": " ".join(load)}
            out.append(rec)
            print(f"[{n:,}] {label} {row['params']}: build {built['build_s']} s (train {built['train_s']} s), "
                  f"{built['disk_mb']} MB, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, recall@10 {strict:.3f} "
                  f"(tie-aware {tie:.3f}), serving RSS {served['serve_rss_mb']} MB, build RSS {built['build_rss_mb']} MB, "
                  f"load {' '.join(load)}", flush=True)
        for share, (p50, p95) in served["filtered"].items():
            print(f"[{n:,}] {label}: filtered to {share} of the rows, p50 {p50} ms, p95 {p95} ms", flush=True)
        for f in folder.glob(f"{spec['kind']}.faiss*"):  # the next kind needs the disk space
            f.unlink()
    previous["n"] = n
    del base
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
    ap.add_argument("--budget", type=float, default=1800, help="seconds one build may take (default 1800)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--kinds", default=None,
                    help="only these kinds: rag (what rag.store builds at this size),flat,hnsw,hnsw16,ivf-flat,ivf-hnsw-flat,"
                         "ivf-sq8,ivf-fp16 (default: all)")
    ap.add_argument("--vectors", choices=["e5mix", "clusters"], default="e5mix")
    ap.add_argument("--sentences", type=Path, default=None, help=f"real sentence vectors (default {DEFAULT_SENTENCES})")
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4*sqrt(n))")
    ap.add_argument("--nprobe", default="64,128,256,384,512")
    ap.add_argument("--ef", default="128,256,512")
    ap.add_argument("--train", type=int, default=200_000, help="IVF training sample, at most (default 200000)")
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
    WORK.mkdir(parents=True, exist_ok=True)
    if args.vectors == "e5mix":
        real = real_sentence_vectors(args.sentences)
        queries = real_query_vectors(args.queries)
        print(f"vectors: SYNTHETIC, each normalize(mean of 2-4 of {len(real)} REAL e5 sentence vectors + N(0, {NOISE}^2)); "
              f"queries: {len(queries)} REAL question vectors (qa_residents.jsonl, query prompt)\n", flush=True)
    else:
        real = None
        rng = np.random.default_rng(7)
        queries = _normalize(make_vectors_clusters(1000, seed=1)[rng.choice(1000, args.queries, replace=False)]
                             + 0.02 * rng.standard_normal((args.queries, DIM)).astype(np.float32))
        print("vectors: SYNTHETIC tight clusters (not the encoder); queries perturbed passages\n", flush=True)
    rows, previous = [], {}
    for n in (int(s) for s in args.sizes.split(",")):
        rows += bench_size(n, args, queries, real, previous)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(f"\n{'chunks':>9} {'index':34} {'search':14} {'build s':>8} {'disk MB':>8} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'rec@10':>6} {'tie-rec':>7} {'serve RSS MB':>12}")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['n']:>9,} {r['label']:34} {'skipped':14}")
            continue
        params = " ".join(f"{k}={v}" for k, v in r["params"].items()) or \
            ("its own" if r["label"].startswith("rag") else "exact")
        print(f"{r['n']:>9,} {r['label']:34} {params:14} {r['build_s']:>8} {r['disk_mb']:>8} {r['p50_ms']:>7} "
              f"{r['p95_ms']:>7} {r['recall10']:>6} {r['recall10_ties']:>7} {r['serve_rss_mb']:>12}")


if __name__ == "__main__":
    main()
