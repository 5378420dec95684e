"""Thin Gradio web chat over pipeline.ask(): cited answers, a sources panel, the article browser,
and a named API endpoint ``ask``. No retrieval logic lives here."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .chatview import chinese_message, copy_text, link_markers, md_text, page_label, parse_cite_key, source_block
from .config import Settings
from .errors import BadInput, RagError
from .meta import Filters, describe_source
from .pipeline import explain_fallback
from .types import AnswerKind, AnswerMode

__all__ = ["build_app", "EXAMPLES"]

log = logging.getLogger("rag")

# Questions a resident might ask; those the index cannot answer are dropped at start-up.
EXAMPLES = [
    "格尔木的开发区在全国排第几？",
    "电子劳动合同有什么好处？",
    "海西州给人才提供住房吗？",
    "西宁在动力电池产能城市中排第几？",
    "青海五经普登记工作什么时候开始？",
    "急需紧缺人才目录一共征集了多少人才需求？",
]
_META_HINT = "点击答案里的 [n] 或来源，在这里查看原文，引用处以黄色标出。"


class _Backend:
    """Loads the engine lazily, so a missing index is a message in the chat, not a crash."""

    def __init__(self, index_dir: str | Path, seeds: str | Path | None, settings: Settings | None):
        self.index_dir, self.seeds, self.settings = Path(index_dir), seeds, settings

    def engine(self, **overrides):
        from .pipeline import get_engine

        return get_engine(self.index_dir, settings=self.settings, **overrides)

    def articles(self) -> list:
        try:
            return sorted(self.engine().index.articles.values(), key=lambda a: (a.source, a.article_id))
        except RagError:
            return []

    def coverage(self) -> str:
        from .pipeline import describe_collection

        try:
            return describe_collection(self.engine().index)
        except RagError:
            return ""


def _pages(articles: list) -> list[tuple[str, str]]:
    """(label, page file) of every page, labelled by paper and date, else region and lead article."""
    by_page: dict[str, list] = {}
    for a in articles:
        by_page.setdefault(a.source, []).append(a)
    out = []
    for source, arts in by_page.items():
        lead = next((a for a in arts if a.kind == "article"), arts[0])
        out.append((page_label(lead.paper, lead.date, lead.page, lead.region, lead.title, len(arts)), source))
    return sorted(out, key=lambda x: (x[0], x[1]))


def _filters(paper, region, since, until) -> Filters | None:
    """The filter row as Filters (None when empty); a bad date is a Chinese message."""
    try:
        f = Filters.from_dict({"paper": paper or None, "region": region or None, "since": since or None,
                               "until": until or None})
    except BadInput as exc:
        if "after until" in str(exc):
            raise BadInput("筛选的开始日期晚于结束日期。") from None
        raise BadInput("筛选日期要写成 YYYY-MM-DD，例如 2023-12-19。") from None
    return f or None


def build_app(index_dir: str | Path = "index", seeds: str | Path | None = "seeds",
              settings: Settings | None = None, *, allow_upload: bool = False):
    """The Gradio Blocks app (not launched); ``allow_upload`` lets the 资料库 tab add and remove pages.

    Built in named phases: the handlers, then each part of the page (header, the 问答 tab's chat
    column and 原文 panel, 文章浏览, 资料库), then the event wiring."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    backend = _Backend(index_dir, seeds, settings)
    all_articles = backend.articles()
    handlers = _handlers(gr, backend, (settings or Settings()).answer.max_question_chars)
    with gr.Blocks(title="本地政策新闻问答") as demo:
        _header(gr, backend)
        state = _conversation_state(gr)
        with gr.Tab("问答"):
            with gr.Row():
                chat = _chat_column(gr, all_articles, _usable_examples(backend),
                                    settings.answer.mode if settings else "extractive")
                source = _source_panel(gr)
            hidden = _hidden_boxes(gr)
        with gr.Tab("文章浏览"):
            browse = _browse_tab(gr, all_articles, handlers.article_parts)
        with gr.Tab("资料库", elem_id="library-tab"):
            from .library import library_tab

            library_tab(gr, demo, backend, allow_upload)
        _wire_chat(gr, demo, handlers, state, chat, source, hidden)
        _wire_browse(handlers, browse)
        gr.api(handlers.api_ask, api_name="ask")
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


