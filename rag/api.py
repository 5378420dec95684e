"""The HTTP server: REST routes, an OpenAI-compatible chat endpoint and the Gradio chat at ``/``, one
ASGI app behind an optional API key, a request-size limit and a per-client rate limit.

>>> serve("index", host="127.0.0.1", port=7860, options=ApiOptions(api_key="s3cret"))  # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import Settings
from .errors import BadInput, RagError
from .types import AnswerMode, Retriever
from .guard import ApiError, ApiOptions, Gate, TokenBuckets, from_rag_error, log_error

__all__ = ["ApiOptions", "TokenBuckets", "build_server", "serve", "MODELS"]

log = logging.getLogger("rag")

# OpenAI model names -> answer modes
MODELS = {"rag-extractive": AnswerMode.EXTRACTIVE, "rag-llm": AnswerMode.LLM}
# the extra field of a chat completion (and of its last streamed chunk) holding the `rag ask --json` object
EXTRA_FIELD = "rag"


# ---- request bodies (documented on /docs) -------------------------------------------------------

FILTERS_DOC = ("only sources inside these: `paper`, `region` (contained in the page's region or city), `since`, "
               "`until` (YYYY-MM-DD, inclusive); filters no article matches are a 400 saying so")
# the enums' values, as the Literal pydantic checks a strict JSON body against
RetrieverName = Literal[tuple(r.value for r in Retriever)]
AnswerModeName = Literal[tuple(m.value for m in AnswerMode)]


class AskRequest(BaseModel):
    """``POST /api/ask``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(description="the question, 1-500 characters", examples=["格尔木的开发区在全国排第几？"])
    history: list[str] = Field(default_factory=list, description="earlier questions of the conversation, oldest "
                                                                   "first; a follow-up is resolved against them")
    k: int | None = Field(None, ge=1, le=100, description="passages to answer from (default 5)")
    mode: AnswerModeName | None = Field(None, description="extractive (default) or llm")
    retriever: RetrieverName | None = Field(None, description="hybrid (default), bm25 or dense")
    filters: dict[str, Any] | None = Field(None, description=FILTERS_DOC, examples=[{"region": "格尔木"}])


class SearchRequest(BaseModel):
    """``POST /api/search``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    query: str = Field(description="the query, 1-500 characters", examples=["电子劳动合同"])
    k: int = Field(5, ge=1, le=100, description="passages to return")
    retriever: RetrieverName | None = Field(None, description="hybrid (default), bm25 or dense")
    filters: dict[str, Any] | None = Field(None, description=FILTERS_DOC, examples=[{"region": "格尔木"}])


class ChatMessage(BaseModel):
    """One OpenAI chat message; only the text of user messages is read."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; unknown fields (temperature…) are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="rag-extractive or rag-llm")
    messages: list[ChatMessage] = Field(min_length=1, description="the conversation; the last one is the question")
    stream: bool = False
    k: int | None = Field(None, ge=1, le=100, description="rag extra: passages to answer from")
    retriever: RetrieverName | None = Field(None, description="rag extra: hybrid, bm25 or dense")
    filters: dict[str, Any] | None = Field(None, description="rag extra: " + FILTERS_DOC)


def _checked(text: str, settings: Settings, field: str) -> str:
    """A question or query checked before any work, its problem reported with the field's name."""
    from .retrieve import check_query

    try:
        return check_query(text, settings.answer)
    except BadInput as exc:
        err = from_rag_error(exc)
        err.param = field
        raise err from None


def _filters(filters: dict | None, engine=None):
    """The request's filters, checked (and, with ``engine``, checked to match some article) before any work."""
    from .meta import Filters

    try:
        parsed = Filters.from_dict(filters)
        if engine is not None:
            engine.allowed_rows(parsed)
    except BadInput as exc:
        message = str(exc)
        zh = message.split(" (no article")[0] if message.startswith("没有") else "筛选条件有误"
        raise ApiError(400, "invalid_request_error", zh, message, param="filters",
                       code="no_match" if message.startswith("没有") else None) from None
    return parsed or None


def _message_text(message: ChatMessage, where: str) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, "invalid_request_error", "只支持文字消息", f"{where}: only text content parts "
                           f"are supported, got {str(part.get('type'))[:30]!r}", param=where)
        texts.append(part["text"])
    return "".join(texts)


