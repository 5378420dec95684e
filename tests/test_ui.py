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


def _start(index, seeds, tmp, *extra: str):
    port = _free_port()
    log = open(tmp / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rag", "serve", "--index", str(index), "--seeds", str(seeds),
                             "--port", str(port), *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
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


HIGHLIGHT = "#article-view .token.highlighted, #article-view mark"  # the cited excerpt in the article view
SIZES = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(params=list(SIZES))
def sized(browser, server, request):
    """A page at 1366×900 and at 390×844 (``pg.size`` names which)."""
    pg = browser.new_page(viewport=SIZES[request.param])
    dialogs = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs, pg.size = dialogs, request.param
    pg.goto(server)
    pg.locator("#question textarea").wait_for()
    yield pg
    pg.close()


def _answer(pg, turn: int):
    """The answer bubble of question ``turn`` (its first bot message)."""
    return pg.locator("#chat .message-row.bot-row, #chat .bot-row").nth(turn - 1)


def _in_view(pg, locator) -> bool:
    box = locator.bounding_box()
    height = pg.viewport_size["height"]
    return box is not None and 0 <= box["y"] and box["y"] + min(box["height"], 40) <= height


def _open_marker(pg, n: int, nth_link: int = 0):
    """Click the ``nth_link``-th [n] link in the chat, until the article view changes (at most 3 clicks)."""
    link = pg.locator(f"#chat a[href^='#cite-']:text-is('[{n}]')").nth(nth_link)
    before = pg.locator("#article-view").inner_html()
    for _ in range(3):
        link.scroll_into_view_if_needed()
        # the chat may still be scrolling to its latest answer (on a phone it moves the link under the
        # pointer: a click then lands beside it); click once the link has kept its place for 5 checks (at
        # most ~5 s), and again if the article view did not change (a loaded machine scrolls late)
        link.evaluate("""a => new Promise(done => {
            let last = null, still = 0, tries = 0;
            const step = () => { const top = a.getBoundingClientRect().top;
                still = top === last ? still + 1 : 0; last = top;
                if (still >= 5 || ++tries > 300) done(); else setTimeout(step, 16); };
            step(); })""")
        link.click()
        try:
            pg.wait_for_function("(b) => document.querySelector('#article-view').innerHTML !== b", arg=before,
                                 timeout=5_000)
            return
        except Exception:
            continue  # the click landed beside the link: _mark reports what the view shows if it never opens


def _mark(pg, text: str):
    mark = pg.locator(HIGHLIGHT).filter(has_text=text).first
    try:
        mark.wait_for(timeout=15_000)
    except Exception:  # what the page showed instead, for the failure report
        from .conftest import ARTIFACTS

        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"failed-mark-{getattr(pg, 'size', 'page')}.png"), full_page=True)
        raise AssertionError(f"no highlighted {text!r} in the article view: "
                             f"{pg.locator('#article-view').inner_text()[:300]!r}") from None
    pg.wait_for_function("(t) => { const r = [...document.querySelectorAll(" + repr(HIGHLIGHT) + ")]"
                         ".find(m => m.textContent.includes(t)); if (!r) return false; "
                         "const b = r.getBoundingClientRect(); return b.top >= 0 && b.bottom <= innerHeight; }",
                         arg=text, timeout=10_000)
    return mark


def test_each_answer_keeps_its_sources_and_n_opens_the_article_scrolled_to_the_excerpt(sized, artifacts_dir):
    pg = sized
    _ask(pg, "格尔木的开发区在全国排第几？", "128位")
    _ask(pg, "西宁在动力电池产能城市中排第几？", "第八")
    # [1] of the first answer still opens the first answer's source, not the latest one's
    _open_marker(pg, 1, nth_link=0)
    mark = _mark(pg, "位列128位")
    assert "近年来，昆仑经济技术开发区" in pg.locator("#article-view").inner_text()  # the whole article
    assert "格尔木" in pg.locator("#article-meta").inner_text()  # the page's region
    assert _in_view(pg, mark)
    pg.screenshot(path=str(artifacts_dir / f"ui-n-opens-source-{pg.size}.png"))
    _open_marker(pg, 1, nth_link=1)
    _mark(pg, "西宁跻身")
    # each answer has its own folded source block: title, region, file and line, excerpt
    blocks = pg.locator("#chat").get_by_text("来源（1 条", exact=False)
    assert blocks.count() == 2
    blocks.first.click()
    chat = pg.locator("#chat").inner_text()
    assert "格尔木 · 000_083e7fa3461b093d.txt 第" in chat and "位列128位" in chat
    pg.screenshot(path=str(artifacts_dir / f"ui-sources-per-answer-{pg.size}.png"), full_page=True)


def test_a_source_names_the_city_its_wo_shi_means(page):
    _ask(page, "格尔木工业科技领域培养和引进了多少领衔人才？", "20")
    page.locator("#chat").get_by_text("来源（", exact=False).first.click()
    page.locator("#chat").get_by_text("我市（格尔木）", exact=False).first.wait_for(timeout=10_000)


