"""A WHOLE rag index at 100k / 1M chunks served by rag's own engine: build time, disk size, load time,
search and ask p50/p95, peak RSS of the serving process and what holds it.

    .venv/bin/python bench/bench_serve.py --chunks 100000
    .venv/bin/python bench/bench_serve.py --chunks 1000000 [--source /tmp/eval-index3] [--keep]
    .venv/bin/python bench/bench_serve.py --index test-artifacts/bench_serve/index-1000000  # serve a kept one

bench_scale.py measures the FAISS index alone; this writes a complete index folder (articles, chunks,
sentences and their vectors, tokenizer files, FAISS + bm25s) with ``rag.index.write_index`` and serves
it with ``rag.pipeline.get_engine`` in a fresh process, as ``rag serve`` would.

The corpus is SYNTHETIC, made without the encoder (it embeds ~18 passages/s on 2 cores): articles of 9
real sentences of the source index's articles (--source, an index built by bench/build_eval_index.py),
their digits varied, under a real title, 8 articles a page, cut into chunks by rag.chunk (about 4
chunks an article). A sentence's vector is normalize(its real e5 vector + N(0, 0.01^2)), a chunk's
normalize(mean of the real vectors of its 2-4 sentences + noise). The index records the bundled model
and runtime onnx-fp32, so the engine encodes the questions with the real encoder: the ``question``
fields of tests/data/qa_residents.jsonl. Shortcuts, said in the output: the tokenizer (terms, places)
is the source articles' (the synthetic text is made of their sentences), and a sentence's places are
those of its source sentence (digits do not change them); with few source sentences the BM25
vocabulary is small and its posting lists long, so BM25 is slower than over real text.

Peak RSS is VmHWM of the serving process (load + encoder + questions), also read after each step.
Artifacts go to test-artifacts/bench_serve/ and the index is removed at the end (unless --keep).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = ROOT / "test-artifacts" / "bench_serve"
NOISE = 0.01
SENTENCES_PER_ARTICLE = 9
ARTICLES_PER_PAGE = 8


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss() -> str:
    return f"RSS {_status_mb('VmRSS'):,.0f} MB (peak {_status_mb('VmHWM'):,.0f})"


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs), p)) if xs else float("nan")


def _normalize(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


_DIGITS = re.compile(r"\d+")


def _vary(text: str, rng: np.random.Generator) -> str:
    """The sentence with each number replaced, half the time, by a random one of as many digits."""
    def sub(m: re.Match) -> str:
        if rng.random() < 0.5:
            return m.group(0)
        s = m.group(0)
        first = str(rng.integers(1, 10)) if len(s) > 1 else str(rng.integers(0, 10))
        return first + "".join(str(d) for d in rng.integers(0, 10, len(s) - 1))
    return _DIGITS.sub(sub, text)


def build(out: Path, target: int, source: Path, seed: int = 0, intern: bool = True) -> dict:
    from dataclasses import replace

    from rag import store as store_mod
    from rag.chunk import chunk_article
    from rag.config import Settings
    from rag.index import load_index, write_index
    from rag.pipeline import _tokenizer
    from rag.zh import split_sentences, years_in

    rng = np.random.default_rng(seed)
    t_all = time.perf_counter()
    src = load_index(source)
    src_articles = list(src.articles.values())
    src_vecs = _normalize(np.asarray(src.sentence_vectors, dtype=np.float32))
    pool = [(src.articles[r["article_id"]], src.articles[r["article_id"]].text[r["start"]:r["end"]])
            for r in src.sentences]
    by_art: dict[str, list[int]] = {}
    for i, (a, _) in enumerate(pool):
        by_art.setdefault(a.article_id, []).append(i)
    art_ids = list(by_art)
    t = time.perf_counter()
    tokenizer = _tokenizer(src_articles)
    t_tok_src = time.perf_counter() - t
    src_chars = sum(len(a.title) + len(a.text) for a in src_articles)
    places_of = [tuple(tokenizer.place_names(text)) for _, text in pool]
    print(f"source {source}: {len(src_articles)} articles, {len(pool)} sentences; tokenizer of the source "
          f"articles {t_tok_src:.1f} s ({src_chars:,} chars)", flush=True)

    settings = Settings()
    articles, chunks, sentences, sent_src = [], [], [], []
    chunk_sent: list[tuple[int, int]] = []  # each chunk's sentence rows [a, b)
    t = time.perf_counter()
    i = 0
    while len(chunks) < target:
        home = art_ids[int(rng.integers(len(art_ids)))]
        head = src.articles[home]
        own = by_art[home]
        # half the sentences from the title's own article (in order), the rest from anywhere
        picks = sorted(rng.choice(own, min(len(own), SENTENCES_PER_ARTICLE // 2 + 1), replace=False).tolist())
        picks += rng.integers(0, len(pool), SENTENCES_PER_ARTICLE - len(picks)).tolist()
        texts = [_vary(pool[p][1], rng) for p in picks]
        text = "".join(texts)
        aid = f"syn{i:07d}-01"
        art = replace(head, article_id=aid, text=text, source=f"syn{i // ARTICLES_PER_PAGE:06d}.txt", segments=(),
                      continuation=False, provisional_title=False)
        # the article's sentences as rag splits them; a split sentence keeps its source's vector and places
        spans = split_sentences(text)
        offs, pos = [], 0
        for tx in texts:
            offs.append((pos, pos + len(tx)))
            pos += len(tx)
        row0 = len(sentences)
        k = 0
        for s, e in spans:
            while k < len(offs) - 1 and s >= offs[k][1]:
                k += 1
            p = picks[k]
            sentences.append({"article_id": aid, "start": s, "end": e, "places": list(places_of[p]),
                              "years": years_in(text[s:e])})
            sent_src.append(p)
        starts = np.array([s for s, _ in spans])
        ends = np.array([e for _, e in spans])
        for c in chunk_article(art, settings.chunk):
            a = row0 + int(np.searchsorted(ends, c.start, side="right"))
            b = row0 + int(np.searchsorted(starts, c.end, side="left"))
            chunk_sent.append((a, max(b, a + 1)))
            chunks.append(c)
        articles.append(art)
        i += 1
        if i % 25_000 == 0:
            print(f"  {i:,} articles, {len(chunks):,} chunks, {len(sentences):,} sentences "
                  f"({time.perf_counter() - t:.0f} s) {_rss()}", flush=True)
    t_text = time.perf_counter() - t
    print(f"text: {len(articles):,} articles, {len(chunks):,} chunks, {len(sentences):,} sentences in "
          f"{t_text:.0f} s", flush=True)

    t = time.perf_counter()
    dim = src_vecs.shape[1]
    sent_src_a = np.array(sent_src, dtype=np.int32)
    sentence_vectors = np.empty((len(sentences), dim), dtype=np.float16)
    for s in range(0, len(sentences), 100_000):
        block = src_vecs[sent_src_a[s:s + 100_000]] + rng.normal(0, NOISE, (len(sent_src_a[s:s + 100_000]), dim))
        sentence_vectors[s:s + 100_000] = _normalize(block.astype(np.float32))
    vectors = np.empty((len(chunks), dim), dtype=np.float32)
    bounds = np.array(chunk_sent, dtype=np.int64)
    for s in range(0, len(chunks), 20_000):
        bb = bounds[s:s + 20_000]
        w = np.zeros((len(bb), len(pool)), dtype=np.float32)
        for r, (a, b) in enumerate(bb):
            np.add.at(w[r], sent_src_a[a:b], 1.0 / (b - a))
        block = w @ src_vecs + rng.normal(0, NOISE, (len(bb), dim)).astype(np.float32)
        vectors[s:s + 20_000] = _normalize(block)
    t_vec = time.perf_counter() - t
    print(f"vectors: {t_vec:.0f} s {_rss()}", flush=True)

    # time write_index's parts: jieba (the BM25 tokens), bm25s, faiss
    spent = {"jieba": 0.0, "bm25s": 0.0, "faiss": 0.0}
    tok_fn = tokenizer.tokenize
    done = [0]

    def timed_tokenize(text):
        t0 = time.perf_counter()
        # interned: rag's own token lists hold a new str per token (~1.1 GB a 100k chunks while bm25s
        # indexes them, measured: build peak 1.9 GB); interned, a 1M build fits beside the other helpers
        out = [sys.intern(w) for w in tok_fn(text)] if intern else tok_fn(text)
        spent["jieba"] += time.perf_counter() - t0
        done[0] += 1
        if done[0] % 100_000 == 0:
            print(f"  jieba: {done[0]:,} chunks ({spent['jieba']:.0f} s)", flush=True)
        return out

    tokenizer.tokenize = timed_tokenize
    faiss_index = store_mod._faiss_index

    def timed_faiss(*a, **kw):
        t0 = time.perf_counter()
        out = faiss_index(*a, **kw)
        spent["faiss"] += time.perf_counter() - t0
        print(f"  faiss {out[1]} {out[2]}: {spent['faiss']:.0f} s", flush=True)
        return out

    store_mod._faiss_index = timed_faiss
    import bm25s

    bm25_index = bm25s.BM25.index

    def timed_bm25(self, *a, **kw):
        t0 = time.perf_counter()
        out = bm25_index(self, *a, **kw)
        spent["bm25s"] += time.perf_counter() - t0
        print(f"  bm25s: {spent['bm25s']:.0f} s", flush=True)
        return out

    bm25s.BM25.index = timed_bm25
    t = time.perf_counter()
    try:
        write_index(out, articles=articles, chunks=chunks, vectors=vectors, settings=settings, tokenizer=tokenizer,
                    model_name=src.model, model_runtime="onnx-fp32", seeds={}, terms=tokenizer.terms,
                    sentences=sentences, sentence_vectors=sentence_vectors)
    finally:
        store_mod._faiss_index = faiss_index
        bm25s.BM25.index = bm25_index
    t_write = time.perf_counter() - t
    disk = {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    fig = {"chunks": len(chunks), "articles": len(articles), "sentences": len(sentences),
           "text_s": round(t_text, 1), "vectors_s": round(t_vec, 1), "write_index_s": round(t_write, 1),
           **{f"{k}_s": round(v, 1) for k, v in spent.items()},
           "rest_of_write_s": round(t_write - sum(spent.values()), 1),
           "build_s": round(time.perf_counter() - t_all, 1), "disk_mb": round(sum(disk.values()) / 2**20),
           "source_tokenizer_s": round(t_tok_src, 1),
           "corpus_tokenizer_s_est": round(t_tok_src * sum(len(a.title) + len(a.text) for a in articles) / src_chars),
           "build_peak_rss_mb": round(_status_mb("VmHWM")), "tokens_interned": intern}
    big = sorted(disk.items(), key=lambda kv: -kv[1])[:6]
    print("disk: " + ", ".join(f"{k} {v / 2**20:,.0f} MB" for k, v in big), flush=True)
    return fig


def _deep_mb(items, n_total: int, size) -> float:
    """Estimated MB of n_total items from a sample's sizes."""
    sample = items[: min(len(items), 5000)]
    return sum(size(x) for x in sample) / max(1, len(sample)) * n_total / 2**20


