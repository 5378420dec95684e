"""Cold one-shot `rag ask` from a fresh shell: wall time and peak memory, before (the code at
--before, e.g. the main checkout, which answers through sentence-transformers and torch) and after
(this checkout: onnxruntime, no torch), and this checkout forced to the reference with
RAG_ENCODER=torch. Variants interleaved, --repeat runs each, median. The index must exist.

    .venv/bin/python bench/bench_oneshot.py --index index [--before /work/main] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a fresh wrapper per run: RUSAGE_CHILDREN then holds exactly that one `rag ask` process
WRAP = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[2:], cwd=sys.argv[1], capture_output=True, text=True)
wall = time.perf_counter() - t
print(json.dumps({"rc": p.returncode, "wall_s": wall, "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "out": p.stdout[:200], "err": p.stderr[-500:]}))
"""


def run_once(cwd: Path, question: str, index: str, env: dict) -> dict:
    cmd = [sys.executable, "-c", WRAP, str(cwd), sys.executable, "-m", "rag", "ask", question, "--index", index]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    res = json.loads(proc.stdout)
    if res["rc"] != 0:
        sys.exit(f"rag ask failed in {cwd}: {res['err']}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default=str(ROOT / "index"))
    ap.add_argument("--before", default="", help="a checkout of the code to compare with (e.g. /work/main)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--question", default="格尔木的开发区在全国排第几？")
    args = ap.parse_args()
    index = str(Path(args.index).resolve())
    variants = {}
    if args.before:
        variants["before"] = (Path(args.before).resolve(), {})
    variants["after (onnx)"] = (ROOT, {})
    variants["after, RAG_ENCODER=torch"] = (ROOT, {"RAG_ENCODER": "torch"})
    run_once(ROOT, args.question, index, {})  # warm the OS file cache and the converted model, not counted
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    answers = {}
    for n in range(args.repeat):
        for name, (cwd, env) in variants.items():
            r = run_once(cwd, args.question, index, env)
            runs[name].append(r)
            answers[name] = r["out"].splitlines()[0] if r["out"] else ""
            print(f"run {n + 1}/{args.repeat} {name}: {r['wall_s']:.2f} s, {r['peak_mb']:.0f} MB", file=sys.stderr,
                  flush=True)
    load = os.getloadavg()[0]
    print(f"cold `rag ask` ({args.question}), median of {args.repeat} fresh processes, load average {load:.1f} "
          f"on {os.cpu_count()} cores\n")
    print(f"{'variant':26} {'wall s':>7} {'peak MB':>8}  first answer line")
    for name, rs in runs.items():
        print(f"{name:26} {statistics.median(r['wall_s'] for r in rs):>7.2f} "
              f"{statistics.median(r['peak_mb'] for r in rs):>8.0f}  {answers[name][:40]}")
    if len(set(answers.values())) > 1:
        print("\nthe variants answered differently", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
