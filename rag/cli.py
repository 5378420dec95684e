"""Thin command line over the pipeline: argparse subcommands, JSON out, errors -> one line + exit 1."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .errors import RagError

__all__ = ["main"]


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _cmd_articles(args: argparse.Namespace) -> int:
    from . import pipeline

    articles = pipeline.load_articles(args.seeds)
    for a in articles:
        if args.json:
            _print_json({"article_id": a.article_id, "title": a.title, "subtitle": a.subtitle,
                         "byline": a.byline, "source": a.source, "kind": a.kind,
                         "continuation": a.continuation, "provisional_title": a.provisional_title,
                         "text": a.text})
        else:
            flags = "".join([" [图片说明]" if a.kind == "caption" else "", " [续]" if a.continuation else "",
                             " [暂定标题]" if a.provisional_title and a.kind == "article" else ""])
            print(f"{a.article_id}  {a.title}{flags}")
            if a.byline:
                print(f"    {a.byline}")
            print(f"    {a.text[:80].replace(chr(10), ' ')}{'…' if len(a.text) > 80 else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="rag", description="本地政策新闻问答：从报纸版面重建文章，检索并带引用地回答问题。")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("articles", help="list the articles rebuilt from the seed pages")
    p.add_argument("--seeds", default="seeds", help="folder of page files (default: seeds)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_articles)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rag`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
