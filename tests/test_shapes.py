"""Shapes world: determinism, disjoint splits, held-out pairs, answers true to the pixels, both formats."""

from __future__ import annotations

import colorsys
import hashlib
import json
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llavakit.cli import app
from llavakit.data import read_dataset, validate
from llavakit.data.shapes import COLORS, FAMILIES, HELD_OUT, SHAPES, ShapesConfig, generate_shapes
from llavakit.data.shapes.questions import describe, size_word
from llavakit.eval.accuracy import caption_pairs
from llavakit.data.shapes.scene import render, sample_scene

CFG = ShapesConfig(train=60, val=10, test=70, seed=3, image_size=96)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "set"
    generate_shapes(out, CFG)
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(shapes_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_shapes(again, CFG, workers=2)
    assert _digest(again) == _digest(shapes_dir)
    other = tmp_path / "other"
    generate_shapes(other, ShapesConfig(train=5, val=0, test=0, seed=4, image_size=96))
    assert json.loads((other / "train.json").read_text())[0] != json.loads((shapes_dir / "train.json").read_text())[0]


def test_splits_are_disjoint_by_scene_and_test_holds_unseen_pairs(shapes_dir: Path) -> None:
    images: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for rec in json.loads((shapes_dir / f"{split}.json").read_text()):
            digest = hashlib.sha1((shapes_dir / rec["image"]).read_bytes()).hexdigest()
            assert digest not in images, f"{rec['id']} has the same picture as {images.get(digest)}"
            images[digest] = rec["id"]
            pairs = {(o["color"], o["shape"]) for o in rec["scene"]["objects"]}
            if split != "test":
                assert not pairs & set(HELD_OUT), rec["id"]
                text = " ".join(t["value"].lower() for t in rec["conversations"])
                for color, shape in HELD_OUT:  # not even named in a question or answer
                    assert not re.search(rf"\b{color} {shape}", text), (rec["id"], text)
            assert rec["heldout"] == bool(pairs & set(HELD_OUT))
    test = json.loads((shapes_dir / "test.json").read_text())
    assert sum(r["heldout"] for r in test) >= len(test) // 3
    assert all(len(r["conversations"]) == 2 for r in test), "test samples are single questions"
    assert {r["family"] for r in test} == set(FAMILIES)


def test_answers_follow_from_the_scene(shapes_dir: Path) -> None:
    records = [r for s in ("train", "test") for r in json.loads((shapes_dir / f"{s}.json").read_text())]
    exists = []
    for rec in records:
        objs = rec["scene"]["objects"]
        for (q, a), fam, kind in zip(_turns(rec), rec["families"], rec["kinds"]):
            ql = q.lower()
            if fam == "color":
                assert a in COLORS and a in {o["color"] for o in objs}
            elif fam == "shape":
                assert a in SHAPES and a in {o["shape"] for o in objs}
            elif fam == "count":
                assert a.isdigit()
                if re.search(r"how many (shapes|objects|figures|things|items) ", ql):
                    assert int(a) == len(objs)
            elif fam == "exists":
                assert a in ("yes", "no")
                exists.append(a)
                for color in COLORS:
                    for shape in SHAPES:
                        if re.search(rf"\b{color} {shape}", ql):
                            assert (a == "yes") == any(o["color"] == color and o["shape"] == shape for o in objs)
            elif fam == "read":
                assert a == rec["scene"]["word"]
            elif fam == "caption":
                for o in objs:
                    assert f"{o['color']} {o['shape']}" in a
            assert kind in ("color", "shape", "number", "word", "yesno", "caption")
    assert 0.3 < exists.count("no") / len(exists) < 0.7, "the hallucination probe is about half 'no'"


def _turns(rec: dict) -> list[tuple[str, str]]:
    conv = [t for t in rec["conversations"] if t["from"] != "system"]
    return [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv), 2)]