_PIECE = re.compile(r"[^。！？；\n]*(?:[。！？；\n]+|$)(?:\[\d+\])*")


def _pieces(text: str) -> list[str]:
    """The answer cut after each sentence and its markers, for streaming."""
    parts = [p for p in _PIECE.findall(text) if p]
    return parts if "".join(parts) == text and parts else [text]


def _validation_error(exc: RequestValidationError) -> ApiError:
    first = (exc.errors() or [{}])[0]
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
    name = ".".join(loc)
    kind, msg = first.get("type", ""), first.get("msg", "invalid value")
    if kind == "json_invalid":
        return ApiError(422, "invalid_request_error", "请求体不是有效的 JSON", "request body is not valid JSON")
    if not name:
        return ApiError(422, "invalid_request_error", "请求体应为 JSON 对象", f"request body: {msg}")
    if kind == "missing":
        return ApiError(422, "invalid_request_error", f"缺少字段 {name}", f"{name}: field required", param=name)
    if kind == "extra_forbidden":
        return ApiError(422, "invalid_request_error", f"未知字段 {name}", f"{name}: unknown field", param=name)
    return ApiError(422, "invalid_request_error", f"字段 {name} 的值无效", f"{name}: {msg}", param=name)


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def build_server(index_dir: str | Path = "index", seeds: str | Path | None = "seeds", *,
                 settings: Settings | None = None, options: ApiOptions | None = None,
                 chat: bool = True) -> FastAPI:
    """The ASGI app: REST and OpenAI routes, the Gradio chat at ``/`` (unless ``chat`` is False)."""
    from .pipeline import get_engine

    options = options or ApiOptions()
    index_dir = Path(index_dir)
    limits = {mode: asyncio.Semaphore(options.max_concurrent) for mode in (*AnswerMode, "search")}

    app = FastAPI(title="rag — 本地政策新闻问答 API", version="1",
                  description="Cited answers from local newspaper pages. Errors are "
                              "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`; the OpenAI chat "
                              f"completion carries the `rag ask --json` object in the extra field `{EXTRA_FIELD}`.")

    def engine():
        try:
            return get_engine(index_dir, settings=settings)
        except RagError as exc:
            raise from_rag_error(exc) from None

    async def run(kind: str, fn, *args, **kwargs):
        """Run engine work in a thread, at most ``max_concurrent`` at once per kind."""
        try:
            await asyncio.wait_for(limits[kind].acquire(), options.queue_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, "server_busy", "服务器繁忙，请稍后再试", "server busy; retry later",
                           headers={"Retry-After": "10"}) from None
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except RagError as exc:
            raise from_rag_error(exc) from None
        finally:
            limits[kind].release()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        log_error(request.method, request.url.path, exc)
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = _validation_error(exc)
        log_error(request.method, request.url.path, err)
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            err = ApiError(404, "not_found_error", "找不到该地址", f"no route {request.url.path}")
        elif exc.status_code == 405:
            err = ApiError(405, "invalid_request_error", f"不支持 {request.method} 方法",
                           f"method {request.method} not allowed on {request.url.path}")
        else:
            err = ApiError(exc.status_code, "invalid_request_error", "请求有误", str(exc.detail))
        log_error(request.method, request.url.path, err)
        return _error_response(err)

    @app.get("/healthz", tags=["status"])
    async def healthz():
        """Index loaded, counts, encoder model and index build time; 503 while there is no usable index."""
        def loaded():
            eng = engine()
            eng.encoder  # noqa: B018 - loads the model (once) or says why it cannot
            return eng

        try:
            eng = await run("search", loaded)
        except ApiError as err:
            return JSONResponse({"status": "unavailable", **err.body()}, status_code=err.status)
        man = eng.index.manifest
        return {"status": "ok", "index": {"loaded": True, "built_at": man.get("built_at"),
                                          "format_version": man.get("format_version"), "counts": man.get("counts"),
                                          "dense_index": man.get("dense_index")},
                "model": eng.index.model, "answer_modes": sorted(MODELS), "default_mode": eng.settings.answer.mode}

    @app.post("/api/ask", tags=["rest"])
    async def api_ask(body: AskRequest):
        """Answer a question with verbatim citations (the `rag ask --json` object)."""
        _filters(body.filters)
        eng = engine()
        filters = _filters(body.filters, eng)
        _checked(body.question, eng.settings, "question")
        ans = await run(body.mode or eng.settings.answer.mode, eng.ask, body.question, history=body.history,
                        k=body.k, retriever=body.retriever, mode=body.mode, filters=filters)
        return ans.to_json()

    @app.post("/api/search", tags=["rest"])
    async def api_search(body: SearchRequest):
        """Find passages (the `rag search --json` object)."""
        _filters(body.filters)
        eng = engine()
        filters = _filters(body.filters, eng)
        _checked(body.query, eng.settings, "query")
        hits = await run("search", eng.search, body.query, k=body.k, retriever=body.retriever, filters=filters)
        return {"query": body.query, "hits": [h.to_json() for h in hits]}

    @app.get("/api/articles", tags=["rest"])
    async def api_articles(source: str | None = None, paper: str | None = None, region: str | None = None,
                           since: str | None = None, until: str | None = None):
        """The articles (the `rag articles --json` objects), optionally of one page file (`source`) and
        inside the filters `paper`, `region`, `since`, `until` (YYYY-MM-DD)."""
        filters = _filters({k: v for k, v in dict(paper=paper, region=region, since=since, until=until).items() if v})
        arts = sorted(engine().index.articles.values(), key=lambda a: (a.source, a.article_id))
        found = [a.to_json() for a in arts if (source is None or a.source == source)
                 and (filters is None or filters.admits(a))]
        return {"count": len(found), "articles": found}

    @app.get("/api/articles/{article_id}", tags=["rest"])
    async def api_article(article_id: str):
        """One article by id."""
        art = engine().index.articles.get(article_id)
        if art is None:
            raise ApiError(404, "not_found_error", "找不到这篇文章", f"no article {article_id[:80]!r}",
                           param="article_id")
        return art.to_json()

    @app.get("/v1/models", tags=["openai"])
    async def list_models():
        """The answer modes as OpenAI models."""
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "rag"}
                                           for name in MODELS]}

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatRequest):
        """OpenAI chat completion: the last user message is the question, the earlier user messages its
        history. The text carries `[n]` markers; the citations are in the extra field `rag`."""
        mode = MODELS.get(body.model)
        if mode is None:
            raise ApiError(404, "invalid_request_error", f"没有模型 {body.model[:40]}",
                           f"model {body.model[:40]!r} does not exist; use one of {', '.join(MODELS)}",
                           param="model", code="model_not_found")
        if body.messages[-1].role != "user":
            raise ApiError(400, "invalid_request_error", "最后一条消息应来自用户",
                           "the last message must have role user", param="messages")
        texts = [_message_text(m, f"messages.{i}.content") for i, m in enumerate(body.messages)]
        question = texts[-1]
        history = [t for m, t in zip(body.messages[:-1], texts[:-1]) if m.role == "user" and t.strip()]
        eng = engine()
        filters = _filters(body.filters, eng)
        _checked(question, eng.settings, f"messages.{len(texts) - 1}.content")  # a 400, not an error mid-stream
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        cancel = threading.Event()
        job = run(mode, eng.ask, question, history=history, k=body.k, retriever=body.retriever, mode=mode,
                  cancel=cancel, filters=filters)
        if not body.stream:
            ans = await job
            return {"id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.answer},
                                 "logprobs": None, "finish_reason": "stop"}],
                    EXTRA_FIELD: ans.to_json()}

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            obj = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        async def events():
            task = asyncio.ensure_future(job)
            try:
                yield chunk({"role": "assistant", "content": ""})
                while not task.done():  # only the checked answer is sent; meanwhile keep the line alive
                    done, _ = await asyncio.wait({task}, timeout=5)
                    if not done:
                        yield ": waiting for the answer\n\n"
                try:
                    ans = task.result()
                except ApiError as err:
                    log_error("POST", "/v1/chat/completions", err)
                    yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"
                    return
                for piece in _pieces(ans.answer):
                    yield chunk({"content": piece})
                yield chunk({}, "stop", **{EXTRA_FIELD: ans.to_json()})
                yield "data: [DONE]\n\n"
            finally:
                if not task.done():  # the client went away: stop a local model's generation
                    cancel.set()
                    task.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def unknown(request: Request, rest: str):
        from starlette.routing import Match

        routes = [r for r in app.routes if getattr(r, "endpoint", None) not in (None, unknown)]
        if any(route.matches(request.scope)[0] == Match.PARTIAL for route in routes):
            raise ApiError(405, "invalid_request_error", f"不支持 {request.method} 方法",
                           f"method {request.method} not allowed on {request.url.path}")
        raise ApiError(404, "not_found_error", "找不到该地址", f"no route {request.url.path}")

    chat_events = _mount_chat(app, index_dir, seeds, settings, options) if chat else frozenset()
    app.add_middleware(Gate, options=options, buckets=TokenBuckets(options.rate_per_minute, options.burst),
                       chat_events=chat_events)
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


