"""The README's commands, run as written (hub ids swapped for tiny local checkpoints).

If the README drifts from what the code does, this fails. ``make demo`` runs for
real against the installed environment; the `llavakit` lines of every bash block
and the Python block run in a scratch directory.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    lines = [line.split("  #")[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line.startswith("llavakit ")]


def test_readme_has_the_two_setup_commands():
    first = _blocks("bash")[0]
    assert "make demo" in first and "make test" in first
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_make_demo_runs_offline(demo_cache):
    env = {**os.environ, "LLAVAKIT_CACHE": str(demo_cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["make", "-s", "demo", f"VENV={sys.prefix}"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    banner = " ".join(done.stderr.split())
    assert "'budget'" in banner and "shapes world" in banner  # says honestly what it is and what it was trained on
    answer = done.stdout.split("you:")[-1].split("\n", 1)[1].strip().lower()
    assert len(answer.split()) >= 3, done.stdout  # a real LM answers in words
    # the bundled picture: a red circle, a blue square, a green triangle; the trained tower sees them
    named = [w for w in ("circle", "square", "triangle", "red", "blue", "green") if w in answer]
    assert len(named) >= 4, done.stdout
    assert "Traceback" not in done.stderr


def test_readme_llavakit_commands_and_python(parts, tmp_path):
    commands = _commands()
    assert any(c.startswith("llavakit build") for c in commands) and any(c.startswith("llavakit chat") for c in commands)
    Image.new("RGB", (64, 48), "green").save(tmp_path / "photo.jpg")
    swaps = {
        "openai/clip-vit-base-patch32": str(parts("vision", "clip-full")),
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0": str(parts("lm", "llama")),
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        if command.startswith("llavakit serve"):  # a server that runs until stopped: tests/test_serve_*.py
            continue
        for hub_id, local in swaps.items():
            command = command.replace(hub_id, local)
        interactive = command.split()[:3] == ["llavakit", "chat", "my-llava"] and len(shlex.split(command)) == 3
        extra = []
        if command.startswith("llavakit chat") and not interactive:
            extra = ["--max-new-tokens", "4"]
        elif command.startswith("llavakit bench"):  # the harness on its tiny shape; tests/test_bench.py has more
            extra = ["--quick", "--peer", "floor", "--repeats", "1", "--work-dir", str(tmp_path / "bench")]
        elif command.startswith("llavakit data shapes"):  # the same command, fewer scenes
            for split, n in (("train", 24), ("val", 4), ("test", 8)):
                command = re.sub(rf"--{split} \d+", f"--{split} {n}", command)
        elif command.startswith("llavakit train"):
            extra = ["--max-steps", "2", "--batch-size", "2"]
        elif command.startswith("llavakit eval"):
            extra = ["--limit", "4", "--max-new-tokens", "4"]
        done = subprocess.run(shlex.split(command) + extra,
                              cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
                              input="Hello?\n/exit\n" if interactive else None)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert "Traceback" not in done.stderr
    (python_block,) = _blocks("python")
    code = python_block.replace('max_new_tokens=64', 'max_new_tokens=4')
    code = code.replace('images=["photo.jpg"])', 'images=["photo.jpg"], max_new_tokens=4)')
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
