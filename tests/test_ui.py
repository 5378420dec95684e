"""The web chat, end to end: a real `rag serve` process driven by a real headless Chromium."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from .conftest import DATA, ROOT, SEEDS

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(index, seeds, tmp):
    port = _free_port()
    log = open(tmp / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rag", "serve", "--index", str(index), "--seeds", str(seeds),
                             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((tmp / f"serve-{port}.log").read_text())
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def server(index_dir, tmp_path_factory):
    from rag.pipeline import add_pages

    tmp = tmp_path_factory.mktemp("ui")
    index, seeds = tmp / "index", tmp / "seeds"
    shutil.copytree(index_dir, index)
    shutil.copytree(SEEDS, seeds)
    add_pages([DATA / "xss" / "xss_page.txt"], index, seeds=seeds)
    proc, url = _start(index, seeds, tmp)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs
    pg.goto(server)
    pg.locator("#question textarea").wait_for()
    yield pg
    pg.close()


_FINISHED = "([n, done]) => new RegExp('第 ' + n + ' 问' + done).test(document.querySelector('#answer-state').innerText)"


def _send(pg, question: str, timeout: float = 30_000, done: str = "(已回答|未能回答|已停止)") -> None:
    """Ask, and wait until the app says this question's answer is complete (never a fixed sleep)."""
    pg.turns = getattr(pg, "turns", 0) + 1
    pg.locator("#question textarea").fill(question)
    pg.locator("#send").click()
    pg.wait_for_function(_FINISHED, arg=[pg.turns, done], timeout=timeout)


def _ask(pg, question: str, expect: str, timeout: float = 30_000):
    try:
        _send(pg, question, timeout)
        assert expect in pg.locator("#chat").inner_text()
    except Exception:
        from .conftest import ARTIFACTS

        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "failed-ask.png"), full_page=True)
        raise AssertionError(f"{expect!r} not in the chat: {pg.locator('#chat').inner_text()[-400:]!r}") from None


def test_ask_read_the_cited_source_and_open_it(page, artifacts_dir):
    _ask(page, "格尔木的开发区在全国排第几？", "128位")
    chat = page.locator("#chat").inner_text()
    assert "128位" in chat and "[1]" in chat
    sources = page.locator("#answer-sources")
    sources.get_by_text("[1]", exact=False).wait_for()
    assert "格尔木昆仑经济技术开发区综合发展水平" in sources.inner_text()
    assert "位列128位" in page.locator("#excerpts textarea").input_value()
    sources.get_by_text("[1]", exact=False).click()
    highlighted = page.locator("#article-view mark, #article-view .textspan.hl, #article-view [class*='hl']")
    highlighted.first.wait_for(timeout=15_000)
    assert "位列128位" in highlighted.first.inner_text()
    assert "近年来，昆仑经济技术开发区" in page.locator("#article-view").inner_text()  # the whole article
    page.screenshot(path=str(artifacts_dir / "chat-answer.png"), full_page=True)


def test_follow_up_and_clear(page):
    _ask(page, "西宁在动力电池产能城市中排第几？", "第八")
    # the follow-up swaps the city: the pages give no ranking for 格尔木, so it must not repeat 西宁's
    _ask(page, "那格尔木呢？", "没有找到")
    last = page.locator("#chat").inner_text().split("那格尔木呢")[-1]
    assert "第八" not in last
    page.locator("#clear").click()
    page.wait_for_function("!document.querySelector('#chat').innerText.includes('第八')", timeout=10_000)
    # the sources go with the chat
    page.wait_for_function("!document.querySelector('#answer-sources').innerText.includes('西宁跻身')",
                           timeout=10_000)


def test_the_chats_own_bin_icon_forgets_the_conversation(page):
    _ask(page, "西宁在动力电池产能城市中排第几？", "第八")
    page.locator("#answer-sources").get_by_text("西宁跻身", exact=False).first.wait_for(timeout=10_000)
    page.locator("#chat button[aria-label='Clear']").first.click()
    page.wait_for_function("!document.querySelector('#answer-sources').innerText.includes('西宁跻身')",
                           timeout=10_000)
    assert "第八" not in page.locator("#chat").inner_text()


def test_refusal_is_shown_as_such_with_related_articles(page):
    _ask(page, "西宁地铁什么时候开通？", "没有找到")
    related = page.locator("#answer-sources input[type=radio]")
    related.first.wait_for(timeout=10_000)
    assert "《" in page.locator("#answer-sources").inner_text()
    assert "没有找到能回答" in page.locator("#excerpts textarea").input_value()