def test_colour_names_match_the_pixels() -> None:
    """The centre pixel of every filled shape has the hue its colour name says (also rendered aliased)."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    bands = {"red": (-15, 12), "orange": (15, 42), "yellow": (45, 65), "green": (80, 160), "blue": (190, 245),
             "purple": (260, 305)}
    checked = 0
    for i in range(120):
        scene = sample_scene(random.Random(i), 128, allowed_pairs=pairs)
        img = render(scene)
        for o in scene.objects:
            if o.style == "hollow":
                continue
            r, g, b = img.getpixel((int(o.cx), int(o.cy)))
            h, s, _v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
            hue = h * 360 if h * 360 < 330 else h * 360 - 360
            lo, hi = bands[o.color]
            assert s > 0.45 and lo <= hue <= hi, (i, o, (r, g, b))
            checked += 1
    assert checked > 200


def test_caption_names_every_object_once() -> None:
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    scene = sample_scene(random.Random(7), 128, allowed_pairs=pairs, n_objects=3, with_word=True)
    text = describe(scene, random.Random(0))
    for o in scene.objects:
        assert text.count(f"{o.color} {o.shape}") == 1
    assert f'"{scene.word}"' in text


def test_sized_captions_always_say_a_and_keep_every_pair() -> None:
    """--caption-sizes: "a small/large <colour> <shape>" for every object, so "an" never appears, and the
    caption score (colour-shape pairs) reads the same objects as from a plain caption."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    for seed in range(40):
        scene = sample_scene(random.Random(seed), 160, allowed_pairs=pairs, n_objects=1 + seed % 6)
        text = describe(scene, random.Random(seed), sizes=True)
        assert " an " not in f" {text.lower()} "
        assert caption_pairs(text) == {(o.color, o.shape) for o in scene.objects}
        for o in scene.objects:
            assert f"{size_word(o, 160)} {o.color} {o.shape}" in text
    big = sample_scene(random.Random(1), 160, allowed_pairs=pairs, n_objects=1)
    small = sample_scene(random.Random(1), 160, allowed_pairs=pairs, n_objects=6)
    assert size_word(big.objects[0], 160) == "large"  # one object: radius >= 0.12 of the side
    assert {size_word(o, 160) for o in small.objects} == {"small"}  # six: radius <= 0.11


def test_both_formats_read_back_the_same(shapes_dir: Path) -> None:
    for split in ("train", "test"):
        llava = validate(read_dataset(shapes_dir / f"{split}.json"), deep=True)
        hf = validate(read_dataset(shapes_dir / f"{split}.jsonl"))
        assert [s.id for s in llava] == [s.id for s in hf]
        for a, b in zip(llava, hf):
            assert a.messages == b.messages and a.images == b.images
            assert a.meta["family"] == b.meta["family"] and a.meta["answer"] == b.meta["answer"]


