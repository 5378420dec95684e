"""The 资料库 tab: the indexed pages as a table; with --allow-upload a page is uploaded, checked, added
(the same locked, atomic path as `rag index --add`) and answered from, then removed; without it
nothing can be written; bad files are Chinese messages and change nothing."""
from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request

import pytest

from .conftest import DATA, SEEDS
from .test_ui import _ask, _start, browser  # noqa: F401 - the browser fixture

NEW_PAGE = DATA / "library" / "wulan_goji.txt"
PAGES = DATA / "pages"


def _tree_hash(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".lock" not in p.name:
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def copies(index_dir, tmp_path):
    index, seeds = tmp_path / "index", tmp_path / "seeds"
    shutil.copytree(index_dir, index)
    shutil.copytree(SEEDS, seeds)
    return index, seeds


def _bad_files(tmp_path):
    from rag.ingest import MAX_PAGE_CHARS

    huge = tmp_path / "huge.txt"
    huge.write_text("标题\n\n" + "这是正文。" * (MAX_PAGE_CHARS // 5 + 10), encoding="utf-8")
    wrong = tmp_path / "wrong.txt"
    wrong.write_bytes(b"\x80\x80\x80 \xff\xff abc \x80\x80" * 20)
    headlines = tmp_path / "headlines.txt"
    headlines.write_text("乌兰县召开冬季工作会议\n\n茶卡镇举办培训\n", encoding="utf-8")
    return {"empty": (PAGES / "empty.txt", "空的"), "binary": (PAGES / "binary.txt", "二进制"),
            "wrong encoding": (wrong, "编码"), "huge": (huge, "太多"),
            "no articles": (headlines, "没有正文")}


@pytest.mark.parametrize("case", ["empty", "binary", "wrong encoding", "huge", "no articles"])
def test_a_bad_file_is_a_chinese_message_and_changes_nothing(copies, tmp_path, case):
    from rag.library import check_upload

    index, seeds = copies
    before = _tree_hash(index), _tree_hash(seeds)
    path, says = _bad_files(tmp_path)[case]
    with pytest.raises(Exception) as caught:
        check_upload(path, path.name, set(), seeds)
    assert says in str(caught.value) and "Traceback" not in str(caught.value)
    assert (_tree_hash(index), _tree_hash(seeds)) == before


@pytest.mark.parametrize("name, says", [("../evil.txt", "不能用"), (".hidden.txt", "不能用"), ("page.exe", "不能用"),
                                        ("a b.txt", "不能用"), ("001_c451c93762dc6e8f.txt", "已有同名")])
def test_an_unsafe_or_taken_name_is_refused(copies, name, says):
    from rag.library import check_upload

    index, seeds = copies
    with pytest.raises(Exception) as caught:
        check_upload(NEW_PAGE, name, set(), seeds)
    assert says in str(caught.value)


@pytest.mark.parametrize("date", ["2024-13-01", "20240301", "昨天"])
def test_a_bad_date_is_a_chinese_message(date):
    from rag.errors import BadInput
    from rag.library import page_meta_from_form

    with pytest.raises(BadInput, match="YYYY-MM-DD"):
        page_meta_from_form("海西日报", date, "", "")


def test_add_with_metadata_then_remove_keeps_seeds_and_pages_toml_in_step(copies):
    from rag.index import load_index
    from rag.meta import PageMeta, read_sidecar
    from rag.pipeline import add_pages, index_status, remove_pages

    index, seeds = copies
    toml_before = (seeds / "pages.toml").read_text(encoding="utf-8")
    add_pages([NEW_PAGE], index, seeds=seeds, meta={NEW_PAGE.name: PageMeta(paper="海西日报", date="2023-12-21")})
    arts = [a for a in load_index(index).articles.values() if a.source == NEW_PAGE.name]
    assert len(arts) == 2 and {a.paper for a in arts} == {"海西日报"} and {a.date for a in arts} == {"2023-12-21"}
    assert read_sidecar(seeds)[NEW_PAGE.name].paper == "海西日报"
    assert index_status(seeds, index) == "fresh"  # the CLI sees the same collection
    remove_pages([NEW_PAGE.name], index, seeds=seeds)
    assert not (seeds / NEW_PAGE.name).exists()
    assert NEW_PAGE.name not in {a.source for a in load_index(index).articles.values()}
    assert (seeds / "pages.toml").read_text(encoding="utf-8") == toml_before
    assert index_status(seeds, index) == "fresh"


def test_a_failed_add_puts_pages_toml_back(copies, tmp_path):
    from rag.errors import BadInput
    from rag.meta import PageMeta

    from rag.pipeline import add_pages

    index, seeds = copies
    _bad_files(tmp_path)
    before = _tree_hash(index), _tree_hash(seeds)
    with pytest.raises(BadInput):
        add_pages([tmp_path / "headlines.txt"], index, seeds=seeds, meta={"headlines.txt": PageMeta(paper="x")})
    assert (_tree_hash(index), _tree_hash(seeds)) == before


@pytest.fixture(scope="module")
def two_servers(index_dir, tmp_path_factory):
    """(read-only server, server with --allow-upload, its seeds), each on its own copy of the seeds and index."""
    tmp = tmp_path_factory.mktemp("library")
    out, procs = [], []
    for name, extra in (("ro", ()), ("rw", ("--allow-upload",))):
        index, seeds = tmp / name / "index", tmp / name / "seeds"
        shutil.copytree(index_dir, index)
        shutil.copytree(SEEDS, seeds)
        proc, url = _start(index, seeds, tmp, *extra)
        procs.append(proc)
        out += [url, index, seeds]
    yield out
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def _library(browser, url, size):  # noqa: F811
    pg = browser.new_page(viewport=size)
    pg.goto(url)
    pg.get_by_role("tab", name="资料库").click()
    pg.locator("#library-table").get_by_text("001_c451c93762dc6e8f.txt").wait_for()
    return pg


def test_without_allow_upload_the_table_is_read_only_and_nothing_can_be_written(browser, two_servers):  # noqa: F811
    url, index, seeds = two_servers[:3]
    before = _tree_hash(index), _tree_hash(seeds)
    pg = _library(browser, url, {"width": 1366, "height": 900})
    assert "未开放上传" in pg.locator("#library-note").inner_text()
    assert pg.locator("#library-upload").count() == 0 and pg.locator("#library-add").count() == 0
    assert "鄂尔多斯" in pg.locator("#library-table").inner_text()  # the page's region is in its row
    req = urllib.request.Request(url + "gradio_api/upload", data=b"x", method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == 403
    pg.close()
    assert (_tree_hash(index), _tree_hash(seeds)) == before


def test_upload_check_add_ask_and_remove_a_page(browser, two_servers, artifacts_dir):  # noqa: F811
    url, index, seeds = two_servers[3:]
    pg = _library(browser, url, {"width": 1366, "height": 900})
    upload = pg.locator("#library-upload input[type=file]")
    # a bad file first: a Chinese message, and nothing to add
    upload.set_input_files(str(PAGES / "binary.txt"))
    pg.locator("#library-status").get_by_text("二进制").wait_for()
    assert pg.locator("#library-add").is_disabled()
    upload.set_input_files(str(NEW_PAGE))
    found = pg.locator("#library-found")
    found.get_by_text("读出 2 篇文章").wait_for(timeout=60_000)
    assert "乌兰县建成枸杞冷链仓储中心" in found.inner_text() and "茶卡镇开展冬季牧民技能培训" in found.inner_text()
    pg.locator("#library-paper textarea, #library-paper input").first.fill("海西日报")
    pg.locator("#library-date textarea, #library-date input").first.fill("2023-12-21")
    pg.locator("#library-add").click()
    pg.locator("#library-status").get_by_text("已加入").wait_for(timeout=120_000)
    assert pg.locator("#library-paper textarea, #library-paper input").first.input_value() == ""  # form is reset
    table = pg.locator("#library-table")
    table.get_by_text(NEW_PAGE.name).wait_for()
    assert "海西日报" in table.inner_text() and "2023-12-21" in table.inner_text()  # no seed page names its paper
    pg.screenshot(path=str(artifacts_dir / "library-desktop.png"), full_page=True)
    assert (seeds / NEW_PAGE.name).is_file()

    pg.get_by_role("tab", name="问答").click()
    _ask(pg, "乌兰县枸杞冷链仓储中心的总库容有多少？", "3.6万吨")
    assert "来源（" in pg.locator("#chat").inner_text()  # answered from the new page, with citations

    phone = _library(browser, url, {"width": 390, "height": 844})
    phone.locator("#library-table").get_by_text(NEW_PAGE.name).wait_for()
    phone.screenshot(path=str(artifacts_dir / "library-phone.png"), full_page=True)
    phone.close()

    pg.get_by_role("tab", name="资料库").click()
    pg.locator("#library-remove-name input").fill(NEW_PAGE.name)
    pg.get_by_role("option", name=NEW_PAGE.name).click()
    pg.locator("#library-remove").click()
    pg.locator("#library-status").get_by_text("已删除").wait_for(timeout=120_000)
    assert pg.locator("#library-table").get_by_text(NEW_PAGE.name).count() == 0
    assert not (seeds / NEW_PAGE.name).exists()
    pg.get_by_role("tab", name="问答").click()
    _ask(pg, "乌兰县枸杞冷链仓储中心的总库容有多少？", "没有")
    assert "3.6万吨" not in pg.locator("#chat").inner_text().split("乌兰县枸杞冷链仓储中心的总库容有多少？")[-1]
    pg.close()
