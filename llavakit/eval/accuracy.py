"""Visual-QA accuracy: scoring rules per answer kind, and running a model over a test set.

Scoring rules (:func:`score`) — one per answer kind, written so that a correct
answer phrased as a short sentence still counts and a hedge never does:

* **normalisation** (every kind): lowercase; punctuation and quotes removed;
  the articles a / an / the dropped; number words zero…twenty become digits;
  "colour"/"color" spelling irrelevant; plural shape names singular.
* ``yesno``: the first word decides — yes / yeah / yep / true / correct /
  certainly → yes; no / nope / false / not / none → no; a sentence starting
  "There is/are", "I (can) see", "It is" is "no" if it holds a negation
  ("There is no green star.", "I can't see one"), else "yes". Anything else
  (e.g. "Maybe") is wrong.
* ``color``, ``shape``, ``number``: the prediction must name exactly one
  colour (shape, number) and it must be the answer: "Red." and "It is red."
  score, "red or orange" does not.
* ``number``: also "none" / "no ..." (without any digit) for a count of 0.
* ``word``: left / right / above / below like a colour (the only side named
  must be the answer: "It is to the left of the square." scores); any other
  word (the read word) by exact match after normalisation and after dropping
  filler words ("the word is", "it says", "written", ...), so
  "The word is 'CAT'." scores for cat.
* ``caption``: the caption must name every object of the scene as
  "<colour> <shape>" (up to two other words in between, e.g. "red filled
  circle") and name no colour–shape pair that is absent. Objects come from the
  sample's ``scene`` when present, else from the reference caption. Other
  words are free.
* anything else (``text``): exact match after normalisation.

The answer kind comes from the sample (``answer_kind``, written by the shapes
generator) or is inferred from the reference answer, so other visual-QA sets
in either data format can be scored too.

:func:`evaluate` runs a model (any backend, several precisions) greedily over a
test file and returns an :class:`EvalReport`: accuracy per family, on
held-out-combination samples, and overall, per precision; every prediction is
kept for ``--json``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llavakit.errors import LlavakitError

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray", "cyan")
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "rectangle", "pentagon", "diamond", "oval", "heart")
SIDES = ("left", "right", "above", "below")
_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen twenty").split()
_YES = {"yes", "yeah", "yep", "true", "correct", "certainly", "affirmative", "sure"}
_NO = {"no", "nope", "false", "not", "none", "negative", "incorrect"}
_NEGATIONS = {"no", "not", "none", "t", "cannot", "nothing", "never"}  # "t": the tail of isn't / can't / ...
_ARTICLES = {"a", "an", "the"}
_FILLER = {"word", "text", "is", "says", "say", "it", "written", "reads", "read", "there", "image", "in", "picture",
           "shows", "answer", "to", "of", "on", "side", "which", "appears", "located", "positioned", "this",
           "that", "its", "s", "label"}
_SYNONYMS = {"colour": "color", "grey": "gray", "violet": "purple", "circles": "circle", "squares": "square",
             "triangles": "triangle", "stars": "star", "hexagons": "hexagon", "rectangles": "rectangle",
             "pentagons": "pentagon", "diamonds": "diamond", "ovals": "oval", "hearts": "heart"}
KINDS = ("yesno", "color", "shape", "number", "word", "caption", "text")


def normalize(text: str) -> list[str]:
    """Lowercased tokens without punctuation or articles; number words as digits; synonyms unified."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^\w\s']", " ", text).replace("'", " ")
    out = []
    for tok in text.split():
        tok = _SYNONYMS.get(tok, tok)
        if tok in _ARTICLES:
            continue
        if tok in _NUMBERS:
            tok = str(_NUMBERS.index(tok))
        out.append(tok)
    return out


def _yes_or_no(tokens: list[str]) -> str | None:
    """yes / no / None (undecided) for a normalised answer."""
    if not tokens:
        return None
    if tokens[0] in _YES:
        return "yes"
    if tokens[0] in _NO:
        return "no"
    if tokens[0] in ("there", "i", "it", "yes"):  # a sentence: "There is no green star." / "I can see one."
        if any(t in _NEGATIONS for t in tokens):
            return "no"
        if tokens[:2] in (["there", "is"], ["there", "are"], ["i", "see"], ["i", "can"], ["it", "is"]):
            return "yes"
    return None