@dataclass(frozen=True)
class _Handlers:
    """What the page's events call (closures over the backend)."""

    article_parts: Callable  # (article_id, start, end, label) -> (HighlightedText value, its label, meta line)
    article_view: Callable  # the same as Gradio updates
    respond: Callable  # a question -> the chat's streamed updates
    open_cite: Callable  # a clicked [n] -> its article, highlighted
    list_articles: Callable  # a page -> its articles
    api_ask: Callable  # the named /ask endpoint


@dataclass(frozen=True)
class _State:
    """The conversation: each turn's sources, the questions asked, the turn count, the browser copy."""

    cites: Any
    saved: Any
    asked: Any
    turn: Any


@dataclass(frozen=True)
class _ChatColumn:
    """The 问答 tab's left column: the chat and its controls, filters, examples and settings."""

    chat: Any
    box: Any
    send: Any
    answer_state: Any
    stop: Any
    clear: Any
    paper: Any
    region: Any
    since: Any
    until: Any
    example_buttons: list
    k: Any
    retriever: Any
    mode: Any


@dataclass(frozen=True)
class _SourcePanel:
    """The 原文 panel: the article a citation points at, the excerpt highlighted."""

    meta: Any
    view: Any


@dataclass(frozen=True)
class _HiddenBoxes:
    """Hidden boxes the page's script writes (a clicked [n], a copy link) and reads (scroll, copy)."""

    cite_key: Any
    cite_target: Any
    copy_key: Any
    copied: Any


@dataclass(frozen=True)
class _BrowseTab:
    """The 文章浏览 tab: a page and article picker and the article."""

    page: Any
    art_pick: Any
    meta: Any
    view: Any


