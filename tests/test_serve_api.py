"""The OpenAI-compatible API, end to end: a real server process, the official ``openai`` client.

Covers plain and streamed completions (with an image data URL), usage counts, stop
strings, seeds, remote images behind the allow-list, the API key, every error status
with OpenAI's error shape, a client disconnecting mid-stream (its slot is freed), a
timeout — and that the server keeps serving after each of them.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import openai
import pytest

from test_serve_support import Server, data_url, png_bytes

KEY = "sekret-key"
MODEL = "tiny"
RED = data_url(png_bytes())


@pytest.fixture(scope="module")
def server(tiny_export: Path):
    srv = Server(tiny_export, "--served-model-name", MODEL, "--api-key", KEY, "--slots", "2", "--max-queue", "2",
                 "--timeout", "1.5", "--max-images", "2", "--max-image-mb", "0.05", "--max-image-pixels", "1000000",
                 "--max-request-mb", "1", "--max-tokens-limit", "2000", "--allow-remote-images",
                 "--allow-host", "127.0.0.1")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def ask(text: str = "What is this?", *images: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def post(server: Server, body: dict | bytes, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, dict):
        return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    return httpx.post(server.url + "/v1/chat/completions", content=body, headers=headers, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str | None = None, says: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    assert says.lower() in error["message"].lower(), error


def test_models_lists_the_base_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "llavakit"


def test_completion_with_image_and_stream_agree(client: openai.OpenAI) -> None:
    args = dict(model=MODEL, messages=ask("Describe the picture.", RED), max_tokens=12, temperature=0,
                extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(**args)
    assert plain.choices[0].finish_reason == "length" and plain.choices[0].message.role == "assistant"
    assert plain.usage.completion_tokens == 12
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + 12
    text_only = client.chat.completions.create(**{**args, "messages": ask("Describe the picture.")})
    assert plain.usage.prompt_tokens > text_only.usage.prompt_tokens  # image features take positions
    # a question with the picture after it (the usual order in OpenAI's examples) is the same prompt: picture first
    text_first = [{"role": "user", "content": ask("Describe the picture.", RED)[0]["content"][::-1]}]
    assert text_first[0]["content"][0]["type"] == "text"
    again = client.chat.completions.create(**{**args, "messages": text_first})
    assert again.choices[0].message.content == plain.choices[0].message.content
    assert again.usage.prompt_tokens == plain.usage.prompt_tokens

    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content  # greedy: same text, streamed or not
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_sse_wire_format(server: Server) -> None:
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "messages": ask(), "max_tokens": 5, "stream": True}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_stop_string_seed_and_multi_turn(client: openai.OpenAI) -> None:
    base = dict(model=MODEL, messages=ask("Tell me a story."), max_tokens=40, temperature=0,
                extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**base).choices[0].message.content
    stop = full[10:13]
    cut = client.chat.completions.create(**base, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[: full.find(stop)]

    sampled = dict(base, temperature=0.9, top_p=0.9, seed=7)
    first = client.chat.completions.create(**sampled).choices[0].message.content
    assert client.chat.completions.create(**sampled).choices[0].message.content == first

    history = ask("Look at this.", RED) + [{"role": "assistant", "content": full},
                                           {"role": "user", "content": "And now?"}]
    turn2 = client.chat.completions.create(model=MODEL, messages=history, max_tokens=5, temperature=0)
    assert turn2.usage.prompt_tokens > client.chat.completions.create(**base).usage.prompt_tokens


def test_remote_images_only_from_allowed_hosts(client: openai.OpenAI, tmp_path: Path) -> None:
    (tmp_path / "red.png").write_bytes(png_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        args = dict(model=MODEL, max_tokens=4, temperature=0)
        remote = client.chat.completions.create(messages=ask("What?", f"http://127.0.0.1:{port}/red.png"), **args)
        local = client.chat.completions.create(messages=ask("What?", RED), **args)
        assert remote.choices[0].message.content == local.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="allow-list"):
            client.chat.completions.create(messages=ask("What?", f"http://localhost:{port}/red.png"), **args)
        with pytest.raises(openai.BadRequestError, match="HTTP 404"):
            client.chat.completions.create(messages=ask("What?", f"http://127.0.0.1:{port}/missing.png"), **args)
    finally:
        httpd.shutdown()


def test_api_key(server: Server) -> None:
    body = {"model": MODEL, "messages": ask(), "max_tokens": 2}
    assert_error(post(server, body, key=None), 401, "invalid_api_key", "no api key")
    assert_error(post(server, body, key="wrong"), 401, "invalid_api_key", "incorrect")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200  # health needs no key
    assert post(server, body).status_code == 200


@pytest.mark.parametrize("case, status, code, says", [
    ("unknown_model", 404, "model_not_found", "not served"),
    ("corrupt_image", 400, "invalid_image", "cannot identify"),
    ("not_base64", 400, "invalid_image", "base64"),
    ("local_path", 400, "invalid_image", "never read"),
    ("file_url", 400, "invalid_image", "never read"),
    ("too_many_images", 400, "invalid_prompt", "too many images"),
    ("tag_mismatch", 400, "invalid_prompt", "tag"),
    ("context_overflow", 400, "context_length_exceeded", "context"),
    ("image_too_many_bytes", 413, "image_too_large", "bytes"),
    ("image_too_many_pixels", 413, "image_too_large", "pixels"),
    ("body_too_large", 413, "request_too_large", "limit"),
    ("bad_temperature", 400, None, "temperature"),
    ("no_messages", 400, None, "messages"),
    ("max_tokens_over_limit", 400, None, "limit of 2000"),
    ("unsupported_n", 400, None, "n (only 1)"),
    ("tool_role", 400, None, "role"),
    ("not_json", 400, None, "invalid request"),
])
def test_errors_have_status_and_shape_and_server_keeps_serving(server: Server, case: str, status: int,
                                                               code: str | None, says: str) -> None:
    body: dict | bytes = {"model": MODEL, "messages": ask(), "max_tokens": 3}
    if case == "unknown_model":
        body["model"] = "gpt-4"
    elif case == "corrupt_image":
        body["messages"] = ask("x", data_url(b"this is not a png at all"))
    elif case == "not_base64":
        body["messages"] = ask("x", "data:image/png;base64,@@@@")
    elif case == "local_path":
        body["messages"] = ask("x", "/etc/passwd")
    elif case == "file_url":
        body["messages"] = ask("x", "file:///etc/passwd")
    elif case == "too_many_images":
        body["messages"] = ask("x", RED, RED, RED)
    elif case == "tag_mismatch":
        body["messages"] = ask("<image> and <image>?", RED)
    elif case == "context_overflow":
        body["messages"] = ask("hello " * 3000)
    elif case == "image_too_many_bytes":
        body["messages"] = ask("x", data_url(png_bytes((200, 200), noise=True)))
    elif case == "image_too_many_pixels":
        body["messages"] = ask("x", data_url(png_bytes((2000, 1000))))
    elif case == "body_too_large":
        body["messages"] = ask("a" * (1024 * 1024 + 10))
    elif case == "bad_temperature":
        body["temperature"] = 5
    elif case == "no_messages":
        body["messages"] = []
    elif case == "max_tokens_over_limit":
        body["max_tokens"] = 2001
    elif case == "unsupported_n":
        body["n"] = 2
    elif case == "tool_role":
        body["messages"] = [{"role": "tool", "content": "x"}]
    elif case == "not_json":
        body = b"{not json"
    assert_error(post(server, body), status, code, says)
    assert post(server, {"model": MODEL, "messages": ask("still there?", RED), "max_tokens": 2}).status_code == 200


def test_unknown_route_is_404_in_error_shape(server: Server) -> None:
    assert_error(httpx.get(server.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}), 404)


def test_disconnect_mid_stream_frees_the_slot(server: Server) -> None:
    before = server.health()["cancelled"]
    body = {"model": MODEL, "messages": ask("Go on forever."), "max_tokens": 2000, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert all(line.startswith("data: ") or not line for line in got)
        assert server.health()["busy"] == 1
    closed = time.monotonic()
    while server.health()["busy"] and time.monotonic() - closed < 1.2:
        time.sleep(0.05)
    health = server.health()
    assert health["busy"] == 0 and health["cancelled"] == before + 1, health  # cancelled, not timed out
    assert post(server, {"model": MODEL, "messages": ask(), "max_tokens": 2}).status_code == 200


def test_timeout_is_504(server: Server) -> None:
    body = {"model": MODEL, "messages": ask("Go on forever."), "max_tokens": 2000, "ignore_eos": True}
    started = time.monotonic()
    assert_error(post(server, body), 504, "timeout", "timeout")
    assert time.monotonic() - started < 10
    assert post(server, {"model": MODEL, "messages": ask(), "max_tokens": 2}).status_code == 200


def test_attached_pictures_go_first_and_interleaved_ones_stay() -> None:
    from llavakit.serve.engine import conversation
    from llavakit.serve.schemas import Message
    from llavakit.serve.settings import ServeSettings

    def kinds(*parts: dict) -> list[str]:
        messages, refs = conversation([Message(role="user", content=list(parts))], ServeSettings())
        return [p["type"] for p in messages[0]["content"]]

    text, image = {"type": "text", "text": "Compare"}, {"type": "image_url", "image_url": {"url": RED}}
    assert kinds(text, image) == ["image", "text"]  # a question with a picture attached
    assert kinds(image, image, text) == ["image", "image", "text"]
    assert kinds(text, image, {"type": "text", "text": "with"}, image) == ["text", "image", "text", "image"]