def infer_kind(answer: str, family: str | None = None) -> str:
    """The answer kind of a reference answer that does not say its own."""
    if family == "caption":
        return "caption"
    toks = normalize(answer)
    if len(toks) == 1:
        tok = toks[0]
        if tok in ("yes", "no"):
            return "yesno"
        if tok.isdigit():
            return "number"
        if tok in COLORS:
            return "color"
        if tok in SHAPES:
            return "shape"
        return "word"
    return "text"


def caption_pairs(text: str) -> set[tuple[str, str]]:
    """(colour, shape) pairs a caption names: a colour followed by a shape within two more words."""
    toks = normalize(text)
    pairs = set()
    for i, tok in enumerate(toks):
        if tok in COLORS:
            for nxt in toks[i + 1: i + 4]:
                if nxt in SHAPES:
                    pairs.add((tok, nxt))
                    break
                if nxt in COLORS:
                    break
    return pairs


def score(prediction: str, answer: str, kind: str | None = None, scene: dict | None = None,
          family: str | None = None) -> bool:
    """Whether ``prediction`` answers correctly (rules in the module docstring)."""
    kind = kind or infer_kind(answer, family)
    pred = normalize(prediction)
    ref = normalize(answer)
    if kind == "yesno":
        return bool(ref) and _yes_or_no(pred) == ref[0]
    if kind == "number" and ref == ["0"] and pred and pred[0] in ("no", "none") and not any(t.isdigit() for t in pred):
        return True  # "None." / "No red shapes." for a count of zero
    if kind == "word" and len(ref) == 1 and ref[0] in SIDES:
        kind = "side"
    if kind in ("color", "shape", "number", "side"):
        vocab = {"color": COLORS, "shape": SHAPES, "side": SIDES}.get(kind)
        named = {t for t in pred if (t in vocab if vocab else t.isdigit())}
        return named == set(ref)
    if kind == "word":
        return [t for t in pred if t not in _FILLER] == [t for t in ref if t not in _FILLER]
    if kind == "caption":
        truth = {(o["color"], o["shape"]) for o in scene["objects"]} if scene and scene.get("objects") \
            else caption_pairs(answer)
        return bool(truth) and caption_pairs(prediction) == truth
    return pred == ref


# ----------------------------------------------------------------------------------------- running


@dataclass
class Item:
    """One question to ask: the conversation up to it, its images, the reference answer."""

    id: str
    messages: list[dict]
    images: list
    answer: str
    kind: str
    family: str
    heldout: bool = False
    scene: dict | None = None


@dataclass
class Column:
    """Results of one model variant (precision / backend) over the items."""

    name: str
    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, item: Item, prediction: str) -> None:
        ok = score(prediction, item.answer, item.kind, item.scene, item.family)
        for key in [item.family, "overall"] + (["held-out pairs"] if item.heldout else []):
            self.total[key] = self.total.get(key, 0) + 1
            self.correct[key] = self.correct.get(key, 0) + int(ok)
        self.predictions.append({"id": item.id, "family": item.family, "answer": item.answer,
                                 "prediction": prediction, "correct": ok})

    def accuracy(self, key: str) -> float | None:
        return 100.0 * self.correct[key] / self.total[key] if self.total.get(key) else None


