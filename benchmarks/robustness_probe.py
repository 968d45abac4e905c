"""A shapes test set drawn and phrased by code that is not llavakit's generator: the robustness probe.

Issue 4 warns that the default models "will also be tried on scenes rendered and phrased by code that is not
yours". This script is that other code, written on purpose without importing ``llavakit.data.shapes``:

* drawn with matplotlib patches (its own anti-aliasing, line joins and named colours such as ``tab:orange``,
  ``crimson``, ``gold``), not with Pillow;
* canvases of several sizes and aspect ratios (224 x 224 up to 400 x 300, portrait too), white, grey, beige or
  dark backgrounds, some objects with black outlines, words in matplotlib's DejaVu fonts;
* question phrasings of its own ("Which colour is the star?", "Can you see a blue hexagon?", ...).

It writes ``OUT/test.json`` in the LLaVA format with the fields ``llavakit eval`` scores by (``family``,
``answer_kind``, ``answer``, ``scene.objects``), so any model can be scored on it:

    pip install -e '.[probe]'                               # matplotlib, the only extra dependency
    python benchmarks/robustness_probe.py /tmp/probe --n 600 --seed 7
    llavakit eval budget --data /tmp/probe/test.json --weights int8
    llavakit eval nano --data /tmp/probe/test.json --weights int8

Numbers and their reading: ``benchmarks/training.md`` ("Robustness probe").
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

SHAPES = ("circle", "square", "triangle", "star", "hexagon")
#: Named colours another author would reach for (matplotlib / CSS names), per colour word.
PALETTE = {
    "red": ("red", "tab:red", "crimson", "firebrick"),
    "green": ("green", "tab:green", "forestgreen", "limegreen"),
    "blue": ("blue", "tab:blue", "royalblue", "dodgerblue"),
    "yellow": ("yellow", "gold", "#f5d800"),
    "purple": ("purple", "tab:purple", "darkviolet", "mediumorchid"),
    "orange": ("orange", "tab:orange", "darkorange", "#ff8c1a"),
}
CANVASES = ((224, 224), (256, 256), (320, 240), (400, 300), (240, 320), (300, 300))
BACKGROUNDS = ("white", "#f0f0f0", "#f5f0e1", "#dcdcdc", "#2b2b2b")
WORDS = ("sun", "map", "box", "tree", "fish", "lamp", "door", "milk", "rose", "kite", "ship", "ring")


def _patch(shape: str, x: float, y: float, r: float, color: str, rng: random.Random):
    """One matplotlib patch of ``shape`` centred at (x, y) with circumradius ``r`` (pixel units)."""
    from matplotlib import patches

    edge = {"edgecolor": "black", "linewidth": rng.choice((1.0, 2.0))} if rng.random() < 0.3 else {"linewidth": 0}
    turn = rng.uniform(-0.3, 0.3)
    if shape == "circle":
        return patches.Circle((x, y), r, facecolor=color, **edge)
    if shape == "square":
        side = r * math.sqrt(2)
        return patches.Rectangle((x - side / 2, y - side / 2), side, side, angle=math.degrees(turn),
                                 rotation_point="center", facecolor=color, **edge)
    if shape in ("triangle", "hexagon"):
        return patches.RegularPolygon((x, y), 3 if shape == "triangle" else 6, radius=r, orientation=turn,
                                      facecolor=color, **edge)
    points = [(x + (r if i % 2 == 0 else r * 0.45) * math.sin(turn + i * math.pi / 5),
               y + (r if i % 2 == 0 else r * 0.45) * math.cos(turn + i * math.pi / 5)) for i in range(10)]
    return patches.Polygon(points, closed=True, facecolor=color, **edge)


def scene(rng: random.Random) -> dict:
    """Objects placed without overlap on a random canvas, each (colour, shape) pair at most once, maybe a word."""
    w, h = rng.choice(CANVASES)
    n = rng.choice((1, 2, 2, 3, 3, 4))
    objects: list[dict] = []
    pairs = set()
    word = rng.choice(WORDS) if rng.random() < 0.3 else None
    word_box = (w * 0.3, h * 0.05, w * 0.7, h * 0.2) if word else None  # reserved strip near the top
    for _ in range(200):
        if len(objects) == n:
            break
        color, shape = rng.choice(list(PALETTE)), rng.choice(SHAPES)
        r = rng.uniform(0.07, 0.14) * min(w, h)
        x, y = rng.uniform(r + 4, w - r - 4), rng.uniform(r + 4, h - r - 4)
        if (color, shape) in pairs or any(math.hypot(x - o["cx"], y - o["cy"]) < r + o["radius"] + 8 for o in objects):
            continue
        if word_box and word_box[0] - r < x < word_box[2] + r and y - r < word_box[3]:
            continue
        pairs.add((color, shape))
        objects.append({"shape": shape, "color": color, "cx": round(x, 1), "cy": round(y, 1), "radius": round(r, 1),
                        "paint": rng.choice(PALETTE[color])})
    return {"width": w, "height": h, "background": rng.choice(BACKGROUNDS), "objects": objects, "word": word}


def render(spec: dict, path: Path, rng: random.Random) -> None:
    """Draw ``spec`` with matplotlib (y grows downward, as in the image) and save a PNG of exactly W x H."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    w, h = spec["width"], spec["height"]
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_facecolor(spec["background"])
    ax.axis("off")
    fig.patch.set_facecolor(spec["background"])
    for obj in spec["objects"]:
        ax.add_patch(_patch(obj["shape"], obj["cx"], obj["cy"], obj["radius"], obj["paint"], rng))
    if spec["word"]:
        ink = "white" if spec["background"] == "#2b2b2b" else "black"
        text = rng.choice((spec["word"], spec["word"].upper(), spec["word"].capitalize()))
        ax.text(w / 2, h * 0.12, text, ha="center", va="center", fontsize=rng.uniform(14, 22), color=ink,
                family=rng.choice(("DejaVu Sans", "DejaVu Serif")), weight=rng.choice(("normal", "bold")))
    fig.savefig(path, dpi=100, facecolor=spec["background"])
    plt.close(fig)