def test_the_page_is_chinese_and_examples_are_asked_when_clicked(sized, artifacts_dir):
    pg = sized
    assert pg.evaluate("document.documentElement.lang") == "zh-CN"
    body = pg.locator("body").inner_text()
    assert "Built with Gradio" not in body and "Use via API" not in body and "使用 Gradio 构建" not in body
    assert "资料库共 6 个版面" in pg.locator("#coverage").inner_text()
    example = pg.locator("#examples button").first
    question = example.inner_text()
    example.click()
    pg.turns = 1
    pg.wait_for_function(_FINISHED, arg=[1, "已回答"], timeout=30_000)
    assert question in pg.locator("#chat").inner_text()
    assert pg.locator("#chat a[href^='#cite-']").count() >= 1
    pg.screenshot(path=str(artifacts_dir / f"ui-chinese-example-{pg.size}.png"), full_page=True)


def test_the_chats_own_bin_icon_forgets_the_conversation(page):
    """The chat's own bin icon (labelled in Chinese) forgets the conversation and the article view."""
    _ask(page, "西宁在动力电池产能城市中排第几？", "第八")
    _open_marker(page, 1)
    _mark(page, "西宁跻身")
    page.locator("#chat button[aria-label='清空对话']").first.click()
    page.wait_for_function("!document.querySelector('#article-view').innerText.includes('西宁跻身')",
                           timeout=10_000)
    assert "第八" not in page.locator("#chat").inner_text()
    _ask(page, "那格尔木呢？", "")  # a new conversation: nothing to follow up
    assert "第八" not in page.locator("#chat").inner_text()


def test_the_conversation_survives_a_reload(sized, artifacts_dir):
    pg = sized
    _ask(pg, "格尔木的开发区在全国排第几？", "128位")
    pg.wait_for_function("(localStorage.getItem('rag-conversation') || '').length > 200", timeout=10_000)
    pg.reload()
    pg.locator("#answer-state").get_by_text("已恢复上次的对话（共 1 问）").wait_for(timeout=15_000)
    assert "格尔木的开发区在全国排第几" in pg.locator("#chat").inner_text()
    _open_marker(pg, 1)  # its sources came back with it
    _mark(pg, "位列128位")
    pg.screenshot(path=str(artifacts_dir / f"ui-after-reload-{pg.size}.png"), full_page=True)
    pg.turns = 1  # the conversation goes on where it was
    _ask(pg, "那西宁呢？", "西宁")
    pg.locator("#clear").click()
    pg.wait_for_function("!document.querySelector('#chat').innerText.includes('128位')", timeout=10_000)
    pg.reload()
    pg.locator("#answer-state").get_by_text("新对话").wait_for(timeout=15_000)  # a cleared one stays cleared
    assert "128位" not in pg.locator("#chat").inner_text()


def test_copy_puts_the_answer_and_its_sources_on_the_clipboard(browser, server):
    ctx = browser.new_context(viewport=SIZES["phone"], permissions=["clipboard-read", "clipboard-write"])
    pg = ctx.new_page()
    pg.goto(server)
    pg.locator("#question textarea").wait_for()
    _ask(pg, "格尔木的开发区在全国排第几？", "128位")
    pg.locator("#chat a[href^='#copy-']").first.click()
    pg.wait_for_function("window.ragCopied !== undefined", timeout=10_000)
    text = pg.evaluate("navigator.clipboard.readText()")
    ctx.close()
    assert text.startswith("格尔木昆仑经济技术开发区在全国230家国家级经济技术开发区中位列128位。[1]")
    assert "来源：\n[1] 《格尔木昆仑经济技术开发区" in text and "格尔木 · 000_083e7fa3461b093d.txt 第" in text
    assert "\\[" not in text and "#cite-" not in text  # plain text, not the chat's Markdown


def test_follow_up_and_clear(page):
    _ask(page, "西宁在动力电池产能城市中排第几？", "第八")
    # the follow-up swaps the city: the pages give no ranking for 格尔木, so it must not repeat 西宁's;
    # it says so, flatly or as a partial answer quoting what the pages hold about 西宁
    _ask(page, "那格尔木呢？", "没有")
    last = page.locator("#chat").inner_text().split("那格尔木呢")[-1]
    assert "第八" not in last and ("没有找到" in last or "没有格尔木的排名" in last), last
    _open_marker(page, 1)
    _mark(page, "西宁跻身")
    page.locator("#clear").click()
    page.wait_for_function("!document.querySelector('#chat').innerText.includes('第八')", timeout=10_000)
    # the article view goes with the chat
    page.wait_for_function("!document.querySelector('#article-view').innerText.includes('西宁跻身')",
                           timeout=10_000)


def test_refusal_is_shown_as_such_with_related_articles_that_open(page):
    _ask(page, "西宁地铁什么时候开通？", "没有找到")
    page.locator("#chat").get_by_text("相关文章（", exact=False).first.click()
    related = page.locator("#chat a[href^='#cite-']").filter(has_text="《").first
    title = related.inner_text().strip("《》")
    related.click()
    page.wait_for_function("(t) => { const v = document.querySelector('#article-view').innerText; "
                           "return v.includes(t) && v.length > 100; }", arg=title[:6], timeout=15_000)


