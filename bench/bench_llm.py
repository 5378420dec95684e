"""llm mode timings: model assembly and load, time to the first streamed token and to the full
checked answer, next to the extractive answer, over the answerable questions of the question set.

    .venv/bin/python bench/bench_llm.py [--index index] [--limit 48]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default=str(ROOT / "index"))
    ap.add_argument("--qa", default=str(ROOT / "tests" / "data" / "qa.jsonl"))
    ap.add_argument("--limit", type=int, default=48)
    args = ap.parse_args()
    from rag.config import Settings
    from rag.evaluate import load_qa
    from rag.llm import get_llm
    from rag.pipeline import get_engine

    questions = [q.question for q in load_qa(args.qa) if q.answerable][: args.limit]
    t0 = time.perf_counter()
    llm = get_llm(None, Settings().cache_path())
    print(f"model ready (assembled if needed, loaded): {time.perf_counter() - t0:.1f} s (load {llm.load_seconds:.1f} s)")
    engine = get_engine(args.index, answer_mode="llm")
    engine.ask(questions[0])  # warm: encoder, and the system prompt in the model's cache
    first, total, extractive, modes = [], [], [], {}
    for q in questions:
        t = time.perf_counter()
        engine.ask(q, mode="extractive")
        extractive.append((time.perf_counter() - t) * 1000)
        ans = engine.ask(q)
        modes[ans.mode] = modes.get(ans.mode, 0) + 1
        if ans.timings_ms.get("first_token_ms"):
            first.append(ans.timings_ms["retrieve_ms"] + ans.timings_ms["answer_ms"] + ans.timings_ms["first_token_ms"])
            total.append(ans.timings_ms["total_ms"])
    print(f"{len(questions)} answerable questions, 2 cores; the model was asked for {len(first)}\n")
    print(f"{'':28} {'median ms':>10} {'p90 ms':>8}")
    p90 = lambda xs: sorted(xs)[int(0.9 * (len(xs) - 1))]  # noqa: E731
    print(f"{'extractive answer':28} {statistics.median(extractive):>10.0f} {p90(extractive):>8.0f}")
    print(f"{'llm: first streamed token':28} {statistics.median(first):>10.0f} {p90(first):>8.0f}")
    print(f"{'llm: full checked answer':28} {statistics.median(total):>10.0f} {p90(total):>8.0f}")
    print(f"\nllm full answer / extractive: {statistics.median(total) / statistics.median(extractive):.0f}x")
    print("answer modes: " + ", ".join(f"{k} {v}" for k, v in sorted(modes.items())))


if __name__ == "__main__":
    main()
