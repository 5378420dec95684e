"""Warm latency of search and ask on the seed index (model and index loaded once), per retriever.

    .venv/bin/python bench/bench_query.py [--index index] [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default=str(ROOT / "index"))
    ap.add_argument("--qa", default=str(ROOT / "tests" / "data" / "qa.jsonl"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from rag.evaluate import load_qa
    from rag.pipeline import get_engine

    questions = [q.question for q in load_qa(args.qa)]
    t0 = time.perf_counter()
    engine = get_engine(args.index)
    engine.search(questions[0])  # load the encoder
    print(f"cold start (index + encoder load, first query): {time.perf_counter() - t0:.1f} s")
    print(f"{len(questions)} questions x {args.repeat}, warm, 2 cores\n")
    print(f"{'operation':18} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}")
    rows = []
    for label, fn in [
        ("search bm25", lambda q: engine.search(q, retriever="bm25")),
        ("search dense", lambda q: engine.search(q, retriever="dense")),
        ("search hybrid", lambda q: engine.search(q, retriever="hybrid")),
        ("ask (extractive)", lambda q: engine.ask(q)),
    ]:
        times = []
        for _ in range(args.repeat):
            for q in questions:
                s = time.perf_counter()
                fn(q)
                times.append((time.perf_counter() - s) * 1000)
        rows.append((label, statistics.median(times)))
        print(f"{label:18} {statistics.median(times):>10.1f} {_pct(times, 0.9):>8.1f} {max(times):>8.1f}")
    hybrid = dict(rows)["search hybrid"]
    print(f"\nask / hybrid search: {dict(rows)['ask (extractive)'] / hybrid:.2f}x; "
          f"hybrid / bm25: {hybrid / dict(rows)['search bm25']:.1f}x")


if __name__ == "__main__":
    main()
