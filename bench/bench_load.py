"""Load on the HTTP API: a `rag serve` subprocess on loopback, N clients (each from its own 127.0.x.y
address, so each has its own rate-limit bucket under the default limits) asking M questions each,
mixed over POST /api/ask, POST /api/search and /v1/chat/completions (streamed and not), extractive mode.
Prints the success count, p50/p95 latency, throughput and the server's peak RSS (VmHWM).

    .venv/bin/python bench/bench_load.py [--index index] [--clients 20] [--questions 25]
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ("rest-ask", "openai", "openai-stream", "rest-search")


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(index: str, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rag", "serve", "--index", index, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("rag serve exited:\n" + log.read_text())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit("rag serve did not become ready")


def _one(http: httpx.Client, route: str, question: str) -> bool:
    """One request; True if it came back 200 with a cited answer (or hits)."""
    if route == "rest-ask":
        r = http.post("/api/ask", json={"question": question})
        return r.status_code == 200 and "answer" in r.json()
    if route == "rest-search":
        r = http.post("/api/search", json={"query": question, "k": 5})
        return r.status_code == 200 and bool(r.json()["hits"])
    body = {"model": "rag-extractive", "messages": [{"role": "user", "content": question}]}
    if route == "openai":
        r = http.post("/v1/chat/completions", json=body)
        return r.status_code == 200 and "rag" in r.json()
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return False
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    return lines[-1] == "data: [DONE]" and '"rag"' in lines[-2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default=str(ROOT / "index"))
    ap.add_argument("--qa", default=str(ROOT / "tests" / "data" / "qa.jsonl"))
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--questions", type=int, default=25, help="requests per client")
    ap.add_argument("--log", default="/tmp/rag-bench-load.log")
    args = ap.parse_args()
    if not 1 <= args.clients <= 200 or not 1 <= args.questions <= 200:
        sys.exit("clients and questions must be between 1 and 200")
    questions = [json.loads(line)["question"] for line in Path(args.qa).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    port = _free_port()
    proc = _start(args.index, port, Path(args.log))
    rss_idle = _kib(proc.pid, "VmRSS")
    times: dict[str, list[float]] = {r: [] for r in ROUTES}
    failures: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        source = f"127.0.{5 + c // 250}.{1 + c % 250}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          transport=httpx.HTTPTransport(local_address=source)) as http:
            for i in range(args.questions):
                route = ROUTES[(c + i) % len(ROUTES)]
                question = questions[(c * args.questions + i) % len(questions)]
                t0 = time.perf_counter()
                try:
                    ok = _one(http, route, question)
                    why = "bad answer"
                except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
                    ok, why = False, type(exc).__name__
                elapsed = time.perf_counter() - t0
                with lock:
                    (times[route].append(elapsed) if ok else failures.append(f"{route}: {why}"))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        peak = _kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    total = args.clients * args.questions
    every = [x for xs in times.values() for x in xs]
    print(f"{args.clients} clients x {args.questions} requests over loopback, extractive mode, default limits")
    print(f"success {len(every)}/{total}; p50 {_pct(every, 0.5) * 1000:.0f} ms, p95 {_pct(every, 0.95) * 1000:.0f} ms; "
          f"{len(every) / wall:.1f} answers/s over {wall:.1f} s")
    for route, xs in times.items():
        print(f"  {route:14s} n={len(xs):3d}  p50 {_pct(xs, 0.5) * 1000:6.0f} ms  p95 {_pct(xs, 0.95) * 1000:6.0f} ms")
    print(f"server RSS: {rss_idle / 1024:.0f} MiB idle, peak (VmHWM) {peak / 1024:.0f} MiB")
    if failures:
        print(f"failures: {len(failures)}, e.g. " + "; ".join(sorted(set(failures))[:5]))


if __name__ == "__main__":
    main()
