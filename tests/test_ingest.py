"""Reading pages: encodings, and files that are not pages get one clear message naming the file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rag.errors import BadInput
from rag.ingest import list_pages, read_page

PAGES = Path(__file__).parent / "data" / "pages"


def test_gbk_page_is_detected_and_decoded():
    page = read_page(PAGES / "gbk_page.txt")
    assert page.encoding == "gb18030"
    assert "垃圾分类" in page.text


def test_utf8_bom_is_removed():
    page = read_page(PAGES / "bom_page.txt")
    assert page.encoding == "utf-8-sig"
    assert page.text.startswith("城市公交线路调整")


@pytest.mark.parametrize("name, words", [
    ("empty.txt", "is empty"),
    ("blank.txt", "is empty"),
    ("binary.txt", "binary"),
    ("latin1.txt", "neither UTF-8 nor GB18030"),
])
def test_bad_files_name_the_file_and_the_problem(name, words):
    with pytest.raises(BadInput) as info:
        read_page(PAGES / name)
    assert name in str(info.value) and words in str(info.value)


def test_missing_and_empty_seed_folders(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        list_pages(tmp_path / "nope")
    with pytest.raises(BadInput, match="holds no .txt page"):
        list_pages(tmp_path)


def test_huge_page_is_refused(tmp_path):
    big = tmp_path / "huge.txt"
    big.write_text("字" * 2_000_000, encoding="utf-8")
    with pytest.raises(BadInput, match="huge.txt: is .* bytes"):
        read_page(big)


def test_cli_reports_a_bad_page_in_one_line_without_traceback(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\x00\x01\x02binary")
    proc = subprocess.run([sys.executable, "-m", "rag", "articles", "--seeds", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "a.txt" in proc.stderr
