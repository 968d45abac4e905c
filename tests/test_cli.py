"""The `llavakit` command as a user runs it: real processes, real stdin/stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

LLAVAKIT = str(Path(sys.executable).with_name("llavakit"))


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([LLAVAKIT, *args], input=stdin, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


@pytest.fixture()
def pictures(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    Image.new("RGB", (50, 40), "blue").save(good)
    text = tmp_path / "text.png"
    text.write_text("hello, I am not a picture")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    return {"good": good, "text": text, "empty": empty, "missing": tmp_path / "missing.png"}


def test_one_question_streams_an_answer(tiny_llava, pictures):
    done = run("chat", str(tiny_llava), "--image", str(pictures["good"]), "What is it?", "--max-new-tokens", "8")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "8 tokens" in done.stderr and "tokens/s" in done.stderr


@pytest.mark.parametrize("which,message", [("text", "cannot identify"), ("empty", "empty"), ("missing", "not found")])
def test_bad_image_is_one_line_and_exit_2(tiny_llava, pictures, which, message):
    done = run("chat", str(tiny_llava), "--image", str(pictures[which]), "What is it?")
    assert done.returncode == 2
    assert "error:" in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_tag_mismatch_and_missing_model(tiny_llava, pictures, tmp_path):
    done = run("chat", str(tiny_llava), "--image", str(pictures["good"]), "<image> <image> compare")
    assert done.returncode == 2 and "2 <image> tag(s) but 1 image(s)" in done.stderr
    done = run("chat", str(tmp_path / "nowhere"), "hi")
    assert done.returncode == 2 and "not found" in done.stderr and "Traceback" not in done.stderr


def test_interactive_chat_survives_mistakes(tiny_llava, pictures):
    script = "\n".join([
        f"/image {pictures['text']}",
        f"/image {pictures['good']}",
        "What is in the picture?",
        "And again?",
        "/reset",
        "<image> where is the image?",
        "/exit",
    ]) + "\n"
    done = run("chat", str(tiny_llava), "--max-new-tokens", "4", stdin=script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("assistant>") == 2
    assert "cannot identify" in done.stderr
    assert "1 <image> tag(s) but 0 image(s)" in done.stderr
    assert "Traceback" not in done.stderr


def test_build_command_and_its_errors(parts, tmp_path):
    out = tmp_path / "built"
    done = run("build", "--vision", str(parts("vision", "siglip")), "--lm", str(parts("lm", "qwen2")),
               "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").is_file()
    again = run("build", "--vision", str(parts("vision", "siglip")), "--lm", str(parts("lm", "qwen2")),
                "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