# the chat's handlers the rate limit counts: a question (typed, an example, the Gradio /ask endpoint) and the
# 资料库 tab's uploads and writes; the page's other events (restore, open a source, copy…) are not counted
_COUNTED = ("respond", "api_ask", "on_upload", "on_add", "on_remove")


def _mount_chat(app: FastAPI, index_dir: Path, seeds, settings: Settings | None,
                options: ApiOptions) -> frozenset[int]:
    """The Gradio chat at ``/``; with a key, a login whose password is the key (any user name).
    Returns the fn_index of the chat's page events that do not ask a question."""
    import gradio as gr

    from .ui import build_app
    from .webpage import CSS, HEAD

    demo = build_app(index_dir, seeds, settings, allow_upload=options.allow_uploads)
    auth = None
    if options.api_key:
        key = options.api_key.encode()

        def auth(username: str, password: str) -> bool:
            return hmac.compare_digest((password or "").encode(), key)

    gr.mount_gradio_app(app, demo, path="/", auth=auth, auth_message="请输入访问密钥（用户名任意） / enter the API key as "
                        "password (any user name)", show_error=False, ssr_mode=False, css=CSS,
                        theme=gr.themes.Soft(), max_file_size=options.max_body_bytes, footer_links=[])
    app.add_middleware(ChinesePage, head=HEAD)
    return frozenset(i for i, f in demo.fns.items() if getattr(f.fn, "__name__", None) not in _COUNTED)


