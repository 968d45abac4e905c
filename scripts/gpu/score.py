"""Accuracy per question family for shapes-world answers (used on the GPU machine, where ``llavakit eval``'s
OpenVINO side is not installed; ``llavakit eval`` gives the official numbers).

Rule: short answers are normalised (lower case, punctuation dropped, number words -> digits) and correct when
the answer equals the reference or its first word does; a caption is correct when it names every object of the
scene as "<colour> <shape>" and no colour-shape pair that is not there.
"""

from __future__ import annotations

import re
from collections import defaultdict

NUMBERS = {w: str(i) for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                            "nine", "ten"))}
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "hexagon")


def normalise(text: str) -> list[str]:
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    return [NUMBERS.get(w, w) for w in words]


def correct(record: dict, pred: str) -> bool:
    if record["answer_kind"] == "caption":
        p = pred.lower()
        said = {(c, s) for c in COLORS for s in SHAPES if re.search(rf"\b{c} {s}s?\b", p)}
        truth = {(o["color"], o["shape"]) for o in record["scene"]["objects"]}
        return said == truth
    words, ref = normalise(pred), normalise(record["answer"])
    return bool(words) and (words == ref or words[: len(ref)] == ref)


def score_records(records: list[dict], preds: list[str]) -> dict:
    hits, totals = defaultdict(int), defaultdict(int)
    for r, p in zip(records, preds):
        ok = correct(r, p)
        for key in (r["family"], "overall") + (("heldout",) if r.get("heldout") else ()):
            totals[key] += 1
            hits[key] += ok
    return {k: round(100.0 * hits[k] / totals[k], 1) for k in sorted(totals)} | {"n": totals["overall"]}
