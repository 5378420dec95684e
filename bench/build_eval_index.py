"""Build the index the question sets are judged on: the seed pages plus the test pages that have
gold articles (tests/data/pages/*.gold.json), in a temporary seeds folder.

    .venv/bin/python bench/build_eval_index.py /tmp/eval-index
    .venv/bin/rag eval --index /tmp/eval-index --qa tests/data/qa_residents.jsonl --qa tests/data/qa.jsonl
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from rag.pipeline import build_index

ROOT = Path(__file__).resolve().parent.parent


def copy_eval_pages(dest: Path) -> list[Path]:
    """Copy the seed pages and the test pages with gold articles into ``dest``; return the originals."""
    pages = sorted((ROOT / "seeds").glob("*.txt"))
    for gold in sorted((ROOT / "tests/data/pages").glob("*.gold.json")):
        page = gold.with_name(gold.name[: -len(".gold.json")] + ".txt")
        if page.is_file():
            pages.append(page)
    for p in pages:
        shutil.copyfile(p, Path(dest) / p.name)
    return pages


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy_eval_pages(Path(tmp))
        print(build_index(tmp, out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/eval-index")
