"""Thin Gradio web chat over pipeline.ask(): cited answers, a sources panel, the article browser,
and a named API endpoint ``ask``. No retrieval logic lives here."""
from __future__ import annotations

import html
import logging
import os
import queue
import re
import threading
import time
from pathlib import Path

from .config import Settings
from .errors import RagError
from .pipeline import explain_fallback

__all__ = ["build_app", "serve", "EXAMPLES"]

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
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
CSS = """
#answer-sources .wrap { gap: 4px; }
.rag-note { color: #666; font-size: 0.9em; }
"""


def _md_text(text: str) -> str:
    """Show text as text in a Markdown component: HTML escaped, Markdown syntax neutralised."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).replace("\n", "  \n")


def _citation_label(c: dict) -> str:
    return f"[{c['n']}] 《{c['title']}》 {c['source']} 第{c['line']}行"


def _related_label(r: dict) -> str:
    return f"《{r['title']}》 {r['source']}"


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


def build_app(index_dir: str | Path = "index", seeds: str | Path | None = "seeds",
              settings: Settings | None = None):
    """The Gradio Blocks app (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    backend = _Backend(index_dir, seeds, settings)
    default_mode = settings.answer_mode if settings else "extractive"
    all_articles = backend.articles()
    examples = _usable_examples(backend)

    def article_view(article_id: str | None, start: int | None = None, end: int | None = None, label: str = "引用"):
        if not article_id:
            return gr.update(value=[], label="文章"), ""
        try:
            art = backend.engine().index.articles[article_id]
        except (RagError, KeyError):
            return gr.update(value=[], label="文章"), "找不到这篇文章。"
        if start is not None and end is not None and 0 <= start < end <= len(art.text):
            parts = [(art.text[:start], None), (art.text[start:end], label), (art.text[end:], None)]
        else:
            parts = [(art.text, None)]
        head = [f"《{art.title}》"]
        if art.subtitle:
            head.append(art.subtitle)
        meta = " · ".join(x for x in (art.byline, art.source, "图片说明" if art.kind == "caption" else None,
                                       "续上版" if art.continuation else None) if x)
        return gr.update(value=[(t, lab) for t, lab in parts if t], label="　".join(head)), _md_text(meta)

    def ask_streaming(question, history, k, retriever, mode, cancel):
        """Run ask() in a worker thread; yield ("status", dict) while a local model is queued or
        loading, ("delta", text) while it writes, then ("answer", Answer) or ("error", exception)."""
        events: queue.Queue = queue.Queue()

        def work():
            try:
                ans = backend.engine().ask(question, history=history, k=int(k), retriever=retriever, mode=mode,
                                           on_delta=lambda piece: events.put(("delta", piece)),
                                           on_status=lambda state: events.put(("status", state)), cancel=cancel)
                events.put(("answer", ans))
            except Exception as exc:  # handed to the UI thread, which decides what to show
                events.put(("error", exc))

        threading.Thread(target=work, daemon=True).start()
        while True:
            kind, value = events.get()
            yield kind, value
            if kind not in ("delta", "status"):
                return

    def respond(question, messages, k, retriever, mode, last, asked, turn, request: gr.Request):
        messages = list(messages or [])
        question = (question or "").strip()
        history = list(asked or [])  # the raw questions so far (the chat shows escaped text)
        turn = int(turn or 0) + 1
        cancel = _cancel_event(request)
        t0 = time.perf_counter()
        shown_q = question if question else "（空问题）"
        messages.append({"role": "user", "content": _md_text(shown_q)})
        busy = "" if mode != "llm" else "⏳（本地模型作答中）"

        # the question is in the conversation at once, whatever the model's queue
        yield (messages + ([{"role": "assistant", "content": busy}] if busy else []), "", gr.update(), gr.update(),
               last, history, turn, f"第 {turn} 问：正在检索…")
        try:
            if not question:
                raise RagError("请输入一个问题，例如：格尔木的开发区在全国排第几？")
            ans, draft = None, ""
            for kind, value in ask_streaming(question, history, k, retriever, mode, cancel):
                if kind == "status":
                    note = _STATUS_TEXT.get(value["state"], "").format(**value)
                    shown = messages + [{"role": "assistant", "content": "⏳（" + note + "）"}]
                    yield shown, gr.update(), gr.update(), gr.update(), last, history, turn, \
                        f"第 {turn} 问：{note}"
                elif kind == "delta":  # the model's words as they come, marked as not yet checked
                    draft += value
                    shown = messages + [{"role": "assistant", "content": _md_text(draft) + " ⏳（核对中）"}]
                    yield shown, gr.update(), gr.update(), gr.update(), last, history + [question], turn, \
                        f"第 {turn} 问：本地模型正在作答，写完后与原文核对…"
                elif kind == "error":
                    raise value
                else:
                    ans = value
        except RagError as exc:
            messages.append({"role": "assistant", "content": "⚠️ " + _md_text(str(exc))})
            yield messages, gr.update(), gr.update(choices=[], value=None), "", [], history, turn, \
                f"第 {turn} 问未能回答"
            return
        except Exception as exc:  # keep serving: say what happened, log the rest
            log.exception("ask failed")
            messages.append({"role": "assistant", "content": "⚠️ 出错了：" + _md_text(type(exc).__name__)})
            yield messages, gr.update(), gr.update(choices=[], value=None), "", [], history, turn, \
                f"第 {turn} 问未能回答"
            return
        cites = [{"n": c.n, "article_id": c.article_id, "title": c.title, "source": c.source,
                  "excerpt": c.excerpt, "start": c.start, "end": c.end, "line": c.line} for c in ans.citations]
        if ans.refused:
            refs = [dict(r, n=0, start=None, end=None) for r in ans.related]
            choices = [(_related_label(r), i) for i, r in enumerate(refs)]
            panel = "没有找到能回答这个问题的段落。可以打开下面这些相关文章看看："
            items = refs
        else:
            choices = [(_citation_label(c), i) for i, c in enumerate(cites)]
            panel = "\n\n".join(f"[{c['n']}] 《{c['title']}》（{c['source']} 第{c['line']}行）\n“{c['excerpt']}”"
                                for c in cites)
            items = cites
        prefix = "🔍 " if ans.refused else ""
        stopped = (ans.check or {}).get("finish_reason") == "cancel"
        if mode == "llm" and ans.mode == "extractive-fallback" and not ans.refused:
            prefix = f"（{explain_fallback(ans)}）\n"
        text = prefix + ans.answer
        messages.append({"role": "assistant", "content": ""})
        step = max(2, len(text) // 25)
        for i in range(step, len(text) + step, step):  # stream the answer in
            messages[-1] = {"role": "assistant", "content": _md_text(text[:i])}
            yield messages, gr.update(), gr.update(), gr.update(), last, history + [question], turn, gr.update()
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        done = f"第 {turn} 问已停止" if stopped else f"第 {turn} 问已回答，用时 {seconds:.1f} 秒"
        yield messages, gr.update(), gr.update(choices=choices, value=None), panel, items, history + [question], \
            turn, done

    def open_source(choice, items):
        if choice is None or not items or not 0 <= int(choice) < len(items):
            return gr.update(), gr.update()
        item = items[int(choice)]
        label = "引用" if item.get("n") else None
        return article_view(item["article_id"], item.get("start"), item.get("end"), label)

    def list_articles(source):
        arts = [a for a in backend.articles() if not source or a.source == source]
        return gr.update(choices=[(f"{a.title}{'（图片说明）' if a.kind == 'caption' else ''}", a.article_id)
                                  for a in arts], value=None)

    def api_ask(question: str) -> dict:
        """Answer a question: {"answer", "refused", "citations": [{n, article_id, title, source, excerpt, start, end, line}]}."""
        try:
            ans = backend.engine().ask(question)  # a None or a list is refused saying so, not "empty"
        except RagError as exc:  # an ordinary user error: a message, no traceback in the server log
            raise gr.Error(str(exc), print_exception=False) from None
        return {"question": ans.question, "answer": ans.answer, "refused": ans.refused,
                "citations": [{"n": c.n, "article_id": c.article_id, "title": c.title, "source": c.source,
                               "excerpt": c.excerpt, "start": c.start, "end": c.end, "line": c.line}
                              for c in ans.citations],
                "related": list(ans.related)}

    with gr.Blocks(title="本地政策新闻问答") as demo:
        gr.Markdown("## 本地政策新闻问答\n<span class='rag-note'>回答只来自本地报纸；每句话都附有可核对的原文摘录。</span>")
        items_state = gr.State([])
        asked_state = gr.State([])
        turn_state = gr.State(0)
        with gr.Tab("问答"):
            with gr.Row():
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
                    if examples:
                        gr.Examples(examples=[[e] for e in examples], inputs=[box], label="示例问题")
                    with gr.Accordion("设置", open=False):
                        k = gr.Slider(1, 10, value=5, step=1, label="检索段落数")
                        retriever = gr.Radio([("混合（推荐）", "hybrid"), ("关键词 BM25", "bm25"), ("语义向量", "dense")],
                                             value="hybrid", label="检索方式")
                        mode = gr.Radio([("原文摘录（最快）", "extractive"), ("本地模型改写（经原文核对）", "llm")],
                                        value=default_mode, label="回答方式", elem_id="answer-mode")
                with gr.Column(scale=2):
                    gr.Markdown("### 来源")
                    sources = gr.Radio(choices=[], label="点击引用查看原文", elem_id="answer-sources")
                    panel = gr.Textbox(label="引用摘录", lines=6, interactive=False, elem_id="excerpts")
                    meta = gr.Markdown("", elem_id="article-meta")
                    view = gr.HighlightedText(label="文章", combine_adjacent=True, show_legend=False,
                                              elem_id="article-view", color_map={"引用": "yellow"})
        with gr.Tab("文章浏览"):
            pages = sorted({a.source for a in all_articles})
            with gr.Row():
                page = gr.Dropdown(choices=[("全部版面", "")] + [(p, p) for p in pages], value="", label="版面")
                art_pick = gr.Dropdown(choices=[(a.title, a.article_id) for a in all_articles], label="文章",
                                       elem_id="article-pick")
            browse_meta = gr.Markdown("")
            browse_view = gr.HighlightedText(label="文章", show_legend=False, elem_id="browse-view")

        # Gradio passes the request to parameters annotated gr.Request; the annotations here are
        # strings (postponed), which it cannot resolve since gradio is imported in this function
        respond.__annotations__["request"] = _stop.__annotations__["request"] = gr.Request
        outputs = [chat, box, sources, panel, items_state, asked_state, turn_state, answer_state]
        inputs = [box, chat, k, retriever, mode, items_state, asked_state, turn_state]
        # our own Chinese status line replaces Gradio's progress overlay (English, with a guessed ETA)
        asked = [box.submit(respond, inputs, outputs, api_visibility="private", show_progress="hidden"),
                 send.click(respond, inputs, outputs, api_visibility="private", show_progress="hidden")]
        stop.click(_stop, None, None, api_visibility="private", queue=False)
        clear.click(lambda: ([], "", gr.update(choices=[], value=None), "", [], [], gr.update(value=[]), ""),
                    None, [chat, box, sources, panel, items_state, asked_state, view, meta], api_visibility="private",
                    cancels=asked)
        # the chat's own bin icon forgets the conversation too, not only what is shown
        chat.clear(lambda: (gr.update(choices=[], value=None), "", [], [], gr.update(value=[]), ""),
                   None, [sources, panel, items_state, asked_state, view, meta], api_visibility="private")
        sources.change(open_source, [sources, items_state], [view, meta], api_visibility="private")
        page.change(list_articles, page, art_pick, api_visibility="private")
        art_pick.change(lambda a: article_view(a), art_pick, [browse_view, browse_meta], api_visibility="private")
        gr.api(api_ask, api_name="ask")
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


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


def serve(index_dir: str | Path = "index", seeds: str | Path | None = "seeds", *, host: str = "127.0.0.1",
          port: int = 7860, settings: Settings | None = None, block: bool = True):
    """Build the app and serve it (blocking unless ``block=False``); returns the Blocks."""
    import gradio as gr

    if not 0 < port < 65536:
        raise RagError(f"port must be between 1 and 65535, got {port}")
    try:
        from .pipeline import get_engine

        engine = get_engine(index_dir, settings=settings)
        engine.encoder  # load the model before the first visitor
        if seeds is not None:
            from .index import stale_pages
            from .ingest import list_pages

            stale = stale_pages(engine.index.manifest, list_pages(seeds))
            if stale:
                log.warning("the index is stale (%s changed); run `rag index`", ", ".join(stale[:3]))
    except RagError as exc:
        log.warning("%s — the chat will say so until the index is built", exc)
    demo = build_app(index_dir, seeds, settings)
    log.info("serving the chat on http://%s:%d", host, port)
    try:
        demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False,
                    quiet=True, ssr_mode=False, css=CSS, theme=gr.themes.Soft())
    except OSError as exc:
        raise RagError(f"cannot serve on {host}:{port}: {exc}") from None
    return demo