@dataclass
class EvalReport:
    """Accuracy per family / held-out / overall for each column (precision)."""

    data: str
    model: str
    columns: list[Column]

    def rows(self) -> list[str]:
        keys: list[str] = []
        for col in self.columns:
            keys += [k for k in col.total if k not in keys and k not in ("overall", "held-out pairs")]
        tail = ["held-out pairs"] if any("held-out pairs" in c.total for c in self.columns) else []
        return sorted(keys) + tail + ["overall"]

    def as_dict(self) -> dict:
        return {"data": self.data, "model": self.model,
                "accuracy": {c.name: {k: c.accuracy(k) for k in self.rows()} for c in self.columns},
                "counts": {c.name: c.total for c in self.columns},
                "seconds": {c.name: round(c.seconds, 2) for c in self.columns},
                "predictions": {c.name: c.predictions for c in self.columns}}

    def table(self):
        from rich.table import Table

        table = Table(title=f"accuracy (%) on {self.data}")
        table.add_column("family")
        table.add_column("n", justify="right")
        for col in self.columns:
            table.add_column(col.name, justify="right")
        for key in self.rows():
            n = self.columns[0].total.get(key, 0)
            cells = [f"{a:.1f}" if (a := c.accuracy(key)) is not None else "-" for c in self.columns]
            table.add_row(key, str(n), *cells, style="bold" if key == "overall" else None)
        return table


def load_items(data: str | Path, limit: int | None = None) -> list[Item]:
    """Every assistant turn of a test file becomes an item (earlier turns keep the reference answers)."""
    from llavakit.data import read_dataset, validate

    if Path(data).is_dir() and (Path(data) / "test.json").is_file():  # a shapes-world folder: its test split
        data = Path(data) / "test.json"
    samples = validate(read_dataset(data), skip_bad=True)
    items: list[Item] = []
    for sample in samples:
        families = sample.meta.get("families") or []
        kinds = sample.meta.get("kinds") or []
        turn = 0
        for i, msg in enumerate(sample.messages):
            if msg["role"] != "assistant":
                continue
            answer = sample.text_of(msg)
            family = families[turn] if turn < len(families) else sample.meta.get("family") or "all"
            kind = kinds[turn] if turn < len(kinds) else (sample.meta.get("answer_kind") if turn == 0 else None)
            items.append(Item(id=f"{sample.id}#{turn}" if turn else sample.id, messages=sample.messages[:i],
                              images=sample.images, answer=answer, kind=kind or infer_kind(answer, family),
                              family=family, heldout=bool(sample.meta.get("heldout")), scene=sample.meta.get("scene")))
            turn += 1
        if limit and len(items) >= limit:
            break
    return items[:limit] if limit else items


def score_items(items: Iterable[Item], predict: Callable[[Item], str], name: str,
                progress: Callable[[int], None] | None = None) -> Column:
    """Ask every item through ``predict`` and score it: the one path for real models and for tests."""
    column = Column(name)
    start = time.perf_counter()
    for n, item in enumerate(items, 1):
        column.add(item, predict(item))
        if progress:
            progress(n)
    column.seconds = time.perf_counter() - start
    return column


#: eval precision name -> export options (the LM's weights, vision tower, text embeddings)
PRECISIONS = {
    "fp32": {"weights": "fp32", "vision": "fp32", "text_embeddings": "fp32"},
    "fp16": {"weights": "fp16", "vision": "fp16", "text_embeddings": "fp16"},
    "int8": {"weights": "int8", "vision": "int8", "text_embeddings": "int8"},
    "int4": {"weights": "int4", "vision": "int8", "text_embeddings": "int8"},
}


