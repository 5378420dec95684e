"""The HTTP API end to end: real `rag serve` processes on loopback, driven over HTTP by httpx, the
official `openai` client and gradio_client."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, SEEDS, run_cli

KEY = "test-key-7f3a"
Q = "格尔木的开发区在全国排第几？"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `rag serve` subprocess on 127.0.0.1, ready once /healthz answers 200."""

    def __init__(self, index: Path, log: Path, *extra: str, key: str | None = None, ready: int = 200):
        self.port, self.key, self.log = _free_port(), key, log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "rag", "serve", "--index", str(index), "--seeds",
                                      str(SEEDS), "--host", "127.0.0.1", "--port", str(self.port), *extra],
                                     cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(log.read_text())
            try:
                if httpx.get(self.url + "/healthz", headers=headers, timeout=2).status_code == ready:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)  # polling interval, bounded by the deadline
        self.stop()
        raise RuntimeError("rag serve did not become ready:\n" + log.read_text())

    def client(self, source: str = "127.0.0.1", key: str | None = "default", **kw) -> httpx.Client:
        """An HTTP client from a given loopback source address (each address has its own rate bucket)."""
        key = self.key if key == "default" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120,
                            transport=httpx.HTTPTransport(local_address=source), **kw)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served_index(index_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api") / "index"
    shutil.copytree(index_dir, path)
    return path


@pytest.fixture(scope="module")
def open_server(served_index, tmp_path_factory):
    """No key, default limits but a bucket big enough for every test here."""
    server = Server(served_index, tmp_path_factory.mktemp("open") / "serve.log", "--burst", "1000")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded_server(served_index, tmp_path_factory):
    """A key, a 64 KiB body limit and a bucket of 8 requests refilled once a minute."""
    server = Server(served_index, tmp_path_factory.mktemp("guarded") / "serve.log", "--api-key", KEY,
                    "--max-body", "65536", "--burst", "8", "--rate-limit", "1", key=KEY)
    yield server
    server.stop()


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["type"] and err["message"]
    assert " / " in err["message"]  # Chinese / English
    assert "Traceback" not in response.text and "/tmp" not in response.text and str(ROOT) not in response.text
    return err


def _without_timings(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "timings_ms"}


# ---- REST ---------------------------------------------------------------------------------------

def test_rest_ask_is_the_cli_json(open_server, served_index):
    with open_server.client() as http:
        api = http.post("/api/ask", json={"question": Q}).json()
    cli = json.loads(run_cli("ask", Q, "--json", "--index", str(served_index)).stdout)
    assert _without_timings(api) == _without_timings(cli)
    assert "128位" in api["answer"] and "[1]" in api["answer"]
    assert api["citations"][0]["excerpt"] in api["answer"].replace("[1]", "")


def test_rest_followup_uses_history(open_server, served_index):
    with open_server.client() as http:
        ans = http.post("/api/ask", json={"question": "那西宁呢？", "history": [Q], "k": 5,
                                          "retriever": "hybrid", "mode": "extractive"}).json()
    cli = json.loads(run_cli("ask", "--json", "--follow", "--index", str(served_index),
                             stdin=f"{Q}\n那西宁呢？\n").stdout.splitlines()[-1])
    assert _without_timings(ans) == _without_timings(cli)
    assert "西宁" in ans["resolved_question"] and "排第几" in ans["resolved_question"]  # the history was used


def test_rest_search_is_the_cli_json(open_server, served_index):
    query = "电子劳动合同"
    with open_server.client() as http:
        api = http.post("/api/search", json={"query": query, "k": 3, "retriever": "bm25"}).json()
    cli = json.loads(run_cli("search", query, "--json", "--k", "3", "--retriever", "bm25",
                             "--index", str(served_index)).stdout)
    assert api == cli
    assert len(api["hits"]) == 3 and "电子劳动合同" in api["hits"][0]["text"]


def test_rest_articles_are_the_cli_json(open_server):
    with open_server.client() as http:
        listing = http.get("/api/articles").json()
        one = http.get(f"/api/articles/{listing['articles'][0]['article_id']}").json()
        page = http.get("/api/articles", params={"source": listing["articles"][0]["source"]}).json()
        missing = http.get("/api/articles/no-such-article")
    cli = [json.loads(line) for line in run_cli("articles", "--json", "--seeds", str(SEEDS)).stdout.splitlines()]
    assert sorted(listing["articles"], key=lambda a: a["article_id"]) == sorted(cli, key=lambda a: a["article_id"])
    assert listing["count"] == len(cli) and one == listing["articles"][0]
    assert 0 < page["count"] < listing["count"]
    assert _error(missing, 404)["param"] == "article_id"


def test_filters_restrict_every_route_and_say_when_nothing_matches(open_server):
    with open_server.client() as http:
        hits = http.post("/api/search", json={"query": "人才", "k": 10, "filters": {"region": "海西"}}).json()["hits"]
        assert hits and {h["region"] for h in hits} == {"海西州"}
        assert {h["source"] for h in hits} == {"003_a3fa46dbc4287a89.txt"}
        # 格尔木's ranking is not on the 鄂尔多斯 page: the answer may only cite that page, or decline
        ans = http.post("/api/ask", json={"question": Q, "filters": {"region": "鄂尔多斯"}}).json()
        assert "128" not in ans["answer"]
        assert all(c["region"] == "鄂尔多斯" for c in ans["citations"] + ans["related"])
        listing = http.get("/api/articles", params={"region": "格尔木"}).json()
        assert listing["count"] and {a["region"] for a in listing["articles"]} == {"格尔木"}
        # the seed pages print no date and no paper: such filters match nothing, and it is said in Chinese
        for r in (http.post("/api/ask", json={"question": Q, "filters": {"paper": "海西日报"}}),
                  http.post("/api/search", json={"query": Q, "filters": {"since": "2023-01-01"}})):
            err = _error(r, 400)
            assert err["param"] == "filters" and err["code"] == "no_match"
            assert "没有符合筛选条件" in err["message"] and "地区：" in err["message"]
        bad = _error(http.post("/api/search", json={"query": Q, "filters": {"since": "2023-13-01"}}), 400)
        assert bad["param"] == "filters" and "2023-13-01" in bad["message"]
        assert "paper" in _error(http.post("/api/search", json={"query": Q, "filters": {"papr": "x"}}), 400)["message"]
        assert http.post("/api/ask", json={"question": Q, "filters": {}}).status_code == 200


def test_healthz_says_what_is_loaded(open_server):
    with open_server.client() as http:
        health = http.get("/healthz").json()
    assert health["status"] == "ok" and health["index"]["loaded"]
    assert health["index"]["counts"]["articles"] > 0 and health["index"]["built_at"]
    assert health["model"] == "bundled:multilingual-e5-small"


def test_openapi_documents_the_routes(open_server):
    with open_server.client() as http:
        paths = http.get("/openapi.json").json()["paths"]
        assert http.get("/docs").status_code == 200
    for route in ("/api/ask", "/api/search", "/api/articles", "/api/articles/{article_id}", "/healthz",
                  "/v1/models", "/v1/chat/completions"):
        assert route in paths


# ---- wrong input --------------------------------------------------------------------------------

@pytest.mark.parametrize("body,param", [
    ({"question": None}, "question"),
    ({"question": ["格尔木"]}, "question"),
    ({"question": Q, "k": "5"}, "k"),
    ({"question": Q, "k": 0}, "k"),
    ({"question": Q, "mode": "magic"}, "mode"),
    ({"question": Q, "retriever": "grep"}, "retriever"),
    ({"question": Q, "history": "格尔木"}, "history"),
    ({"question": Q, "colour": "blue"}, "colour"),
    ({}, "question"),
])
def test_wrong_types_are_422_naming_the_field(open_server, body, param):
    with open_server.client() as http:
        assert _error(http.post("/api/ask", json=body), 422)["param"] == param


def test_bad_bodies_and_questions(open_server):
    with open_server.client() as http:
        assert "JSON" in _error(http.post("/api/ask", content=b"{not json",
                                          headers={"content-type": "application/json"}), 422)["message"]
        assert _error(http.post("/api/ask", json=[]), 422)["type"] == "invalid_request_error"
        assert _error(http.post("/api/ask", json={"question": "   "}), 400)["param"] == "question"
        assert _error(http.post("/api/search", json={"query": "x" * 600}), 400)["param"] == "query"
        assert _error(http.get("/api/ask"), 405)
        assert _error(http.get("/api/nothing-here"), 404)
        ok = http.post("/api/ask", json={"question": Q})
    assert ok.status_code == 200


def test_errors_are_one_log_line_without_traceback(open_server):
    with open_server.client() as http:
        http.post("/api/ask", json={"question": 5})
        http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": Q}]})
        assert http.get("/healthz").status_code == 200
    log = open_server.log.read_text()
    assert "Traceback" not in log and 'File "' not in log
    assert log.count("POST /api/ask -> 422 invalid_request_error: question:") >= 1
    assert "POST /v1/chat/completions -> 404 invalid_request_error: model 'gpt-4' does not exist" in log


# ---- OpenAI-compatible --------------------------------------------------------------------------

def _openai(server, key: str | None = None, source: str = "127.0.0.1"):
    openai = pytest.importorskip("openai")
    http = httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=300)
    return openai, openai.OpenAI(base_url=server.url + "/v1", api_key=key or server.key or "unused",
                                 max_retries=0, http_client=http)