def _handlers(gr, backend: _Backend, max_chars: int) -> _Handlers:
    def article_parts(article_id: str | None, start: int | None = None, end: int | None = None,
                      label: str = "引用"):
        """(HighlightedText value, its label, the meta line) of an article, the excerpt highlighted."""
        try:
            art = backend.engine().index.articles[article_id]
        except (RagError, KeyError):
            return [], "文章", "找不到这篇文章。"
        if start is not None and end is not None and 0 <= start < end <= len(art.text):
            parts = [(art.text[:start], None), (art.text[start:end], label), (art.text[end:], None)]
        else:
            parts = [(art.text, None)]
        head = [f"《{art.title}》"] + ([art.subtitle] if art.subtitle else [])
        meta = " · ".join(x for x in (describe_source(art), art.byline, "图片说明" if art.kind == "caption" else None,
                                       "续上版" if art.continuation else None) if x)
        return [(t, lab) for t, lab in parts if t], "　".join(head), md_text(meta)

    def article_view(article_id: str | None, start: int | None = None, end: int | None = None, label: str = "引用"):
        if not article_id:
            return gr.update(value=[], label="文章"), ""
        value, title, meta = article_parts(article_id, start, end, label)
        return gr.update(value=value, label=title), meta

    def ask_streaming(question, history, k, retriever, mode, cancel, filters):
        """Run ask() in a worker thread; yield ("status", dict) while a local model is queued or
        loading, ("delta", text) while it writes, then ("answer", Answer) or ("error", exception)."""
        events: queue.Queue = queue.Queue()

        def work():
            try:
                ans = backend.engine().ask(question, history=history, k=int(k), retriever=retriever, mode=mode,
                                           on_delta=lambda piece: events.put(("delta", piece)),
                                           on_status=lambda state: events.put(("status", state)), cancel=cancel,
                                           filters=filters)
                events.put(("answer", ans))
            except Exception as exc:  # handed to the UI thread, which decides what to show
                events.put(("error", exc))

        threading.Thread(target=work, daemon=True).start()
        while True:
            kind, value = events.get()
            yield kind, value
            if kind not in ("delta", "status"):
                return

    def respond(question, messages, k, retriever, mode, cites, asked, turn, paper, region, since, until,
                request: gr.Request):
        messages = list(messages or [])
        cites = dict(cites or {})
        typed = question or ""
        question = typed.strip()
        history = list(asked or [])  # the raw questions so far (the chat shows escaped text)
        turn = int(turn or 0) + 1
        cancel = _cancel_event(request)
        t0 = time.perf_counter()
        shown_q = question if question else "（空问题）"
        messages.append({"role": "user", "content": md_text(shown_q)})
        busy = "" if mode != AnswerMode.LLM else "⏳（本地模型作答中）"
        keep = gr.update()

        # the question is in the conversation at once, whatever the model's queue
        yield (messages + ([{"role": "assistant", "content": busy}] if busy else []), "", keep, history, turn,
               f"第 {turn} 问：正在检索…")
        try:
            if not question:
                raise BadInput("请输入一个问题，例如：格尔木的开发区在全国排第几？")
            if len(question) > max_chars:
                raise BadInput(f"query is {len(question):,} characters; at most {max_chars} are accepted")
            filters = _filters(paper, region, since, until)
            ans, draft = None, ""
            for kind, value in ask_streaming(question, history, k, retriever, mode, cancel, filters):
                if kind == "status":
                    note = _STATUS_TEXT.get(value["state"], "").format(**value)
                    shown = messages + [{"role": "assistant", "content": "⏳（" + note + "）"}]
                    yield shown, keep, keep, history, turn, f"第 {turn} 问：{note}"
                elif kind == "delta":  # the model's words as they come, marked as not yet checked
                    draft += value
                    shown = messages + [{"role": "assistant", "content": md_text(draft) + " ⏳（核对中）"}]
                    yield shown, keep, keep, history + [question], turn, f"第 {turn} 问：本地模型正在作答，写完后与原文核对…"
                elif kind == "error":
                    raise value
                else:
                    ans = value
        except RagError as exc:  # said in Chinese; the typed question goes back into the box
            messages.append({"role": "assistant", "content": "⚠️ " + md_text(chinese_message(exc, max_chars))})
            yield messages, typed, keep, history, turn, f"第 {turn} 问未能回答"
            return
        except Exception as exc:  # keep serving: say what happened, log the rest
            log.exception("ask failed")
            messages.append({"role": "assistant", "content": "⚠️ 出错了：" + md_text(type(exc).__name__)})
            yield messages, typed, keep, history, turn, f"第 {turn} 问未能回答"
            return
        items = ([dict(r, n=0, start=None, end=None) for r in ans.related] if ans.refused
                 else ans.to_json()["citations"])
        prefix = "🔍 " if ans.refused else ""
        stopped = (ans.check or {}).get("finish_reason") == "cancel"
        if mode == AnswerMode.LLM and ans.mode == AnswerKind.FALLBACK and not ans.refused:
            prefix = f"（{explain_fallback(ans)}）\n"
        text = prefix + ans.answer
        messages.append({"role": "assistant", "content": ""})
        step = max(2, len(text) // 25)
        for i in range(step, len(text), step):  # stream the answer in
            messages[-1] = {"role": "assistant", "content": md_text(text[:i])}
            yield messages, keep, keep, history + [question], turn, keep
            time.sleep(0.01)
        copy = f"  \n[复制回答和来源](#copy-{turn})"
        messages[-1] = {"role": "assistant", "content": link_markers(md_text(text), turn, items) + copy}
        if items:  # this answer's own sources, folded under it
            title = f"相关文章（{len(items)} 篇）" if ans.refused else f"来源（{len(items)} 条，点 [n] 看原文）"
            messages.append({"role": "assistant", "content": source_block(turn, items, ans.refused),
                             "metadata": {"title": title, "status": "done"}})
        cites[str(turn)] = items
        cites[f"{turn}-copy"] = copy_text(ans.answer, items, ans.refused)
        seconds = time.perf_counter() - t0
        done = f"第 {turn} 问已停止" if stopped else f"第 {turn} 问已回答，用时 {seconds:.1f} 秒"
        yield messages, keep, cites, history + [question], turn, done

    def open_cite(key, cites):
        """A clicked [n] (or related article): its article, the excerpt highlighted, and the excerpt."""
        where = parse_cite_key(key)
        items = (cites or {}).get(where[0], []) if where else []
        if not where or not 0 <= where[1] < len(items):
            return gr.update(), gr.update(), ""
        item = items[where[1]]
        label = "引用" if item.get("n") else None
        view, meta = article_view(item["article_id"], item.get("start"), item.get("end"), label)
        return view, meta, item.get("excerpt") or ""

    def list_articles(source):
        arts = [a for a in backend.articles() if not source or a.source == source]
        first = arts[0].article_id if arts else None
        return gr.update(choices=[(f"{a.title}{'（图片说明）' if a.kind == 'caption' else ''}", a.article_id)
                                  for a in arts], value=first)

    def api_ask(question: str) -> dict:
        """Answer a question: the ``rag ask --json`` object ({"question", "answer", "refused", "citations": [{n,
        article_id, title, source, excerpt, start, end, line, paper, date, page, region, city}], "related", ...})."""
        try:
            ans = backend.engine().ask(question)  # a None or a list is refused saying so, not "empty"
        except RagError as exc:  # an ordinary user error: a message, no traceback in the server log
            raise gr.Error(str(exc), print_exception=False) from None
        return ans.to_json()

    return _Handlers(article_parts, article_view, respond, open_cite, list_articles, api_ask)


def _header(gr, backend: _Backend) -> None:
    coverage = backend.coverage()
    gr.Markdown("## 本地政策新闻问答\n<span class='rag-note'>回答只来自本地报纸；每句话都附有可核对的原文摘录。"
                f"{md_text(coverage)}</span>", elem_id="coverage")


def _conversation_state(gr) -> _State:
    cites_state = gr.State({})  # turn -> that answer's sources
    # the conversation, kept in the browser (localStorage) so that it survives a reload
    saved = gr.BrowserState({}, storage_key="rag-conversation")
    asked_state = gr.State([])
    turn_state = gr.State(0)
    return _State(cites_state, saved, asked_state, turn_state)


def _chat_column(gr, all_articles: list, examples: list[str], default_mode: str) -> _ChatColumn:
    papers = sorted({a.paper for a in all_articles if a.paper})
    regions = sorted({a.region for a in all_articles if a.region})
    with gr.Column(scale=3):
        chat = gr.Chatbot(label="对话", height=460, elem_id="chat", sanitize_html=True,
                          placeholder="问一个关于本地政策新闻的问题，例如：格尔木的开发区在全国排第几？")
        with gr.Row():
            box = gr.Textbox(placeholder="输入问题，按回车发送", show_label=False, scale=5,
                             max_lines=3, elem_id="question")
            send = gr.Button("提问", variant="primary", scale=1, elem_id="send")
        answer_state = gr.Markdown("", elem_id="answer-state", elem_classes=["rag-note"])
        with gr.Row():
            stop = gr.Button("停止", elem_id="stop", variant="stop")
            clear = gr.Button("清空对话", elem_id="clear")
        with gr.Row(elem_id="filters"):
            paper = gr.Dropdown([("全部报纸", "")] + [(f"《{p}》", p) for p in papers], value="",
                                label="报纸", min_width=110, elem_id="filter-paper")
            region = gr.Dropdown([("全部地区", "")] + [(r, r) for r in regions], value="", label="地区",
                                 min_width=110, elem_id="filter-region")
            since = gr.Textbox(label="从", placeholder="2023-12-01", min_width=110, max_lines=1,
                               elem_id="filter-since")
            until = gr.Textbox(label="到", placeholder="2023-12-31", min_width=110, max_lines=1,
                               elem_id="filter-until")
        example_buttons = []
        if examples:
            gr.Markdown("示例问题（点击即问）", elem_classes=["rag-note"])
            with gr.Row(elem_id="examples"):
                example_buttons = [gr.Button(q, size="sm") for q in examples]
        with gr.Accordion("设置", open=False):
            k = gr.Slider(1, 10, value=5, step=1, label="检索段落数")
            retriever = gr.Radio([("混合（推荐）", "hybrid"), ("关键词 BM25", "bm25"), ("语义向量", "dense")],
                                 value="hybrid", label="检索方式")
            mode = gr.Radio([("原文摘录（最快）", "extractive"), ("本地模型改写（经原文核对）", "llm")],
                            value=default_mode, label="回答方式", elem_id="answer-mode")
    return _ChatColumn(chat, box, send, answer_state, stop, clear, paper, region, since, until, example_buttons,
                       k, retriever, mode)


def _source_panel(gr) -> _SourcePanel:
    with gr.Column(scale=2):
        gr.Markdown("### 原文")
        meta = gr.Markdown(_META_HINT, elem_id="article-meta")
        view = gr.HighlightedText(label="文章", combine_adjacent=True, show_legend=False,
                                  elem_id="article-view", color_map={"引用": "yellow"})
    return _SourcePanel(meta, view)


def _hidden_boxes(gr) -> _HiddenBoxes:
    return _HiddenBoxes(gr.Textbox(visible="hidden", elem_id="cite-key"),
                        gr.Textbox(visible="hidden", elem_id="cite-target"),
                        gr.Textbox(visible="hidden", elem_id="copy-key"),
                        gr.Textbox(visible="hidden", elem_id="copied"))


def _browse_tab(gr, all_articles: list, article_parts: Callable) -> _BrowseTab:
    pages = _pages(all_articles)
    first = all_articles[0] if all_articles else None
    value, title, first_meta = article_parts(first.article_id) if first else ([], "文章", "")
    with gr.Row():
        page = gr.Dropdown(choices=[("全部版面", "")] + pages, value="", label="版面", elem_id="page-pick")
        art_pick = gr.Dropdown(choices=[(a.title, a.article_id) for a in all_articles],
                               value=first.article_id if first else None, label="文章",
                               elem_id="article-pick")
    browse_meta = gr.Markdown(first_meta)
    browse_view = gr.HighlightedText(value=value, label=title, show_legend=False, elem_id="browse-view")
    return _BrowseTab(page, art_pick, browse_meta, browse_view)


def _wire_chat(gr, demo, h: _Handlers, state: _State, c: _ChatColumn, source: _SourcePanel,
               hidden: _HiddenBoxes) -> None:
    """The 问答 tab's events: ask (box, button, examples), remember and restore the conversation,
    stop, clear, open a citation, copy an answer."""
    # Gradio passes the request to parameters annotated gr.Request; the annotations here are
    # strings (postponed), which it cannot resolve since gradio is imported inside functions
    h.respond.__annotations__["request"] = _stop.__annotations__["request"] = gr.Request
    outputs = [c.chat, c.box, state.cites, state.asked, state.turn, c.answer_state]
    inputs = [c.box, c.chat, c.k, c.retriever, c.mode, state.cites, state.asked, state.turn, c.paper, c.region,
              c.since, c.until]
    # our own Chinese status line replaces Gradio's progress overlay (English, with a guessed ETA)
    quiet = dict(api_visibility="private", show_progress="hidden")
    asked = [c.box.submit(h.respond, inputs, outputs, **quiet), c.send.click(h.respond, inputs, outputs, **quiet)]
    for b in c.example_buttons:  # an example is asked at once, as if typed
        asked.append(b.click(lambda q: q, b, c.box, queue=False, **quiet).then(h.respond, inputs, outputs, **quiet))
    for event in asked:
        event.then(_remember, [c.chat, state.cites, state.asked, state.turn], state.saved, **quiet)
    demo.load(_restore, state.saved, [c.chat, state.cites, state.asked, state.turn, c.answer_state], **quiet)
    c.stop.click(_stop, None, None, api_visibility="private", queue=False)
    c.clear.click(lambda: ([], "", {}, [], gr.update(value=[], label="文章"), _META_HINT, {}),
                  None, [c.chat, c.box, state.cites, state.asked, source.view, source.meta, state.saved],
                  api_visibility="private", cancels=asked)
    # the chat's own bin icon forgets the conversation too, not only what is shown
    c.chat.clear(lambda: ({}, [], gr.update(value=[], label="文章"), _META_HINT, {}), None,
                 [state.cites, state.asked, source.view, source.meta, state.saved],
                 api_visibility="private")
    hidden.cite_key.change(h.open_cite, [hidden.cite_key, state.cites], [source.view, source.meta, hidden.cite_target],
                           **quiet).then(None, hidden.cite_target, None, js="(t) => window.ragScrollToExcerpt(t)")
    hidden.copy_key.change(lambda key, cites: (cites or {}).get(f"{(key or '').split('@')[0]}-copy", ""),
                           [hidden.copy_key, state.cites], hidden.copied, **quiet).then(
        None, hidden.copied, None, js="(t) => window.ragCopy(t)")


def _wire_browse(h: _Handlers, b: _BrowseTab) -> None:
    """The 文章浏览 tab's events: a page lists its articles, an article is shown."""
    b.page.change(h.list_articles, b.page, b.art_pick, api_visibility="private")
    b.art_pick.change(lambda a: h.article_view(a), b.art_pick, [b.view, b.meta], api_visibility="private")


def _remember(messages, cites, asked, turn) -> dict:
    """What the browser keeps of the conversation (a reload restores it)."""
    return {"messages": messages or [], "cites": cites or {}, "asked": asked or [], "turn": int(turn or 0)}


def _restore(saved):
    """The conversation the browser kept, or an empty one."""
    d = saved if isinstance(saved, dict) else {}
    turn = int(d.get("turn") or 0)
    state = f"已恢复上次的对话（共 {turn} 问）" if turn else "新对话"
    return d.get("messages") or [], d.get("cites") or {}, d.get("asked") or [], turn, state


_STATUS_TEXT = {
    "queued": "本地模型正忙，前面还有 {ahead} 个问题，请稍候",
    "loading": "正在加载本地模型，首次需要几秒钟",
    "generating": "本地模型正在作答",
}
_cancels: dict[str, threading.Event] = {}
_cancels_lock = threading.Lock()


def _cancel_event(request) -> threading.Event:
    """A fresh stop flag for this browser session's new question."""
    key = getattr(request, "session_hash", None) or "?"
    event = threading.Event()
    with _cancels_lock:
        _cancels[key] = event
        while len(_cancels) > 1000:  # forget the oldest sessions
            _cancels.pop(next(iter(_cancels)))
    return event


def _stop(request) -> None:
    """The 停止 button: the session's running answer stops (its model generation is cancelled)."""
    with _cancels_lock:
        event = _cancels.get(getattr(request, "session_hash", None) or "?")
    if event is not None:
        event.set()


def _usable_examples(backend: _Backend) -> list[str]:
    try:
        engine = backend.engine()
    except RagError:
        return []
    out = []
    for q in EXAMPLES:
        try:
            if not engine.ask(q).refused:
                out.append(q)
        except RagError:
            continue
    if len(out) < 3:  # another corpus: offer its headlines as topics
        out += [f"{a.title}的主要内容是什么？" for a in list(engine.index.articles.values())[:5]
                if a.kind == "article" and not a.provisional_title]
    return out[:6]
