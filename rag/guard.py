"""What guards the HTTP server: the API key, the request-size limit, a token bucket per client,
closed uploads, and errors answered as one JSON object and one log line (never a traceback)."""
from __future__ import annotations

import hmac
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, IndexFormat, IndexNotFound, IndexStale, ModelError, RagError

__all__ = ["ApiOptions", "ApiError", "TokenBuckets", "Gate", "from_rag_error", "log_error", "hide_paths"]

log = logging.getLogger("rag")


@dataclass(frozen=True, kw_only=True)
class ApiOptions:
    """What guards the server: key, body limit, rate limit, uploads, CORS, concurrent answers."""

    api_key: str | None = None  # when set: Bearer on /api, /v1 and /healthz; a login for the chat
    max_body_bytes: int = 1 << 20
    rate_per_minute: float = 120.0  # per client address; 0 turns the limit off
    burst: int = 30
    allow_uploads: bool = False
    cors_origins: tuple[str, ...] = ()
    max_concurrent: int = 4  # answers computed at once per mode; the rest wait
    queue_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise BadInput(f"the body limit must be at least 1024 bytes, got {self.max_body_bytes}")
        if self.rate_per_minute < 0 or self.burst < 1:
            raise BadInput(f"rate limit must be >= 0 and burst >= 1, got {self.rate_per_minute} and {self.burst}")
        if self.api_key is not None and not self.api_key.strip():
            raise BadInput("the API key is empty")


class ApiError(Exception):
    """An error answered as JSON ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, kind: str, zh: str, en: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(en)
        self.status, self.kind, self.zh, self.en = status, kind, zh, en
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return {"error": {"message": f"{self.zh} / {self.en}", "type": self.kind, "param": self.param,
                          "code": self.code}}


_ABS_PATH = re.compile(r"(?:/[^\s/'\"，。：:;()（）]+){2,}/?")


def hide_paths(text: str) -> str:
    """Server paths in a message become their last component."""
    return _ABS_PATH.sub(lambda m: Path(m.group().rstrip("/")).name, text)


def from_rag_error(exc: RagError) -> ApiError:
    en = hide_paths(str(exc))
    if isinstance(exc, BadInput):
        return ApiError(400, "invalid_request_error", "输入有误", en)
    if isinstance(exc, IndexNotFound):
        return ApiError(503, "index_unavailable", "索引尚未建立，请先运行 rag index", en)
    if isinstance(exc, (IndexFormat, IndexStale)):
        return ApiError(503, "index_unavailable", "索引不可用，请重新运行 rag index", en)
    if isinstance(exc, ModelError):
        return ApiError(503, "model_unavailable", "模型不可用", en)
    return ApiError(500, "server_error", "处理失败", en)


def log_error(method: str, path: str, err: ApiError) -> None:
    log.warning("%s %s -> %d %s: %s", method, path, err.status, err.kind, err.en)


class TokenBuckets:
    """One token bucket per client: ``burst`` requests at once, refilled at ``rate_per_minute``."""

    def __init__(self, rate_per_minute: float, burst: int, max_clients: int = 10_000):
        self.rate, self.burst, self.max_clients = rate_per_minute / 60.0, burst, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """Spend a token of ``client``: 0.0 if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.max_clients:  # forget the least recently seen
                self._buckets.popitem(last=False)
        return wait


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body(), ensure_ascii=False).encode("utf-8")
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_API_PREFIXES = ("/api/", "/v1/")


def _is_api(path: str) -> bool:
    return path.startswith(_API_PREFIXES) or path in ("/api", "/v1")
_UPLOAD_PATHS = ("/upload", "/gradio_api/upload", "/upload_progress", "/gradio_api/upload_progress")


class Gate:
    """Pure ASGI guard in front of everything: closed uploads (403), rate limit (429), key (401),
    body size (413, from the header or while reading, before any parsing), and a last catch so that
    an unexpected error is one log line and a JSON 500, never a traceback."""

    def __init__(self, app, options: ApiOptions, buckets: TokenBuckets, chat_events: frozenset[int] = frozenset()):
        self.app, self.options, self.buckets = app, options, buckets
        # the chat's own page events (restore on load, open a source, copy, …): not counted, only
        # questions are, so one reader clicking through sources is never refused (fn_index of queue/join)
        self.chat_events = chat_events

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        try:
            self._check(scope, method, path)
            body = await self._read_body(receive, method)
            if body is not None and self._counted(method, path, body):
                self._take(scope)
        except ApiError as err:
            log_error(method, path, err)
            return await _send_error(send, err)
        if body is None:  # the client went away
            return None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        started = False

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, replay, tracked_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
            err = ApiError(500, "server_error", "服务器内部错误", f"internal error ({type(exc).__name__})")
            log_error(method, path, err)
            if not started:
                await _send_error(send, err)

    def _check(self, scope, method: str, path: str) -> None:
        opts = self.options
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path.rstrip("/") in _UPLOAD_PATHS and not opts.allow_uploads:
            raise ApiError(403, "permission_error", "本服务不接受上传文件",
                           "uploads are closed on this server (rag serve --allow-uploads opens them)")
        if opts.api_key and (_is_api(path) or path == "/healthz") and method != "OPTIONS":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), opts.api_key.encode()):
                raise ApiError(401, "authentication_error", "缺少或错误的 API 密钥",
                               "missing or wrong API key: send Authorization: Bearer <key>",
                               headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "invalid_request_error", "Content-Length 无效", f"bad Content-Length {length[:20]!r}")
            if int(length) > opts.max_body_bytes:
                raise self._too_large()

    def _counted(self, method: str, path: str, body: bytes) -> bool:
        """Whether a request takes a token: every API request and every chat POST but its page events."""
        if _is_api(path):
            return True
        if method != "POST" or not path.startswith("/gradio_api/"):
            return False
        if path == "/gradio_api/queue/join" and self.chat_events:
            try:
                return json.loads(body).get("fn_index") not in self.chat_events
            except (ValueError, AttributeError):
                return True
        return True

    def _take(self, scope) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.buckets.take(client)
        if wait:
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, "rate_limit_error", f"请求太频繁，请 {seconds} 秒后再试",
                           f"too many requests from this client; retry after {seconds} s",
                           headers={"Retry-After": str(seconds)})

    def _too_large(self) -> ApiError:
        limit = self.options.max_body_bytes
        return ApiError(413, "request_too_large", f"请求体过大，上限 {limit} 字节",
                        f"request body too large: the limit is {limit} bytes")

    async def _read_body(self, receive, method: str) -> bytes | None:
        """The whole body, read before the app sees it, stopping as soon as it passes the limit."""
        if method in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return b""
        parts, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.options.max_body_bytes:
                raise self._too_large()
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)
