"""llm mode timings with 1 and with 4 simultaneous users: time to the first streamed token and to
the full checked answer, as a user waits for them (queue included), next to the extractive answer;
and how the answers ended (finished and checked, or fallbacks by reason).

    .venv/bin/python bench/bench_llm.py [--index index] [--limit 24] [--users 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _ask_timed(engine, question: str) -> dict:
    """Ask in llm mode; the times a user sees, from the moment the question is asked."""
    t0 = time.perf_counter()
    first: list[float] = []
    states: list[dict] = []

    def on_delta(_piece):
        if not first:
            first.append((time.perf_counter() - t0) * 1000)

    ans = engine.ask(question, on_delta=on_delta, on_status=states.append)
    ahead = max((s.get("ahead", 0) for s in states), default=0)
    return {"first_ms": first[0] if first else None, "total_ms": (time.perf_counter() - t0) * 1000,
            "mode": ans.mode, "finish": (ans.check or {}).get("finish_reason"), "ahead": ahead,
            "generate_ms": ans.timings_ms.get("generate_ms")}


def _row(label: str, xs: list[float]) -> str:
    if not xs:
        return f"{label:34} {'-':>10} {'-':>8}"
    p90 = sorted(xs)[int(0.9 * (len(xs) - 1))]
    return f"{label:34} {statistics.median(xs):>10.0f} {p90:>8.0f}"


def _report(title: str, runs: list[dict]) -> None:
    print(f"\n{title}: {len(runs)} answers")
    print(f"{'':34} {'median ms':>10} {'p90 ms':>8}")
    print(_row("first streamed token (as waited)", [r["first_ms"] for r in runs if r["first_ms"] is not None]))
    print(_row("full checked answer (as waited)", [r["total_ms"] for r in runs]))
    print(_row("model generation alone", [r["generate_ms"] for r in runs if r["generate_ms"]]))
    print("most questions ahead in the queue: " + str(max(r["ahead"] for r in runs)))
    ends = Counter(r["mode"] + (f" ({r['finish']})" if r["finish"] else "") for r in runs)
    print("answers: " + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default=str(ROOT / "index"))
    ap.add_argument("--qa", default=str(ROOT / "tests" / "data" / "qa.jsonl"))
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--users", type=int, default=4)
    args = ap.parse_args()
    from rag.evaluate import load_qa
    from rag.pipeline import get_engine

    questions = [q.question for q in load_qa(args.qa) if q.answerable][: args.limit]
    engine = get_engine(args.index, answer_mode="llm")
    t0 = time.perf_counter()
    engine.ask(questions[0])  # start the worker and load the model; warm the encoder
    print(f"worker started and model loaded: {time.perf_counter() - t0:.1f} s; 2 cores")
    extractive = []
    for q in questions:
        t = time.perf_counter()
        engine.ask(q, mode="extractive")
        extractive.append((time.perf_counter() - t) * 1000)
    print("\n" + _row("extractive answer", extractive))

    _report("1 user", [_ask_timed(engine, q) for q in questions])

    runs: list[dict] = []
    lock = threading.Lock()

    def user(offset: int) -> None:
        for q in questions[offset::args.users]:
            r = _ask_timed(engine, q)
            with lock:
                runs.append(r)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(args.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _report(f"{args.users} simultaneous users (the same questions, split between them)", runs)


if __name__ == "__main__":
    main()