def serve(index_dir: Path, n_questions: int) -> dict:
    """In this (fresh) process: load the index with rag's engine, ask, report times and RSS."""
    from sys import getsizeof as gs

    import faiss

    faiss.omp_set_num_threads(2)
    steps = {"imports": _status_mb("VmRSS")}
    from rag.pipeline import get_engine

    qs = [json.loads(line)["question"] for line in (ROOT / "tests/data/qa_residents.jsonl").open(encoding="utf-8")
          if line.strip()][:n_questions]
    t = time.perf_counter()
    engine = get_engine(index_dir)
    t_load = time.perf_counter() - t
    steps["load_index"] = _status_mb("VmRSS")
    t = time.perf_counter()
    engine.encoder.encode_queries(["预热"])
    t_enc = time.perf_counter() - t
    steps["encoder"] = _status_mb("VmRSS")
    t = time.perf_counter()
    engine.ask(qs[0])
    t_first = time.perf_counter() - t
    steps["first_ask"] = _status_mb("VmRSS")
    print(f"  load {t_load:.1f} s, encoder {t_enc:.1f} s, first ask {t_first:.1f} s; {_rss()}", flush=True)
    enc = []
    for q in qs[:20]:
        t = time.perf_counter()
        engine.encoder.encode_queries([q])
        enc.append((time.perf_counter() - t) * 1000)
    search, ask = [], []  # both include encoding the question (none is asked twice before it is timed)
    engine.__dict__.get("_query_cache", {}).clear()
    for q in qs:
        t = time.perf_counter()
        engine.search(q)
        search.append((time.perf_counter() - t) * 1000)
    engine.__dict__.get("_query_cache", {}).clear()  # each ask encodes its question too, as a user's does
    for q in qs:
        t = time.perf_counter()
        engine.ask(q)
        ask.append((time.perf_counter() - t) * 1000)
    steps["questions"] = _status_mb("VmRSS")
    ix = engine.index
    parts = {
        "chunks (columns)": ix.chunks.nbytes / 2**20,
        "articles": _deep_mb(list(ix.articles.values()), len(ix.articles),
                             lambda a: gs(a) + gs(a.text) + gs(a.title) + gs(a.article_id) + 100),
        "sentences (columns)": ix.sentences.nbytes / 2**20,
        "corpus_text": gs(getattr(ix.__dict__.get("corpus_text"), "text", "")) / 2**20,
        "term_idf": (gs(ix.__dict__.get("term_idf", {})) + 120 * len(ix.__dict__.get("term_idf", {}))) / 2**20,
    }
    bm = ix.store.bm25_index
    parts["bm25 arrays" + (" (mapped)" if isinstance(bm.scores["data"], np.memmap) else "")] = \
        sum(np.asarray(v).nbytes for v in bm.scores.values() if hasattr(v, "nbytes")) / 2**20
    parts["faiss (file)"] = (ix.path / "dense.faiss").stat().st_size / 2**20
    print("  RSS after each step (MB): " + ", ".join(f"{k} {v:,.0f}" for k, v in steps.items())
          + f"; at the end anonymous {_status_mb('RssAnon'):,.0f}, file-backed {_status_mb('RssFile'):,.0f}", flush=True)
    print("  estimated sizes (MB): " + ", ".join(f"{k} {v:,.0f}" for k, v in parts.items()), flush=True)
    return {"load_s": round(t_load, 1), "encoder_s": round(t_enc, 1), "first_ask_s": round(t_first, 1),
            "questions": len(qs), "encode_p50_ms": round(_pct(enc, 50), 1),
            "search_p50_ms": round(_pct(search, 50), 1), "search_p95_ms": round(_pct(search, 95), 1),
            "ask_p50_ms": round(_pct(ask, 50), 1), "ask_p95_ms": round(_pct(ask, 95), 1),
            "peak_rss_mb": round(_status_mb("VmHWM")), "rss_steps_mb": {k: round(v) for k, v in steps.items()},
            "sizes_mb": {k: round(v) for k, v in parts.items()}, "dense_index": ix.manifest.get("dense_index")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--source", type=Path, default=Path("/tmp/eval-index3"))
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--no-intern", action="store_true", help="keep write_index's token lists as rag makes them")
    ap.add_argument("--keep", action="store_true", help="keep the index folder")
    ap.add_argument("--index", type=Path, help="serve this existing index folder (one --keep left) instead of building one")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the fresh serving process
    args = ap.parse_args()
    if args.serve:
        print("SERVE " + json.dumps(serve(args.serve, args.questions)), flush=True)
        return
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.index:  # serve a kept index: its build figures are not known here
        out = args.index
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        fig = {"chunks": manifest["counts"]["chunks"], "build_s": float("nan"), "disk_mb": round(disk / 2**20)}
    else:
        out = WORK / f"index-{args.chunks}"
        fig = build(out, args.chunks, args.source, intern=not args.no_intern)
        print("BUILD " + json.dumps(fig), flush=True)
    try:
        proc = subprocess.run([sys.executable, __file__, "--serve", str(out), "--questions", str(args.questions)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
        print(proc.stdout, end="", flush=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SERVE ")), None)
        if line is None:
            sys.exit(f"bench_serve: the serving process failed (exit {proc.returncode})")
        result = {**fig, **json.loads(line[6:])}
        (WORK / f"result-{fig['chunks'] if args.index else args.chunks}.json").write_text(json.dumps(result, indent=2))
        print(f"| {fig['chunks']:,} | {fig['build_s']:.0f} | {fig['disk_mb']:,} | {result['load_s']} | "
              f"{result['search_p50_ms']} / {result['search_p95_ms']} | {result['ask_p50_ms']} / "
              f"{result['ask_p95_ms']} | {result['peak_rss_mb']:,} |", flush=True)
        print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    finally:
        if not args.keep and not args.index:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
