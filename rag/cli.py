"""Thin command line over the pipeline: argparse subcommands, JSON out, errors -> one line + exit 1
(usage errors, argparse's own, exit 2)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from .errors import BadInput, RagError
from .types import AnswerMode, Retriever

__all__ = ["main", "build_parser"]


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _settings(args: argparse.Namespace):
    from .config import Settings

    kw = {}
    if getattr(args, "model", None):
        kw["model"] = args.model
    if getattr(args, "cache", None):
        kw["cache_dir"] = args.cache
    if getattr(args, "mode", None):
        kw["answer_mode"] = args.mode
    if getattr(args, "llm_model", None):
        kw["llm_model"] = args.llm_model
    return Settings.of(**kw)


def _cmd_articles(args: argparse.Namespace) -> int:
    from . import pipeline

    if args.report:  # per page: articles, title source, byline, unplaced blocks, repaired spaces
        from .ingest import list_pages, read_page
        from .segment import read_layout, render_report, render_totals

        layouts, failed = [], 0
        for path in args.pages or list_pages(args.seeds):
            try:  # a page that cannot be read is reported and the others still are
                page = read_page(path)
            except RagError as exc:
                print(f"== {exc}")
                failed += 1
                continue
            layouts.append(read_layout(page.text, page.name))
            print(render_report(layouts[-1]))
        print(render_totals(layouts) + (f"; {failed} pages not read" if failed else ""))
        return 1 if failed else 0
    for a in pipeline.load_articles(args.seeds, pages=args.pages or None):
        if args.json:
            _print_json(a.to_json())  # the same object as GET /api/articles
        else:
            flags = "".join([" [图片说明]" if a.kind == "caption" else "", " [续]" if a.continuation else "",
                             " [暂定标题]" if a.provisional_title and a.kind == "article" else ""])
            print(f"{a.article_id}  {a.title}{flags}")
            if a.byline:
                print(f"    {a.byline}")
            print(f"    {a.text[:80].replace(chr(10), ' ')}{'…' if len(a.text) > 80 else ''}")
    return 0


def _store_spec(args: argparse.Namespace):
    """The store asked for with --store/--milvus-uri/--milvus-token (None: the index's own)."""
    import os

    from .store import StoreSpec

    if args.milvus_token:  # also what an --add or a later rebuild connects with, in this process
        os.environ["RAG_MILVUS_TOKEN"] = args.milvus_token
    if args.store is None and args.milvus_uri:
        args.store = "milvus"
    if args.store is None:
        return None
    if (args.add or args.verify) and args.store:
        raise BadInput("--store applies to a full build; --add and --verify use the index's own store")
    return StoreSpec(args.store, args.milvus_uri, args.milvus_token)


def _cmd_index(args: argparse.Namespace) -> int:
    from . import pipeline

    settings = _settings(args)
    store = _store_spec(args)
    if args.verify:
        summary = pipeline.verify_index(args.index)
        print(f"index at {args.index} is whole: {summary['files']} files match their sha256; "
              f"{summary['articles']} articles, {summary['chunks']} chunks", file=sys.stderr)
        return 0
    if args.add:
        summary = pipeline.add_pages(args.add, args.index, seeds=args.seeds, settings=settings, wait=not args.no_wait)
        added = summary["added_pages"]
        names = ", ".join(added) if len(added) <= 5 else f"{len(added)} pages ({', '.join(added[:3])}, …)"
        if summary.get("reused_pages"):
            print(f"resumed: {summary['reused_pages']} page(s) embedded by an interrupted run were reused", file=sys.stderr)
        print(f"added {names}: {summary['new_chunks']} new chunks embedded, "
              f"{summary['reused_chunks']} kept; index now holds {summary['articles']} articles, "
              f"{summary['chunks']} chunks", file=sys.stderr)
        return 0
    summary = pipeline.build_index(args.seeds, args.index, settings=settings, if_stale=args.if_stale,
                                   wait=not args.no_wait, store=store)
    if summary["status"] == "fresh":
        print(f"index at {args.index} is up to date", file=sys.stderr)
        return 0
    if summary.get("reused_pages"):
        print(f"resumed: {summary['reused_pages']} page(s) embedded by an interrupted run were reused", file=sys.stderr)
    print(f"indexed {summary['pages']} pages: {summary['articles']} articles, {summary['chunks']} chunks "
          f"in {summary['seconds']} s -> {summary['index']}", file=sys.stderr)
    return 0


def _queries(arg: str | None):
    """(line number, text, normalised, error) of the one query given, or of each line of stdin.

    Standard input is read as bytes and each line decoded on its own, so an undecodable line
    becomes an error for that line only; blank lines are skipped. Control and zero-width
    characters are removed (``normalised`` says so).
    """
    from .ingest import argument_text, clean_question

    if arg is not None:
        text, changed = clean_question(argument_text(arg))
        yield 0, text, changed, None
        return
    if sys.stdin is None or sys.stdin.isatty():
        raise BadInput("give a query, or pipe one query per line on standard input")
    from .ingest import decode_line

    stream = getattr(sys.stdin, "buffer", None)
    lines = stream if stream is not None else (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
    for n, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        try:
            text, changed = clean_question(decode_line(raw, f"line {n}"))
        except BadInput as exc:
            yield n, raw.decode("utf-8", "replace"), False, str(exc)
            continue
        if text.strip():
            yield n, text, changed, None


def _filters(args: argparse.Namespace):
    """--paper, --region, --since, --until as Filters (None when none is given)."""
    from .meta import Filters

    f = Filters(paper=args.paper, region=args.region, since=args.since, until=args.until)
    return f or None


def _engine(args: argparse.Namespace, **overrides):
    from .pipeline import get_engine

    if getattr(args, "no_rerank", False):
        overrides["rerank"] = False
    return get_engine(args.index, settings=_settings(args), model=args.model, **overrides)


def _check_first(text: str | None) -> None:
    """A single bad query is reported before the index and model are loaded."""
    if text is not None:
        from .config import Settings
        from .ingest import argument_text, clean_question
        from .retrieve import check_query

        check_query(clean_question(argument_text(text))[0], Settings().answer)


def _cmd_search(args: argparse.Namespace) -> int:
    _check_first(args.query)
    _filters(args)  # since after until is said before the model loads
    engine = _engine(args)
    for line, query, normalised, error in _queries(args.query):
        batch = line > 0
        try:
            if error:
                raise BadInput(error)
            hits = engine.search(query, k=args.k, retriever=args.retriever, filters=_filters(args))
        except BadInput as exc:
            if not batch:
                raise
            _print_json({"query": query, "error": str(exc), "hits": [], "line": line})
            continue
        if args.json or batch:
            _print_json({"query": query, "hits": [h.to_json() for h in hits],  # as POST /api/search
                         **({"normalised": True} if normalised else {})})
        else:
            from .meta import describe_source, name_local_city

            for h in hits:
                print(f"[{h.rank}] {h.score:.4f}  {h.title}  ({describe_source(h)})")
                print("    " + name_local_city(h.chunk.text.replace("\n", " ")[:160], h.city))
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    _check_first(args.question)
    _filters(args)
    engine = _engine(args)
    history: list[str] = []
    for line, question, normalised, error in _queries(args.question):
        batch = line > 0
        try:
            if error:
                raise BadInput(error)
            stream = None
            if args.mode == AnswerMode.LLM and not (args.json or batch) and sys.stderr.isatty():
                # the model's words as they come, on the terminal only and marked as an unchecked draft
                drafted: list[str] = []

                def stream(piece):
                    if not drafted:
                        print("（草稿，核对前）", end="", file=sys.stderr)
                    drafted.append(piece)
                    print(piece, end="", file=sys.stderr, flush=True)
            ans = engine.ask(question, k=args.k, retriever=args.retriever,
                             history=history if args.follow else None, on_delta=stream, filters=_filters(args))
            if stream:
                print(file=sys.stderr)
        except BadInput as exc:
            if not batch:
                raise
            _print_json({"question": question, "error": str(exc), "answer": "", "refused": True, "citations": [],
                         "line": line})
            continue
        history.append(question)
        if args.json or batch:
            _print_json({**ans.to_json(), **({"normalised": True} if normalised else {})})  # as POST /api/ask
        else:
            if ans.fallback_reason and args.mode == AnswerMode.LLM and not ans.refused:
                from .pipeline import explain_fallback

                print(f"（{explain_fallback(ans)}。{ans.fallback_reason}）", file=sys.stderr)
            print(ans.answer)
            if ans.citations:
                from .meta import describe_source, name_local_city

                print("\n来源：")
                for c in ans.citations:
                    print(f"[{c.n}] 《{name_local_city(c.title, c.city)}》 {describe_source(c, c.line)}")
                    print(f"    “{name_local_city(c.excerpt, c.city)}”")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_answers, evaluate_heldout, evaluate_retrieval, format_table, load_qa

    paths = args.qa or ["tests/data/qa.jsonl"]
    items = [item for path in paths for item in load_qa(path)]
    if args.fit:
        from .evaluate import collect_evidence, fit_scoring
        from .score import ScoringParams, save_scoring

        engine = _engine(args)
        params = fit_scoring(collect_evidence(engine, items, ScoringParams()), ScoringParams(),
                             note=f"{len(items)} questions of {', '.join(paths)}")
        out = save_scoring(params, args.fit_out)
        _print_json({"written": str(out), "scoring": params.to_dict()})
        return 0
    retrievers = ["bm25", "dense", "hybrid"] if args.retriever == "all" else [args.retriever]
    rows = []
    engine = None
    for r in retrievers:
        engine = _engine(args, retriever=r)
        rows.append(evaluate_retrieval(engine, items, retriever=r, k=5))
    report: dict = {"questions": len(items), "retrieval": rows}
    if not args.no_answers and engine is not None:
        if args.mode == AnswerMode.LLM:
            report["answers"] = evaluate_answers(engine, items, ask=engine.ask, mode=AnswerMode.LLM)
        else:
            report["heldout"] = evaluate_heldout(engine, items)
    if args.json:
        _print_json(report)
        return 0
    print(f"{len(items)} questions ({sum(1 for i in items if i.answerable)} answerable) from {', '.join(paths)}\n")
    print("retrieval with the shipped scoring (rag/data/scoring.json, fitted on every page):")
    print(format_table(rows, ["retriever", "questions", "recall@1", "recall@5", "mrr", "median_ms"]))
    for row in rows:
        for m in row["misses"]:
            print(f"  {row['retriever']}: {m['id']} gold at rank {m['rank']}: {m['question']}")
    if "heldout" in report:
        h = report["heldout"]
        keys = ["answer_accuracy", "answerable_refused", "unanswerable_refused", "recall@1", "recall@5"]
        short = {"answer_accuracy": "acc", "answerable_refused": "ans_refused", "unanswerable_refused": "unans_refused",
                 "recall@1": "R@1", "recall@5": "R@5"}
        table = []
        for name, held, inside in [("all", h["heldout"], h["in_sample"])] + \
                [(k["kind"], k["heldout"], k["in_sample"]) for k in h["per_kind"]]:
            row = {"kind": name, "n": held["n"]}
            for key in keys:
                a, b = held[key], inside[key]
                row[short[key]] = "-" if a is None else f"{a:.3f} ({b:.3f})"
            table.append(row)
        print(f"\nanswers held out by page (leave-one-page-out over {len(h['pages'])} pages); in-sample in brackets:")
        print(format_table(table, ["kind", "n", *short.values()]))
        print(f"citations verbatim {h['heldout']['citations_verbatim']}  median ask {h['median_answer_ms']} ms")
        p = h["params_in_sample"]
        print("scoring fitted on every page: " + ", ".join(f"{k} {v:+.2f}" for k, v in p["weights"].items())
              + f", bias {p['bias']:+.2f}, threshold {p['threshold']:.3f}")
        for f in h["failures"]:
            state = "partial" if f["partial"] else ("refused" if f["declined"] else "answered")
            print(f"  {f['id']} [{f['kind']}] {state}: {f['question']} -> {f['answer'][:60]}")
    if "answers" in report:
        a = report["answers"]
        print()
        print(format_table([a], ["mode", "answer_accuracy", "refusal_accuracy", "false_refusal_rate",
                                 "citations_verbatim", "unsupported_numbers", "median_answer_ms"]))
        if a.get("checks"):
            print("  grounding check: " + ", ".join(f"{k} {v}" for k, v in a["checks"].items()))
        for f in a["failures"]:
            print(f"  {f['id']} {'refused' if f['refused'] else 'answered'}: {f['question']} -> {f['answer'][:60]}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .api import ApiOptions, serve

    options = ApiOptions(api_key=args.api_key or os.environ.get("RAG_API_KEY") or None,
                         max_body_bytes=args.max_body, rate_per_minute=args.rate_limit, burst=args.burst,
                         allow_uploads=args.allow_uploads or os.environ.get("RAG_ALLOW_UPLOAD", "") in ("1", "true", "yes"),
                         cors_origins=tuple(args.cors_origin or ()))
    serve(index_dir=args.index, seeds=args.seeds, host=args.host, port=args.port, settings=_settings(args),
          options=options)
    return 0


def _k_value(text: str) -> int:
    """--k: an integer in 1..100 (argparse reports anything else as a usage error, exit 2)."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer between 1 and 100, got {text!r}") from None
    if not 1 <= k <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {k}")
    return k


def _date_value(text: str) -> str:
    """--since/--until: a YYYY-MM-DD calendar day (anything else is a usage error, exit 2)."""
    from .meta import check_date

    try:
        return check_date(text, "date")
    except BadInput as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("date ")) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="rag", description="本地政策新闻问答：从报纸版面重建文章，检索并带引用地回答问题。")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, seeds=False, model=False):
        p.add_argument("--index", default="index", help="index folder (default: index)")
        if seeds:
            p.add_argument("--seeds", default="seeds", help="folder of page files (default: seeds)")
        p.add_argument("--model", default=None, help="encoder: a sentence-transformers name or folder "
                                                     "(default: the bundled multilingual-e5-small)")
        p.add_argument("--cache", default=None, help="model cache folder (default: $RAG_CACHE or ~/.cache/rag)")

    def llm_opts(p):
        p.add_argument("--mode", choices=[m.value for m in AnswerMode], default=None,
                       help="extractive (default) or llm: the local model phrases the answer, checked against the sources")
        p.add_argument("--llm-model", default=None, metavar="PATH",
                       help="a GGUF file for llm mode (default: $RAG_LLM_MODEL, else the bundled Qwen2.5 1.5B)")

    def filter_opts(p):
        p.add_argument("--paper", default=None, help="only articles of this paper (as in pages.toml)")
        p.add_argument("--region", default=None, help="only pages whose region or city contains this text")
        p.add_argument("--since", type=_date_value, default=None, metavar="YYYY-MM-DD",
                       help="only pages dated on or after this day")
        p.add_argument("--until", type=_date_value, default=None, metavar="YYYY-MM-DD",
                       help="only pages dated on or before this day")

    p = sub.add_parser("articles", help="list the articles rebuilt from the seed pages")
    p.add_argument("--seeds", default="seeds", help="folder of page files (default: seeds)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--report", action="store_true",
                   help="per page: articles with kind, title source, byline, unplaced blocks, spaces kept")
    p.add_argument("pages", nargs="*", metavar="FILE", help="page files to read instead of the seeds folder")
    p.set_defaults(func=_cmd_articles)

    p = sub.add_parser("index", help="build the index from the seed pages (or add pages to it)")
    common(p, seeds=True)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--add", nargs="+", metavar="FILE|DIR",
                      help="add or replace these pages (*.txt, not hidden; a folder: all its pages) without "
                           "re-embedding the rest; a killed add resumes when run again")
    what.add_argument("--if-stale", action="store_true", help="build only if the index is missing, stale or damaged")
    what.add_argument("--verify", action="store_true", help="check every index file against its sha256; build nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once if another process is writing the index (default: wait for it)")
    p.add_argument("--store", choices=["faiss", "milvus"], default=None,
                   help="where chunk vectors and BM25 text live (default: the index's store, else faiss)")
    p.add_argument("--milvus-uri", default=None, metavar="URI",
                   help="Milvus Lite path inside the index (default INDEX/milvus.db) or a server, http://host:19530")
    p.add_argument("--milvus-token", default=None, metavar="TOKEN",
                   help="Milvus server credentials, user:password or API key (else $RAG_MILVUS_TOKEN)")
    p.set_defaults(func=_cmd_index)

    retr = dict(choices=[r.value for r in Retriever], default=None, help="retriever (default: hybrid)")
    p = sub.add_parser("search", help="find passages; without QUERY, one query per line from stdin")
    p.add_argument("query", nargs="?")
    p.add_argument("--k", type=_k_value, default=5, help="hits to show, 1-100 (default 5)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--retriever", **retr)
    p.add_argument("--no-rerank", action="store_true", help="plain fused ranking, no sentence-level rerank")
    filter_opts(p)
    common(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("ask", help="answer a question with citations; without QUESTION, one per line from stdin")
    p.add_argument("question", nargs="?")
    p.add_argument("--k", type=_k_value, default=None, help="passages to answer from, 1-100 (default 5)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--retriever", **retr)
    p.add_argument("--follow", action="store_true", help="in batch mode, treat the lines as one conversation")
    filter_opts(p)
    llm_opts(p)
    common(p)
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("eval", help="Recall@1/5, MRR and answer accuracy on a question set")
    p.add_argument("--qa", action="append", help="question set (JSON lines; repeat for several); "
                   "default tests/data/qa.jsonl")
    p.add_argument("--fit", action="store_true", help="fit the scoring on every question and write it")
    p.add_argument("--fit-out", default=None, help="where --fit writes (default rag/data/scoring.json)")
    p.add_argument("--retriever", choices=[r.value for r in Retriever] + ["all"], default=Retriever.HYBRID.value)
    p.add_argument("--no-rerank", action="store_true")
    p.add_argument("--no-answers", action="store_true", help="retrieval figures only")
    p.add_argument("--json", action="store_true")
    llm_opts(p)
    common(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("serve", help="serve the web chat, the REST API and the OpenAI-compatible API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on the API and this key as "
                                                  "the chat's login password (default: $RAG_API_KEY; none: open)")
    p.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                   help="larger request bodies get 413 before they are read (default: 1048576)")
    p.add_argument("--rate-limit", type=float, default=120, metavar="PER_MINUTE",
                   help="API requests per minute per client address, 0 for none (default: 120)")
    p.add_argument("--burst", type=int, default=30, help="requests a client may make at once (default: 30)")
    p.add_argument("--allow-upload", "--allow-uploads", dest="allow_uploads", action="store_true",
                   help="let the chat's 资料库 tab upload, add and remove pages (also RAG_ALLOW_UPLOAD=1); "
                        "opens Gradio's upload route, closed by default")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable; default: CORS off)")
    llm_opts(p)
    common(p, seeds=True)
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rag`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="rag: %(message)s")
    logging.getLogger("rag").setLevel(logging.WARNING if args.quiet else logging.INFO)
    for noisy in ("bm25s", "faiss", "faiss.loader", "sentence_transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except RagError as exc:
        print(f"rag: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