class ChinesePage:
    """The chat's HTML page as a Chinese page: ``<html lang="zh-CN">``, and ``head`` (rag.webpage.HEAD) put
    first into its <head>, before Gradio's scripts choose their interface language."""

    def __init__(self, app, head: str):
        self.app, self.head = app, head.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            return await self.app(scope, receive, send)
        start, chunks = None, []

        async def buffered(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return None
            if message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return None
            body = b"".join(chunks)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            if any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                body = re.sub(rb'<html(\s+)lang="en"', rb'<html\1lang="zh-CN"', body, count=1)
                body = body.replace(b"<head>", b"<head>" + self.head, 1)
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)


def serve(index_dir: str | Path = "index", seeds: str | Path | None = "seeds", *, host: str = "127.0.0.1",
          port: int = 7860, settings: Settings | None = None, options: ApiOptions | None = None) -> None:
    """Load the index and model, then serve the API and the chat until interrupted."""
    import uvicorn

    if not 0 < port < 65536:
        raise BadInput(f"port must be between 1 and 65535, got {port}")
    _check_bindable(host, port)  # before minutes of loading, not after
    options = options or ApiOptions()
    try:
        from .pipeline import warm_up

        warm_up(index_dir, seeds, settings)
    except RagError as exc:
        log.warning("%s — the API and chat will say so until the index is built", exc)
    if not options.api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use it (--api-key)", host)
    app = build_server(index_dir, seeds, settings=settings, options=options)
    log.info("serving the chat on http://%s:%d/ and the API on http://%s:%d/docs", host, port, host, port)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, log_level="warning",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except (OSError, SystemExit) as exc:  # uvicorn exits when it cannot bind
        raise RagError(f"cannot serve on {host}:{port}: {exc}") from None
    if not server.started:
        raise RagError(f"cannot serve on {host}:{port}: the address is in use or not allowed")


def _check_bindable(host: str, port: int) -> None:
    import socket

    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        raise RagError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