def test_openai_client_gets_cited_answers(open_server):
    _, client = _openai(open_server)
    assert {m.id for m in client.models.list()} == {"rag-extractive", "rag-llm"}
    resp = client.chat.completions.create(model="rag-extractive", messages=[{"role": "user", "content": Q}])
    text = resp.choices[0].message.content
    rag = resp.model_extra["rag"]
    assert "128位" in text and "[1]" in text and resp.choices[0].finish_reason == "stop"
    assert rag["answer"] == text and rag["citations"][0]["n"] == 1
    assert rag["citations"][0]["excerpt"] in text


def test_openai_client_streams_the_same_answer(open_server):
    _, client = _openai(open_server)
    whole = client.chat.completions.create(model="rag-extractive", messages=[{"role": "user", "content": Q}])
    chunks = list(client.chat.completions.create(model="rag-extractive", stream=True,
                                                 messages=[{"role": "user", "content": Q}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["rag"]["citations"] == whole.model_extra["rag"]["citations"]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_followup_uses_the_conversation(open_server, stream):
    _, client = _openai(open_server)
    first = client.chat.completions.create(model="rag-extractive", messages=[{"role": "user", "content": Q}])
    messages = [{"role": "system", "content": "你是本地新闻助手"}, {"role": "user", "content": Q},
                {"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": [{"type": "text", "text": "那西宁呢？"}]}]
    resp = client.chat.completions.create(model="rag-extractive", messages=messages, stream=stream)
    if stream:
        chunks = list(resp)
        text, rag = "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].model_extra["rag"]
    else:
        text, rag = resp.choices[0].message.content, resp.model_extra["rag"]
    assert text == rag["answer"]
    assert "西宁" in rag["resolved_question"] and "排第几" in rag["resolved_question"]  # the conversation was used


def test_openai_errors_are_openai_errors(open_server):
    openai, client = _openai(open_server)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": Q}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="rag-extractive", messages=[{"role": "user", "content": " "}],
                                       stream=True)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="rag-extractive", messages=[{"role": "assistant", "content": Q}])


def test_llm_mode_streams_only_the_checked_answer(open_server):
    """One local-model request: whatever the model wrote, the stream is the final checked answer."""
    _, client = _openai(open_server)
    chunks = list(client.chat.completions.create(model="rag-llm", stream=True,
                                                 messages=[{"role": "user", "content": "电子劳动合同有什么好处？"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    rag = chunks[-1].model_extra["rag"]
    assert rag["mode"] in ("llm", "llm-repaired", "extractive-fallback")
    assert text == rag["answer"] and "[1]" in text


# ---- the chat is still there --------------------------------------------------------------------

def test_gradio_chat_and_its_ask_endpoint_are_mounted(open_server):
    from gradio_client import Client

    with open_server.client() as http:
        assert "本地政策新闻问答" in http.get("/").text
        assert http.post("/gradio_api/upload", files={"files": ("a.txt", b"hello")}).status_code == 403
    client = Client(open_server.url + "/", verbose=False)
    assert "128位" in client.predict(Q, api_name="/ask")["answer"]
    with pytest.raises(Exception, match="must be text"):  # not "query is empty"
        client.predict(None, api_name="/ask")
    assert "Traceback" not in open_server.log.read_text()


def test_without_an_index_the_api_says_so(tmp_path):
    server = Server(tmp_path / "no-index", tmp_path / "serve.log", ready=503)
    try:
        with server.client() as http:
            health = http.get("/healthz")
            ask = http.post("/api/ask", json={"question": Q})
        assert health.json()["status"] == "unavailable"
        assert "rag index" in _error(ask, 503)["message"]
    finally:
        server.stop()


def test_token_bucket_refills_at_its_rate():
    from rag.guard import TokenBuckets

    buckets = TokenBuckets(rate_per_minute=60, burst=2)
    assert [buckets.take("a", now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a", now=0.0) == pytest.approx(1.0)  # one token a second
    assert buckets.take("b", now=0.0) == 0.0  # another client has its own bucket
    assert buckets.take("a", now=0.5) == pytest.approx(0.5)
    assert buckets.take("a", now=1.0) == 0.0
    assert TokenBuckets(rate_per_minute=0, burst=1).take("a") == 0.0  # 0: no limit


# ---- key and limits -----------------------------------------------------------------------------

ROUTES = [("GET", "/healthz", None), ("GET", "/api/articles", None), ("GET", "/api/articles/x", None),
          ("POST", "/api/ask", {"question": Q}), ("POST", "/api/search", {"query": Q}), ("GET", "/v1/models", None),
          ("POST", "/v1/chat/completions", {"model": "rag-extractive", "messages": [{"role": "user", "content": Q}]})]


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_with_a_key_nothing_answers_without_it(guarded_server, key):
    for i, (method, path, body) in enumerate(ROUTES):  # one source address each: the bucket stays full
        with guarded_server.client(f"127.0.1.{i + (20 if key else 1)}", key=key) as http:
            r = http.request(method, path, json=body)
        assert _error(r, 401)["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    with guarded_server.client("127.0.1.50", key=None) as http:
        assert http.get("/gradio_api/info").status_code == 401  # the chat asks for a login
        assert http.get("/config").status_code == 401
    with guarded_server.client("127.0.1.51") as http:
        assert http.post("/api/ask", json={"question": Q}).status_code == 200


def test_with_a_key_the_clients_log_in(guarded_server):
    from gradio_client import Client

    openai, client = _openai(guarded_server, key="wrong", source="127.0.4.1")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    _, client = _openai(guarded_server, key=KEY, source="127.0.4.2")
    resp = client.chat.completions.create(model="rag-extractive", messages=[{"role": "user", "content": Q}])
    assert "128位" in resp.choices[0].message.content
    result = Client(guarded_server.url + "/", auth=("any-user", KEY), verbose=False).predict(Q, api_name="/ask")
    assert "128位" in result["answer"]
    with pytest.raises(ValueError):
        Client(guarded_server.url + "/", auth=("any-user", "wrong"), verbose=False)


def test_oversize_bodies_get_413_before_they_are_read(guarded_server):
    # a 100 MB Content-Length with only a few bytes sent: the answer comes without the rest
    with socket.create_connection(("127.0.0.1", guarded_server.port), timeout=30,
                                  source_address=("127.0.2.2", 0)) as s:
        s.sendall(b"POST /api/ask HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{\"question\": \"")
        reply = b""
        while chunk := s.recv(65536):  # the server closes the connection after its answer
            reply += chunk
        reply = reply.decode("utf-8", "replace")
    assert reply.startswith("HTTP/1.1 413") and "request_too_large" in reply
    with guarded_server.client("127.0.2.1") as http:
        chunked = http.post("/api/ask", content=(b"x" * 8192 for _ in range(20)),  # no Content-Length
                            headers={"content-type": "application/json"})
        assert _error(chunked, 413)["type"] == "request_too_large"
        assert http.post("/api/ask", json={"question": Q}).status_code == 200


def test_a_flood_gets_429_and_others_are_still_answered(guarded_server):
    with guarded_server.client("127.0.3.1") as flood:
        codes = [flood.get("/v1/models").status_code for _ in range(8)]
        limited = flood.get("/v1/models")
    assert codes == [200] * 8
    err = _error(limited, 429)
    assert err["type"] == "rate_limit_error" and int(limited.headers["retry-after"]) >= 1
    with guarded_server.client("127.0.3.2") as other:
        assert "128位" in other.post("/api/ask", json={"question": Q}).json()["answer"]
    log = guarded_server.log.read_text()
    assert "Traceback" not in log and "GET /v1/models -> 429 rate_limit_error" in log