def test_page_and_user_text_are_shown_as_text_never_as_html(page, artifacts_dir):
    _ask(page, "<img src=x onerror=alert(2)>格尔木网络安全宣传周有多少名市民参加？", "300名")
    assert "<img src=x onerror=alert(2)>" in page.locator("#chat").inner_text()
    page.locator("#chat").get_by_text("来源（", exact=False).first.click()
    _open_marker(page, 1)
    _mark(page, "300名")
    # the article browser shows the page's markup as characters
    page.get_by_role("tab", name="文章浏览").click()
    page.locator("#article-pick input").click()
    page.get_by_role("option", name="格尔木市举办<b>网络安全宣传周</b>活动").click()
    page.locator("#browse-view").get_by_text("<script>alert('xss')</script>", exact=False).wait_for(timeout=10_000)
    page.wait_for_timeout(500)
    assert page.dialogs == []
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("#chat script, #browse-view script, #browse-view b, #article-view script").count() == 0
    page.screenshot(path=str(artifacts_dir / "chat-escaping.png"), full_page=True)


def test_the_article_browser_opens_on_an_article_and_lists_pages_by_what_they_are(sized, artifacts_dir):
    pg = sized
    pg.get_by_role("tab", name="文章浏览").click()
    view = pg.locator("#browse-view")
    view.wait_for()
    assert len(view.inner_text()) > 100  # a real article, not an empty one
    pg.locator("#page-pick input").click()
    options = pg.get_by_role("option").all_inner_texts()
    assert any("鄂尔多斯 · 《" in o for o in options) and not any(".txt" in o for o in options)
    pg.screenshot(path=str(artifacts_dir / f"ui-article-browser-{pg.size}.png"), full_page=True)


@pytest.mark.parametrize("question, message", [("", "请输入一个问题"), ("问" * 800, "最多 500 个字")])
def test_bad_questions_are_chinese_messages_and_keep_the_typed_question(page, question, message, artifacts_dir):
    _send(page, question, done="未能回答")
    chat = page.locator("#chat").inner_text()
    assert message in chat and "Traceback" not in chat and "characters" not in chat
    assert page.locator("#question textarea").input_value() == question  # still there to shorten
    if question:
        page.screenshot(path=str(artifacts_dir / "ui-too-long-question.png"), full_page=True)
    _ask(page, "积石山地震是几级？", "6.2级")


def test_filters_restrict_the_sources_and_say_when_nothing_matches(sized, artifacts_dir):
    pg = sized
    pg.locator("#filter-region input").click()
    pg.get_by_role("option", name="鄂尔多斯").click()
    _send(pg, "格尔木的开发区在全国排第几？")
    chat = pg.locator("#chat").inner_text()
    assert "128位" not in chat  # that page is outside the filter
    pg.locator("#chat").get_by_text("（", exact=False).last.wait_for()
    for block in pg.locator("#chat").get_by_text("来源（", exact=False).all() + \
            pg.locator("#chat").get_by_text("相关文章（", exact=False).all():
        block.click()
    shown = pg.locator("#chat").inner_text()
    assert "000_083e7fa3461b093d.txt" not in shown and "鄂尔多斯 · 001_c451c93762dc6e8f.txt" in shown
    pg.locator("#filter-since textarea, #filter-since input").first.fill("2030-01-01")
    _send(pg, "格尔木的开发区在全国排第几？", done="未能回答")
    assert "没有符合筛选条件（地区 鄂尔多斯、日期 2030-01-01 至 …）的文章" in pg.locator("#chat").inner_text()
    pg.screenshot(path=str(artifacts_dir / f"ui-filters-{pg.size}.png"), full_page=True)
    pg.locator("#filter-since textarea, #filter-since input").first.fill("2030/01/01")
    _send(pg, "格尔木的开发区在全国排第几？", done="未能回答")
    assert "YYYY-MM-DD" in pg.locator("#chat").inner_text()


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
    page.locator("#chat a[href^='#cite-']").first.wait_for(timeout=10_000)
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


def test_a_reader_clicking_through_sources_is_never_rate_limited(page):
    """The rate limit (30 at once, 120 a minute per address) counts questions, not a reader's clicks."""
    _ask(page, "西宁在动力电池产能城市中排第几？", "第八")
    _ask(page, "格尔木的开发区在全国排第几？", "128位")
    for i in range(40):  # more clicks than the burst allows requests
        first = i % 2 == 0
        _open_marker(page, 1, 0 if first else 1)
        page.wait_for_function("(t) => [...document.querySelectorAll(" + repr(HIGHLIGHT) + ")]"
                               ".some(m => m.textContent.includes(t))",
                               arg="西宁跻身" if first else "位列128位", timeout=15_000)
    _ask(page, "电子劳动合同有什么好处？", "[1]")
