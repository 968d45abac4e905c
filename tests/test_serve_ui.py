"""The web chatbot in a real headless browser (Debian's chromium driven by playwright).

The page is served by the same process as the API: open /ui, attach an image, ask,
watch the answer stream in with its stats, then stop a long answer and check the
server freed the slot. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from test_serve_support import Server, png_bytes, set_number

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)")


@pytest.fixture(scope="module")
def server(tiny_export: Path):
    srv = Server(tiny_export, "--served-model-name", "tiny", "--ui", "--slots", "1", "--max-tokens-limit", "2000")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server: Server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(server.url + "/ui/")
        yield page
        browser.close()


def bot_messages(page) -> list[str]:  # noqa: ANN001
    return page.locator("#chat .message-row.bot-row").all_inner_texts()


def test_ask_about_an_uploaded_image(page, server: Server, tmp_path: Path) -> None:  # noqa: ANN001
    image = tmp_path / "red.png"
    image.write_bytes(png_bytes())
    page.locator("#message input[type=file]").set_input_files(str(image))
    page.locator("#message textarea").fill("What colour is this?")
    page.wait_for_timeout(300)  # the upload lands in the box
    page.locator("#message textarea").press("Enter")
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while "tokens/s" not in page.locator("#stats").inner_text() and time.monotonic() < deadline:
        seen.update(bot_messages(page))
        page.wait_for_timeout(20)
    stats = page.locator("#stats").inner_text()
    assert "first token" in stats and "tokens/s" in stats, stats
    answer = bot_messages(page)[-1].strip()
    assert answer, "no answer shown"
    assert page.locator("#chat img").count() >= 1  # the uploaded image is in the conversation
    assert server.health()["completed"] >= 1
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
    assert (tmp_path / "chat.png").stat().st_size > 10_000


def test_second_turn_and_stop_frees_the_slot(page, server: Server, tmp_path: Path) -> None:  # noqa: ANN001
    page.get_by_text("Generation settings").click()
    # greedy, no repetition penalty: this tiny random LM then loops for all 2000 tokens
    for label, value in (("max new tokens", "2000"), ("repetition penalty", "1")):
        set_number(page, label, value)
    before = server.health()["cancelled"]
    page.locator("#message textarea").fill("Now tell me everything about it.")
    page.locator("#message textarea").press("Enter")
    deadline = time.monotonic() + 20
    while server.health()["busy"] == 0 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    page.locator("#stop").click()  # at once: on a fast CPU all 2000 tokens can be out before a later click
    deadline = time.monotonic() + 10
    while server.health()["busy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    health = server.health()
    assert health["busy"] == 0 and health["cancelled"] == before + 1, health
    assert len(bot_messages(page)) == 2  # the first answer and the stopped one
    page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)
    # the API on the same process still answers
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200