def test_cli_writes_a_set_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["data", "shapes", "--out", str(tmp_path / "s"), "--train", "4", "--val", "2", "--test", "3",
            "--seed", "1", "--image-size", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert summary["splits"]["test"]["samples"] == 3 and summary["config"]["image_size"] == 64
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 9
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    bad = runner.invoke(app, args[:-1] + ["8", "--force"])
    assert bad.exit_code == 2 and "image-size" in bad.output
    bad = runner.invoke(app, args + ["--force", "--families", "caption,colour"])
    assert bad.exit_code == 2 and "colour" in bad.output and "color" in bad.output
    align = runner.invoke(app, args + ["--force", "--families", "caption", "--multi-turn", "0"])
    assert align.exit_code == 0, align.output
    records = json.loads((tmp_path / "s" / "train.json").read_text())
    assert {f for r in records for f in r["families"]} == {"caption"}


def test_some_train_samples_have_a_system_prompt(shapes_dir: Path) -> None:
    records = json.loads((shapes_dir / "train.json").read_text())
    with_system = [r for r in records if r["conversations"][0]["from"] == "system"]
    assert 0 < len(with_system) < len(records) // 3
    (sample,) = [s for s in read_dataset(shapes_dir / "train.jsonl") if s.id == with_system[0]["id"]]
    assert sample.messages[0] == {"role": "system", "content": [{"type": "text",
                                                                  "text": with_system[0]["conversations"][0]["value"]}]}


def test_family_weights_shift_the_train_mix_and_bad_ones_are_refused(tmp_path: Path) -> None:
    from collections import Counter

    from llavakit.data.shapes import ShapesConfig, generate_shapes
    from llavakit.errors import LlavakitError

    base = ShapesConfig(train=300, val=0, test=0, image_size=32, multi_turn=0.0, seed=3)
    heavy = ShapesConfig(**{**base.__dict__, "family_weights": (("spatial", 6.0),)})
    counts = {}
    for name, cfg in (("base", base), ("heavy", heavy)):
        generate_shapes(tmp_path / name, cfg)
        counts[name] = Counter(r["family"] for r in json.loads((tmp_path / name / "train.json").read_text()))
    assert counts["heavy"]["spatial"] > 2 * counts["base"]["spatial"]  # 6 vs 1.4 of 8.0 vs 12.6 in all
    for weights, word in (((("colour", 2.0),), "colour"), ((("spatial", 0.0),), "> 0")):
        try:
            generate_shapes(tmp_path / "bad", ShapesConfig(train=2, val=0, test=0, family_weights=weights), force=True)
        except LlavakitError as err:
            assert word in str(err)
        else:
            raise AssertionError("a bad family weight was accepted")
    runner = CliRunner()
    bad = runner.invoke(app, ["data", "shapes", "--out", str(tmp_path / "c"), "--train", "2", "--val", "0",
                              "--test", "0", "--family-weight", "spatial:2"])
    assert bad.exit_code == 2 and "FAMILY=NUMBER" in bad.output
    ok = runner.invoke(app, ["data", "shapes", "--out", str(tmp_path / "c"), "--train", "2", "--val", "0",
                             "--test", "0", "--image-size", "32", "--family-weight", "spatial=2.4", "--force"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "c" / "dataset.json").read_text())["config"]["family_weights"] == [["spatial", 2.4]]


def test_fonts_and_made_up_words_widen_train_reading_and_leave_test_alone(shapes_dir: Path, tmp_path: Path) -> None:
    """--fonts / --random-words: made-up words and other fonts in train; the test split is byte-identical."""
    from PIL import ImageFont

    from llavakit.data.shapes.scene import WORDS

    fonts = tmp_path / "fonts"
    fonts.mkdir()
    builtin = ImageFont.load_default(size=12).path  # Pillow's embedded TrueType data, as a real font file
    builtin.seek(0)
    (fonts / "a.ttf").write_bytes(builtin.read())
    runner = CliRunner()
    out = tmp_path / "wide"
    args = ["data", "shapes", "--out", str(out), "--train", "60", "--val", "10", "--test", "70", "--seed", "3",
            "--image-size", "96", "--fonts", str(fonts), "--random-words", "0.8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    read = [r for r in json.loads((out / "train.json").read_text()) if r["family"] == "read"]
    made_up = [r["answer"] for r in read if r["answer"] not in WORDS]
    assert made_up and all(re.fullmatch(r"[a-z]{3,7}", w) for w in made_up)
    assert _digest(out / "images") != _digest(shapes_dir / "images")
    test_images = lambda d: {k: v for k, v in _digest(d / "images").items() if k.startswith("test-")}  # noqa: E731
    assert test_images(out) == test_images(shapes_dir)  # the standard test split, whatever the options
    assert (out / "test.json").read_bytes() == (shapes_dir / "test.json").read_bytes()
    assert json.loads((out / "dataset.json").read_text())["config"]["fonts"] == [str((fonts / "a.ttf").resolve())]
    (fonts / "bad.ttf").write_text("not a font")
    bad = runner.invoke(app, args + ["--force"])
    assert bad.exit_code == 2 and "bad.ttf" in bad.output and "cannot be loaded" in bad.output
    bad = runner.invoke(app, args[:-2] + ["--random-words", "1.5", "--force"])
    assert bad.exit_code == 2 and "random-words" in bad.output