def _sample(spec: dict, family: str, question: str, answer: str, kind: str) -> dict:
    return {"family": family, "question": question, "answer": answer, "answer_kind": kind}


def questions(spec: dict, rng: random.Random) -> list[dict]:
    """Every question this scene can answer unambiguously, phrased in this probe's own words."""
    objs = spec["objects"]
    out = []
    shapes = [o["shape"] for o in objs]
    colors = [o["color"] for o in objs]
    for o in objs:
        if shapes.count(o["shape"]) == 1:
            q = rng.choice(("Which colour is the {s}?", "What is the color of the {s} in this picture?",
                            "Tell me the colour of the {s}. One word, please."))
            out.append(_sample(spec, "color", q.format(s=o["shape"]), o["color"], "color"))
        if colors.count(o["color"]) == 1:
            q = rng.choice(("Which shape is {c}?", "What kind of shape is the {c} object?",
                            "Name the shape that is {c}."))
            out.append(_sample(spec, "shape", q.format(c=o["color"]), o["shape"], "shape"))
    q = rng.choice(("How many shapes can you see?", "How many objects are in the image?",
                    "Count the objects in this picture."))
    out.append(_sample(spec, "count", q, str(len(objs)), "number"))
    present = rng.choice(objs)
    absent = (rng.choice(list(PALETTE)), rng.choice(SHAPES))
    if absent not in {(o["color"], o["shape"]) for o in objs}:
        c, s = absent if rng.random() < 0.5 else (present["color"], present["shape"])
        q = rng.choice(("Is there a {c} {s} in the image?", "Can you see a {c} {s}?", "Does the picture contain a {c} {s}?"))
        answer = "yes" if (c, s) == (present["color"], present["shape"]) else "no"
        out.append(_sample(spec, "exists", q.format(c=c, s=s), answer, "yesno"))
    if len(objs) >= 2:
        a, b = rng.sample(objs, 2)
        if abs(a["cx"] - b["cx"]) > a["radius"] + b["radius"]:
            q = "Is the {ca} {sa} to the left or to the right of the {cb} {sb}?"
            side = "left" if a["cx"] < b["cx"] else "right"
            out.append(_sample(spec, "spatial", q.format(ca=a["color"], sa=a["shape"], cb=b["color"], sb=b["shape"]),
                               side, "word"))
    if spec["word"]:
        q = rng.choice(("What word is written in the image?", "Read the text in the picture.", "What does the text say?"))
        out.append(_sample(spec, "read", q, spec["word"], "word"))
    q = rng.choice(("Describe this image in one sentence.", "What does the picture show?", "Give a short caption."))
    names = [f"{'an' if o['color'] == 'orange' else 'a'} {o['color']} {o['shape']}" for o in objs]
    caption = (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]).capitalize() + "."
    out.append(_sample(spec, "caption", q, caption, "caption"))
    return out


def build(out: Path, n: int, seed: int) -> list[dict]:
    """Render scenes until ``n`` questions exist (one question per scene, families taken in turn)."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    families = ("color", "shape", "count", "exists", "spatial", "read", "caption")
    samples: list[dict] = []
    while len(samples) < n:
        spec = scene(rng)
        want = families[len(samples) % len(families)]
        pick = [q for q in questions(spec, rng) if q["family"] == want]
        if not pick:
            continue
        item = pick[0]
        name = f"probe-{len(samples):05d}"
        render(spec, out / "images" / f"{name}.png", rng)
        objects = [{k: o[k] for k in ("shape", "color", "cx", "cy", "radius")} for o in spec["objects"]]
        samples.append({
            "id": name, "image": f"images/{name}.png",
            "conversations": [{"from": "human", "value": "<image>\n" + item["question"]},
                              {"from": "gpt", "value": item["answer"]}],
            "family": item["family"], "answer_kind": item["answer_kind"], "answer": item["answer"],
            "scene": {"width": spec["width"], "height": spec["height"], "objects": objects, "word": spec["word"]},
        })
    (out / "test.json").write_text(json.dumps(samples, indent=1))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=600, help="questions (scenes), families in turn")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    samples = build(args.out, args.n, args.seed)
    print(f"wrote {len(samples)} questions to {args.out / 'test.json'}")


if __name__ == "__main__":
    main()