def open_variant(model: str | Path, backend: str, precision: str, calibration: str | None = None,
                 device: str | None = None):
    """A Pipeline for ``model`` at ``precision``: exported once into the cache (OpenVINO, llama.cpp) or as is (torch).

    ``backend="llamacpp"``: ``precision`` is the language model's GGUF type (q4_k_m, q4_0, q8_0, ...); vision and
    text embeddings are exported at INT8 as for OpenVINO, and the LM runs in llama.cpp (``export --lm-gguf``).
    """
    from llavakit.checkpoints.resolve import resolve_source
    from llavakit.export.layout import is_exported
    from llavakit.runtime.pipeline import Pipeline

    source = resolve_source(model, "model")
    if backend == "torch":
        if precision != "fp32":
            raise LlavakitError(f"the torch backend evaluates fp32 only, not {precision!r}; use --backend openvino")
        return Pipeline(source, backend="torch", device=device)
    if backend not in ("openvino", "llamacpp"):
        raise LlavakitError(f"unknown backend {backend!r}; choose openvino, llamacpp or torch")
    if is_exported(source):
        return Pipeline(source, backend=backend, device=device)
    lm_gguf = None
    if backend == "llamacpp":
        from llavakit.export.lm_gguf import check_gguf_type

        lm_gguf = check_gguf_type(precision)  # the LM in llama.cpp; everything else as the INT8 export
        ir_precision = "int8"
    elif precision in PRECISIONS:
        ir_precision = precision
    else:
        raise LlavakitError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
    from llavakit.checkpoints.demo import cache_dir
    from llavakit.export.cache import export_key

    key = export_key(source, f"eval-{precision}-{calibration}")
    target = cache_dir() / "eval-exports" / f"{source.name}-{precision}-{key}"
    if not is_exported(target):
        import logging

        import nncf

        from llavakit.export.compress import CompressionOptions
        from llavakit.export.declared import export_recipe
        from llavakit.export.exporter import export_openvino

        nncf.set_log_level(logging.WARNING)
        options = CompressionOptions(**{**PRECISIONS[ir_precision], **export_recipe(source, ir_precision)[0]})
        export_openvino(source, target, options, calibration=calibration, force=True, show_progress=False,
                        lm_gguf=lm_gguf)
    return Pipeline(target, backend=backend, device=device)


def pipeline_predictor(pipe: Any, max_new_tokens: int | None = None) -> Callable[[Item], str]:
    """Greedy answers from a runtime Pipeline; short answers get few tokens, captions more."""
    from llavakit.images import load_image

    def predict(item: Item) -> str:
        images = [load_image(ref) for ref in item.images]
        budget = max_new_tokens or (64 if item.kind in ("caption", "text") else 12)
        return pipe.stream_messages(item.messages, images, max_new_tokens=budget).finish().text.strip()

    return predict


def evaluate(model: str | Path | Sequence[str | Path], data: str | Path, *, backend: str = "openvino",
             precisions: Iterable[str] = ("fp32",), limit: int | None = None, max_new_tokens: int | None = None,
             calibration: str | None = None, device: str | None = None,
             on_progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Evaluate ``model`` (or several, e.g. dense vs MoE) on ``data`` at each precision, one column each."""
    models = [model] if isinstance(model, (str, Path)) else list(model)
    items = load_items(data, limit)
    if not items:
        raise LlavakitError(f"{data} has no questions to evaluate")
    precisions = list(precisions)
    names = _column_names(models)
    columns = []
    for source, label in zip(models, names):
        fixed = _exported_precision(source)  # an export runs as it was compressed: one column
        for precision in [fixed] if fixed else precisions:
            pipe = open_variant(source, backend, precision, calibration, device)
            name = precision if backend == "openvino" else f"{backend}-{precision}"
            name = f"{label} {name}" if len(models) > 1 else name
            tick = (lambda n, _p=name: on_progress(_p, n, len(items))) if on_progress else None
            columns.append(score_items(items, pipeline_predictor(pipe, max_new_tokens), name, tick))
            del pipe
    return EvalReport(data=str(data), model=", ".join(str(m) for m in models), columns=columns)


def _exported_precision(model: str | Path) -> str | None:
    """The LM precision an OpenVINO export was written at (None for a HF checkpoint)."""
    from llavakit.export import layout

    path = Path(model)
    if not layout.is_exported(path):
        return None
    try:
        return json.loads((path / layout.EXPORT_REPORT).read_text())["options"]["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        return "export"


def _column_names(models: list) -> list[str]:
    """Short distinct labels: the folder names, or their full paths when two share a name."""
    names = [Path(str(m)).name or str(m) for m in models]
    return names if len(set(names)) == len(names) else [str(m) for m in models]


def write_json(report: EvalReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False), encoding="utf-8")


__all__ = [
    "KINDS",
    "PRECISIONS",
    "Column",
    "EvalReport",
    "Item",
    "caption_pairs",
    "evaluate",
    "infer_kind",
    "load_items",
    "normalize",
    "score",
    "score_items",
    "write_json",
]
