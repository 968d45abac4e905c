"""Scoring rules, oracle predictions through the same scoring path, and `llavakit eval` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llavakit.cli import app
from llavakit.data.shapes import FAMILIES, ShapesConfig, generate_shapes
from llavakit.eval.accuracy import caption_pairs, infer_kind, load_items, normalize, score, score_items

SCENE = {"objects": [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}]}


@pytest.mark.parametrize("prediction, answer, kind, ok", [
    ("Yes.", "yes", "yesno", True), ("yes, there is a red circle", "yes", "yesno", True),
    ("Yeah", "yes", "yesno", True), ("No, there isn't.", "no", "yesno", True), ("Nope", "no", "yesno", True),
    ("No", "yes", "yesno", False), ("Maybe yes", "yes", "yesno", False), ("", "yes", "yesno", False),
    ("There is no green star.", "no", "yesno", True), ("I can't see one.", "no", "yesno", True),
    ("There is a red circle.", "yes", "yesno", True), ("There is a red circle.", "no", "yesno", False),
    ("The circle is red.", "yes", "yesno", False),
    ("Red.", "red", "color", True), ("It is RED", "red", "color", True), ("The colour is red.", "red", "color", True),
    ("red or orange", "red", "color", False), ("orange", "red", "color", False), ("violet", "purple", "color", True),
    ("A triangle.", "triangle", "shape", True), ("It's a circle", "circle", "shape", True),
    ("triangles", "triangle", "shape", True), ("a circle and a square", "circle", "shape", False),
    ("3", "3", "number", True), ("Three.", "3", "number", True), ("There are 3 shapes.", "3", "number", True),
    ("three or four", "3", "number", False), ("4", "3", "number", False), ("None.", "0", "number", True),
    ("zero", "0", "number", True), ("No red shapes.", "0", "number", True), ("none", "1", "number", False),
    ("Left.", "left", "word", True), ("It is to the left of the blue square.", "left", "word", True),
    ("left or right", "left", "word", False), ("below", "above", "word", False),
    ('The word is "CAT".', "cat", "word", True), ("cat", "cat", "word", True), ("It says Cat", "cat", "word", True),
    ("cats", "cat", "word", False), ("dog", "cat", "word", False), ("cat dog", "cat", "word", False),
    ("A red circle and a blue square.", "-", "caption", True),
    ("The image shows a blue square on the right and a red filled circle.", "-", "caption", True),
    ("A red circle.", "-", "caption", False), ("A red circle, a blue square and a green star.", "-", "caption", False),
    ("A blue circle and a red square.", "-", "caption", False),
])
def test_scoring_rules(prediction: str, answer: str, kind: str, ok: bool) -> None:
    assert score(prediction, answer, kind, SCENE) is ok


def test_normalisation_and_kinds() -> None:
    assert normalize("The Colour is  'Grey', an ORANGE one!") == ["color", "is", "gray", "orange", "1"]
    assert [infer_kind(a) for a in ("Yes", "7", "red", "circle", "left", "a red circle")] == \
        ["yesno", "number", "color", "shape", "word", "text"]
    assert infer_kind("A red circle.", "caption") == "caption"
    assert caption_pairs("a red, shiny circle and two blue squares; a green") == {("red", "circle"),
                                                                                   ("blue", "square")}
    # without a scene the reference caption says which objects there are
    assert score("A blue square and a red circle.", "A red circle and a blue square.", "caption")


def _paraphrase(item, rng: random.Random) -> str:
    """A correct answer in other words: what a sensible model might say."""
    a = item.answer
    if item.kind == "yesno":
        return rng.choice((f"{a.capitalize()}.", f"{a}, definitely" if a == "yes" else "No, there isn't."))
    if item.kind == "color":
        return rng.choice((f"It is {a}.", f"{a.upper()}", f"The colour is {a}."))
    if item.kind == "shape":
        return rng.choice((f"A {a}.", f"It's a {a}.", f"{a}s"))
    if item.kind == "number":
        words = ["zero", "one", "two", "three", "four", "five", "six"]
        return rng.choice((f"There are {a}.", words[int(a)].capitalize() + "."))
    if item.kind == "word":
        return rng.choice((f'The word is "{a.upper()}".', f"{a.capitalize()}.")) if item.family == "read" \
            else f"It is on the {a}."
    objs = sorted(item.scene["objects"], key=lambda o: -o["cx"])  # another order and wording
    return "I can see " + ", ".join(f"one {o['color']} {o['shape']}" for o in objs) + "."


def _wrong(item) -> str:
    a = item.answer
    if item.kind == "yesno":
        return "no" if a == "yes" else "yes"
    if item.kind == "number":
        return str(int(a) + 1)
    if item.kind == "caption":
        o = item.scene["objects"][0]
        return f"A {o['color']} {o['shape']} and a {'red' if o['color'] != 'red' else 'blue'} heart."
    return {"color": "pink", "shape": "oval", "word": "nothing"}[item.kind]


def test_oracle_scores_100_and_wrong_answers_0(tmp_path: Path) -> None:
    generate_shapes(tmp_path / "s", ShapesConfig(train=0, val=0, test=150, seed=5, image_size=64))
    for name in ("test.json", "test.jsonl"):
        items = load_items(tmp_path / "s" / name)
        assert len(items) == 150 and {i.family for i in items} == set(FAMILIES)
        exact = score_items(items, lambda item: item.answer, "oracle")
        rng = random.Random(0)
        said = score_items(items, lambda item, rng=rng: _paraphrase(item, rng), "paraphrase")
        wrong = score_items(items, _wrong, "wrong")
        for key in list(FAMILIES) + ["held-out pairs", "overall"]:
            assert exact.accuracy(key) == 100.0, (name, key)
            assert said.accuracy(key) == 100.0, (key, [p for p in said.predictions if not p["correct"]][:3])
            assert wrong.accuracy(key) == 0.0, (key, [p for p in wrong.predictions if p["correct"]][:3])


def test_multi_turn_samples_give_one_item_per_answer(tmp_path: Path) -> None:
    generate_shapes(tmp_path / "s", ShapesConfig(train=20, val=0, test=3, seed=1, image_size=64))
    records = json.loads((tmp_path / "s" / "train.json").read_text())
    items = load_items(tmp_path / "s" / "train.json")
    assert len(items) == sum(len(r["conversations"]) // 2 for r in records)
    multi = next(r for r in records if len(r["conversations"]) > 2)
    second = next(i for i in items if i.id == f"{multi['id']}#1")
    assert second.family == multi["families"][1] and second.answer == multi["conversations"][3]["value"]
    assert second.messages[-1]["role"] == "user" and len(second.messages) == 3  # history keeps turn 1's answer
    assert load_items(tmp_path / "s" / "train.json", limit=5)[4].id == items[4].id
    assert [i.id for i in load_items(tmp_path / "s")] == [r["id"] for r in json.loads(
        (tmp_path / "s" / "test.json").read_text())]  # a shapes folder means its test split


def test_llavakit_eval_end_to_end(tiny_llava: Path, tiny_export: Path, tmp_path: Path) -> None:
    generate_shapes(tmp_path / "s", ShapesConfig(train=0, val=0, test=12, seed=2, image_size=64))
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(tiny_llava), "--data", str(tmp_path / "s" / "test.json"),
                                 "--backend", "torch", "--limit", "8", "--max-new-tokens", "3",
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "torch-fp32" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    col = report["accuracy"]["torch-fp32"]
    assert set(col) >= {"overall"} and 0.0 <= col["overall"] <= 100.0
    assert report["counts"]["torch-fp32"]["overall"] == 8 and len(report["predictions"]["torch-fp32"]) == 8
    # the OpenVINO backend on an export, HF messages data
    result = runner.invoke(app, ["eval", str(tiny_export), "--data", str(tmp_path / "s" / "test.jsonl"),
                                 "--limit", "4", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert "fp32" in result.output and "overall" in result.output
    # two models side by side (dense vs MoE in real use): one column each
    (tmp_path / "other-ov").symlink_to(tiny_export, target_is_directory=True)
    result = runner.invoke(app, ["eval", str(tiny_export), str(tmp_path / "other-ov"), "--data",
                                 str(tmp_path / "s" / "test.json"), "--limit", "2", "--max-new-tokens", "2",
                                 "--weights", "fp32,int4", "--json", str(tmp_path / "two.json")])
    assert result.exit_code == 0, result.output
    # exports run as they were compressed (fp32 here): --weights does not multiply their columns
    assert set(json.loads((tmp_path / "two.json").read_text())["accuracy"]) == {"tiny-ov fp32", "other-ov fp32"}
    bad = runner.invoke(app, ["eval", str(tiny_llava), "--data", str(tmp_path / "s" / "test.json"),
                              "--backend", "torch", "--weights", "int4"])
    assert bad.exit_code == 2 and "fp32 only" in bad.output
    bad = runner.invoke(app, ["eval", str(tiny_llava), "--data", str(tmp_path / "s" / "test.json"),
                              "--backend", "llamacpp", "--weights", "int4"])  # llama.cpp takes GGUF types
    assert bad.exit_code == 2 and "q4_k_m" in bad.output
