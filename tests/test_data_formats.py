"""Readers for LLaVA JSON and HF messages, every image reference form, and validation errors by sample id."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from PIL import Image

from llavakit.data import DataError, read_dataset, validate


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 16), (200, 10, 10)).save(tmp_path / "imgs" / "red.png")
    Image.new("RGB", (16, 20), (10, 10, 200)).save(tmp_path / "blue.jpg")
    return tmp_path


def _png_bytes(folder: Path) -> bytes:
    return (folder / "imgs" / "red.png").read_bytes()


USER_PARTS = [{"type": "image"}, {"type": "text", "text": "What colour?"}]


def test_llava_json_list_and_jsonl(folder: Path) -> None:
    records = [
        {"id": "a", "image": "imgs/red.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]},
        {"id": "b", "image": str(folder / "blue.jpg"), "family": "color",
         "conversations": [{"from": "system", "value": "Be brief."},
                           {"from": "human", "value": "What colour?\n<image>"}, {"from": "gpt", "value": "blue"},
                           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]},
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    ]
    (folder / "d.json").write_text(json.dumps(records))
    (folder / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    for name in ("d.json", "d.jsonl"):
        samples = validate(read_dataset(folder / name), deep=True)
        assert [s.id for s in samples] == ["a", "b", "text-only"]
        a, b, t = samples
        assert a.messages == [{"role": "user", "content": USER_PARTS},
                              {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
        assert a.images == [str(folder / "imgs" / "red.png")]  # relative to the data file
        assert b.messages[0]["role"] == "system" and b.messages[1]["content"][-1] == {"type": "image"}
        assert b.images == [str(folder / "blue.jpg")] and b.meta["family"] == "color"
        assert t.images == [] and t.image_parts() == 0


def test_hf_messages_every_image_form(folder: Path) -> None:
    png = _png_bytes(folder)
    b64 = base64.b64encode(png).decode()
    user = {"role": "user", "content": [{"index": 0, "text": None, "type": "image"},
                                        {"index": None, "text": "What colour?", "type": "text"}]}
    answer = {"role": "assistant", "content": [{"index": None, "text": "red", "type": "text"}]}
    records = [
        {"id": "path", "messages": [user, answer], "images": ["imgs/red.png"]},
        {"id": "b64", "messages": [user, answer], "images": [b64]},
        {"id": "dataurl", "messages": [user, answer], "images": [f"data:image/png;base64,{b64}"]},
        {"id": "dict", "messages": [user, answer], "images": [{"bytes": None, "path": "imgs/red.png"}]},
        {"id": "inline", "messages": [{"role": "user", "content": [{"type": "image", "image": "blue.jpg"},
                                                                   {"type": "text", "text": "What colour?"}]},
                                      answer]},
        {"id": "string-content", "messages": [{"role": "user", "content": "<image>\nWhat colour?"},
                                              {"role": "assistant", "content": "red"}], "images": ["imgs/red.png"]},
    ]
    (folder / "m.json").write_text(json.dumps(records))
    samples = validate(read_dataset(folder / "m.json"), deep=True)
    assert [s.id for s in samples] == [r["id"] for r in records]
    for s in samples:
        assert s.messages[0]["content"] == USER_PARTS, s.id
        assert s.messages[1]["content"] == [{"type": "text", "text": "red"}]
    assert samples[1].images == [png] and samples[2].images == [png]
    assert samples[3].images == [str(folder / "imgs" / "red.png")]
    assert samples[4].images == [str(folder / "blue.jpg")]


def test_saved_datasets_directory(folder: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"id": "x", "messages": [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
        "images": [{"bytes": _png_bytes(folder), "path": None}]}])
    ds.save_to_disk(str(folder / "saved"))
    (sample,) = validate(read_dataset(folder / "saved"), deep=True)
    assert sample.images == [_png_bytes(folder)]


def test_every_problem_is_reported_with_its_sample_id(folder: Path) -> None:
    ok = {"id": "ok", "image": "imgs/red.png",
          "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
    (folder / "notimage.png").write_text("this is not a picture")
    bad = [
        {"id": "missing", "image": "imgs/nope.png", "conversations": ok["conversations"]},
        {"id": "two-tags", "image": "imgs/red.png",
         "conversations": [{"from": "human", "value": "<image><image> Q"}, {"from": "gpt", "value": "A"}]},
        {"id": "no-tag", "image": "imgs/red.png",
         "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"id": "empty-answer", "image": "imgs/red.png",
         "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "  "}]},
        {"id": "no-answer", "conversations": [{"from": "human", "value": "Q"}]},
        {"id": "bad-role", "conversations": [{"from": "robot", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"id": "starts-with-answer", "conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"},
                                                       {"from": "gpt", "value": "A"}]},
        {"id": "not-an-image", "image": "notimage.png", "conversations": ok["conversations"]},
        {"id": "no-conversation-key", "text": "hello"},
        {"id": "value-not-text", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "A"}]},
    ]
    lines = [json.dumps(r) for r in [ok] + bad] + ["{not json"]
    (folder / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    samples = read_dataset(folder / "mixed.jsonl")
    with pytest.raises(DataError) as info:
        validate(samples, max_listed=100)
    message = str(info.value)
    assert "11 of 12 samples are unusable" in message
    expected = {
        "missing": "does not exist", "two-tags": "2 <image> tag(s) but 1 image(s)",
        "no-tag": "0 <image> tag(s) but 1 image(s)", "empty-answer": "assistant turn 1 is empty",
        "no-answer": "no assistant turn", "bad-role": "unknown speaker 'robot'",
        "starts-with-answer": "does not start with a user turn", "not-an-image": "cannot be read",
        "no-conversation-key": "neither 'conversations'", "value-not-text": "value is int",
        "mixed.jsonl:12": "not valid JSON",
    }
    for sid, why in expected.items():
        line = next((ln for ln in message.splitlines() if ln.strip().startswith(sid + " ")), None)
        assert line is not None and why in line, (sid, why, message)
    with pytest.warns(UserWarning, match="skipped 11 of 12"):
        kept = validate(samples, skip_bad=True)
    assert [s.id for s in kept] == ["ok"]
    with pytest.raises(DataError, match="no usable samples"), pytest.warns(UserWarning):
        validate(samples[1:], skip_bad=True)


def test_unreadable_files_raise_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("[{\"id\": 1,")
    with pytest.raises(DataError, match="not valid JSON"):
        read_dataset(tmp_path / "broken.json")
    (tmp_path / "number.json").write_text("42")
    with pytest.raises(DataError, match="expected a list of samples"):
        read_dataset(tmp_path / "number.json")


def test_cli_check(folder: Path) -> None:
    from typer.testing import CliRunner

    from llavakit.cli import app

    good = {"id": "a", "image": "imgs/red.png",
            "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
    bad = {"id": "lost", "image": "imgs/gone.png", "conversations": good["conversations"]}
    (folder / "c.json").write_text(json.dumps([good, bad]))
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(folder / "c.json")])
    assert result.exit_code == 2 and "lost" in result.output and "does not exist" in result.output
    result = runner.invoke(app, ["data", "check", str(folder / "c.json"), "--skip-bad", "--deep"])
    assert result.exit_code == 0 and "1 usable samples of 2" in result.output and "skipped 1" in result.output