def test_page_and_user_text_are_shown_as_text_never_as_html(page, artifacts_dir):
    _ask(page, "<img src=x onerror=alert(2)>格尔木网络安全宣传周有多少名市民参加？", "300名")
    assert "<img src=x onerror=alert(2)>" in page.locator("#chat").inner_text()
    # the article browser shows the page's markup as characters
    page.get_by_role("tab", name="文章浏览").click()
    page.locator("#article-pick input").click()
    page.get_by_role("option", name="格尔木市举办<b>网络安全宣传周</b>活动").click()
    page.locator("#browse-view").get_by_text("<script>alert('xss')</script>", exact=False).wait_for(timeout=10_000)
    page.wait_for_timeout(500)
    assert page.dialogs == []
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("#chat script, #browse-view script, #browse-view b").count() == 0
    page.screenshot(path=str(artifacts_dir / "chat-escaping.png"), full_page=True)


@pytest.mark.parametrize("question, message", [("", "请输入一个问题"), ("问" * 800, "at most")])
def test_bad_questions_are_friendly_messages_and_the_server_keeps_serving(page, question, message):
    _send(page, question, done="未能回答")
    assert message in page.locator("#chat").inner_text()
    assert "Traceback" not in page.locator("#chat").inner_text()
    _ask(page, "积石山地震是几级？", "6.2级")


def test_gradio_client_api_and_concurrent_users(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    result = client.predict("格尔木的开发区在全国排第几？", api_name="/ask")
    assert "128位" in result["answer"] and not result["refused"]
    c = result["citations"][0]
    assert "位列128位" in c["excerpt"] and c["source"] == "000_083e7fa3461b093d.txt"
    answers = {}

    def ask(q):
        answers[q] = Client(server, verbose=False).predict(q, api_name="/ask")

    qs = ["试点企业签了多少份电子劳动合同？", "积石山地震是几级？", "西宁地铁什么时候开通？"]
    threads = [threading.Thread(target=ask, args=(q,)) for q in qs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert "182" in answers[qs[0]]["answer"] and "6.2" in answers[qs[1]]["answer"] and answers[qs[2]]["refused"]


def test_missing_index_is_a_message_in_the_chat(browser, tmp_path):
    proc, url = _start(tmp_path / "no-index", SEEDS, tmp_path)
    try:
        pg = browser.new_page()
        pg.goto(url)
        pg.locator("#question textarea").fill("格尔木的开发区在全国排第几？")
        pg.locator("#send").click()
        pg.locator("#chat").get_by_text("rag index", exact=False).wait_for(timeout=30_000)
        pg.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_local_model_mode_streams_then_shows_the_checked_answer(page):
    pytest.importorskip("llama_cpp")
    page.get_by_text("设置").click()
    page.locator("#answer-mode").get_by_text("本地模型改写", exact=False).click()
    _ask(page, "试点企业签了多少份电子劳动合同？", "182", timeout=300_000)
    page.locator("#answer-sources").get_by_text("[1]", exact=False).first.wait_for(timeout=10_000)
    chat = page.locator("#chat").inner_text()
    assert "核对中" not in chat and "182" in chat and "[1]" in chat
    assert "已回答" in page.locator("#answer-state").inner_text()


def test_local_model_can_be_stopped_and_says_so_in_chinese(page, artifacts_dir):
    pytest.importorskip("llama_cpp")
    page.get_by_text("设置").click()
    page.locator("#answer-mode").get_by_text("本地模型改写", exact=False).click()
    page.turns = 1
    page.locator("#question textarea").fill("海西州的人才公寓建了多少套？")
    page.locator("#send").click()
    # the question shows at once, with a Chinese status line while the model works
    page.locator("#chat").get_by_text("海西州的人才公寓建了多少套", exact=False).wait_for(timeout=10_000)
    page.wait_for_function("document.querySelector('#answer-state').innerText.includes('第 1 问：')", timeout=10_000)
    assert "processing" not in page.locator("body").inner_text()
    page.locator("#stop").click()
    page.wait_for_function(_FINISHED, arg=[1, "(已停止|已回答)"], timeout=300_000)
    chat = page.locator("#chat").inner_text()
    page.screenshot(path=str(artifacts_dir / "chat-llm-stopped.png"), full_page=True)
    assert "核对中" not in chat and "670" in chat
    if "已停止" in page.locator("#answer-state").inner_text():  # stopped before the model finished
        assert "已停止本地模型" in chat
