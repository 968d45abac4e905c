"""Helpers for the serve tests (no tests here): run ``llavakit serve`` as a real subprocess.

The server runs exactly as a user starts it (the CLI, uvicorn, a TCP port on loopback),
so the tests see real HTTP, real SSE and real process memory.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30), noise: bool = False) -> bytes:
    if noise:
        image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, color)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


class Server:
    """``llavakit serve MODEL ARGS`` on a free loopback port; ``url`` once /health answers."""

    def __init__(self, model: Path, *args: str, startup_s: float = 90.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llavakit-serve-{self.port}.log", "w+")
        cmd = [sys.executable, "-c", "from llavakit.cli import main; main()", "serve", str(model), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not start in {startup_s} s:\n{self.output()}")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def set_number(page, label: str, value: str) -> None:  # noqa: ANN001 (a playwright Page)
    """Type ``value`` into the Gradio number box ``label``, again if the accordion reset it while mounting."""
    box = page.locator(f"input[aria-label='number input for {label}']")
    for _attempt in range(5):
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(300)
        if box.input_value() == value:
            return
    assert box.input_value() == value, label
