"""Shapes world, part 3: build train/val/test splits and write them in both data formats.

Layout written to ``out``::

    images/<split>-000123.png      one PNG per scene (one scene per sample)
    <split>.json                   LLaVA JSON: [{"id","image","conversations":[...], ...}]
    <split>.jsonl                  HF messages + images, one sample per line
    dataset.json                   generator settings, held-out pairs, counts per split and family
    text_captions.json             only with --text-captions N: text-only samples (text_captions.py)

Every sample also carries ``family`` (the first turn's), ``families`` and
``kinds`` (one per turn), ``answer`` / ``answer_kind`` (first turn), ``heldout``
(the scene holds a colour×shape pair never seen in training) and ``scene``
(objects and word), so :mod:`llavakit.eval.accuracy` scores per family
without re-deriving anything. Extra keys are ignored by LLaVA-format readers.

Design decisions:

* **One scene per sample** and every scene drawn from its own RNG stream
  ``Random("shapes/<seed>/<split>/<index>")``: splits are disjoint by scene,
  output is identical for a seed whatever the number of worker processes, and
  growing ``--train`` keeps the first N samples unchanged.
* **Held-out combinations**: :data:`HELD_OUT` colour×shape pairs never appear
  in train or val — not in images, not in question text. In test, 60% of
  scenes contain one, and the question is about that object when the family
  allows it (``heldout: true`` on the sample). The opt-in ``text_captions.json``
  names every colour with every shape in text only (no image) — on purpose,
  to break the caption prior against held-out pairs; see text_captions.py.
* **Train** samples carry a system message 10% of the time (a few generic
  prompts), and are multi-turn half of the time (2-4 questions of
  different families about one scene: more supervision per image encoded);
  **val** and **test** are single-question, for clean per-family scoring.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

from llavakit.data.shapes.questions import FAMILIES, QA, ask
from llavakit.data.shapes.scene import COLORS, SHAPES, Scene, check_fonts, render, sample_scene
from llavakit.data.shapes.text_captions import text_caption_samples
from llavakit.errors import LlavakitError

#: Colour×shape pairs kept out of train/val; the test split is built around them.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"), ("orange", "star"), ("yellow", "square"),
    ("green", "circle"), ("blue", "hexagon"), ("purple", "square"),
)
SPLITS = ("train", "val", "test")
SYSTEM_PROMPTS = (
    "You are a helpful assistant.", "You are a helpful assistant that answers questions about images.",
    "Answer the question about the picture.", "Be concise.", "You are a vision assistant. Answer briefly.",
    "Look at the image carefully and answer the user's question.", "You are a helpful AI assistant.",
)
_TRAIN_WEIGHTS = {"color": 1.0, "shape": 1.0, "count": 1.2, "spatial": 1.4, "exists": 1.2, "read": 1.0,
                  "caption": 0.8}


#: dataset.json's "generator": how other parts (export/declared.py) recognise shapes-world data.
SHAPES_GENERATOR = "llavakit shapes"


@dataclass(frozen=True)
class ShapesConfig:
    """What ``llavakit data shapes`` generates; saved as dataset.json next to the data."""

    train: int = 2000
    val: int = 200
    test: int = 500
    seed: int = 0
    image_size: int = 160
    multi_turn: float = 0.5  # share of train samples with several questions
    heldout_share: float = 0.6  # share of test scenes containing a held-out pair
    families: tuple[str, ...] = FAMILIES  # e.g. ("caption",) for an align-stage set
    system_prompts: float = 0.1  # share of train samples with a system message
    text_captions: int = 0  # text-only caption samples (text_captions.py), written to text_captions.json
    family_weights: tuple[tuple[str, float], ...] = ()  # train/val overrides of _TRAIN_WEIGHTS, e.g. (("spatial", 2.4),)
    # reading beyond one font and one word list (scene.py), train and val only: the test split stays the
    # standard one, so accuracy stays comparable; robustness is measured by benchmarks/robustness_probe.py
    fonts: tuple[str, ...] = ()  # TrueType files words are drawn in, besides the built-in font
    random_words: float = 0.0  # share of words that are made up (letters, not a word from WORDS)
    # captions say "a small/large <colour> <shape>", so the article never depends on the colour (questions.describe);
    # all splits (the caption score reads colour-shape pairs only, so test accuracy stays comparable)
    caption_sizes: bool = False

    def train_weights(self) -> dict[str, float]:
        """Relative frequency of each family as a sample's first question (train and val; test is uniform).

        Why a knob: a small model's weak family (nano's relational yes/no questions) is fixed
        by showing it more often; the default mix stays what the committed models were trained on.
        """
        return _train_weights(self.family_weights)


@lru_cache(maxsize=16)
def _train_weights(overrides: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """The default mix with ``overrides`` applied, checked once per distinct override set (not per sample)."""
    weights = dict(_TRAIN_WEIGHTS)
    for family, weight in overrides:
        if family not in weights:
            raise LlavakitError(f"unknown question family {family!r} in the family weights; "
                                f"known: {', '.join(FAMILIES)}")
        if not weight > 0:
            raise LlavakitError(f"the weight of {family!r} must be > 0, got {weight}")
        weights[family] = float(weight)
    return weights


def font_files(folder: str | Path) -> tuple[str, ...]:
    """The .ttf / .otf files in ``folder``, sorted (the same folder, the same data set); ``checked_fonts`` loads them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LlavakitError(f"--fonts {folder} is not a folder")
    files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".ttf", ".otf"))
    if not files:
        raise LlavakitError(f"--fonts {folder} holds no .ttf or .otf file")
    return tuple(files)


def checked_fonts(paths: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The fonts as absolute paths, each checked to load; a bad one is a clear LlavakitError."""
    try:
        return check_fonts(paths)  # absolute paths: worker processes may start elsewhere
    except ValueError as exc:
        raise LlavakitError(str(exc)) from None


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    return pairs if split == "test" else [p for p in pairs if p not in HELD_OUT]


def make_sample(split: str, index: int, cfg: ShapesConfig) -> tuple[Scene, dict]:
    """Sample ``index`` of ``split``: its scene and its record (questions, answers, metadata)."""
    rng = random.Random(f"shapes/{cfg.seed}/{split}/{index}")
    pairs = allowed_pairs(split)
    families = list(cfg.families)
    table = cfg.train_weights()
    weights = [table[f] for f in families] if split != "test" else [1.0] * len(families)
    for _attempt in range(20):
        family = rng.choices(families, weights=weights)[0]
        must = None
        if split == "test" and rng.random() < cfg.heldout_share:
            must = rng.choice(HELD_OUT)
        widen = {"fonts": cfg.fonts, "random_words": cfg.random_words} if split != "test" else {}
        scene = sample_scene(rng, cfg.image_size, allowed_pairs=pairs, must_include=must,
                             with_word=True if family == "read" else None, **widen)
        target = next((o for o in scene.objects if (o.color, o.shape) == must), None) if must else None
        first = ask(family, rng, scene, pairs, target=target, caption_sizes=cfg.caption_sizes)
        if first is None and target is not None:
            first = ask(family, rng, scene, pairs, caption_sizes=cfg.caption_sizes)
        if first is not None:
            break
    else:  # pragma: no cover - every family has a fallback scene within 20 tries in practice
        raise RuntimeError(f"could not make a question for {split}/{index}")
    turns = [first]
    if split == "train" and rng.random() < cfg.multi_turn:
        others = [f for f in families if f != family]
        rng.shuffle(others)
        for extra in others[: rng.randint(1, 3)]:
            qa = ask(extra, rng, scene, pairs, caption_sizes=cfg.caption_sizes)
            if qa is not None:
                turns.append(qa)
    heldout = any(p in HELD_OUT for p in scene.pairs())
    record = _record(split, index, scene, turns, heldout)
    # A system prompt on some train samples, from its own stream (the rest of the sample is unchanged by it),
    # so a model meets one at inference without surprise; val/test have none (clean scoring).
    side = random.Random(f"shapes/{cfg.seed}/{split}/{index}/system")
    if split == "train" and side.random() < cfg.system_prompts:
        record["system"] = side.choice(SYSTEM_PROMPTS)
    return scene, record


def _record(split: str, index: int, scene: Scene, turns: list[QA], heldout: bool) -> dict:
    sid = f"{split}-{index:06d}"
    return {
        "id": sid,
        "image": f"images/{sid}.png",
        "turns": [(t.question, t.answer) for t in turns],
        "family": turns[0].family,
        "answer_kind": turns[0].kind,
        "answer": turns[0].answer,
        "families": [t.family for t in turns],
        "kinds": [t.kind for t in turns],
        "heldout": heldout,
        "scene": scene.to_dict(),
    }


def to_llava(record: dict) -> dict:
    """LLaVA JSON sample: ``<image>`` once, at the start of the first human turn."""
    conversations = [{"from": "system", "value": record["system"]}] if record.get("system") else []
    for i, (q, a) in enumerate(record["turns"]):
        conversations.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + q})
        conversations.append({"from": "gpt", "value": a})
    meta = {k: v for k, v in record.items() if k not in ("turns", "id", "image", "system")}
    return {"id": record["id"], "image": record["image"], "conversations": conversations, **meta}


def to_messages(record: dict) -> dict:
    """HF ``messages`` + ``images`` sample, content parts as in llava-instruct-mix-vsft."""
    messages = ([{"role": "system", "content": [{"index": None, "text": record["system"], "type": "text"}]}]
                if record.get("system") else [])
    for i, (q, a) in enumerate(record["turns"]):
        content = [{"index": 0, "text": None, "type": "image"}] if i == 0 else []
        content.append({"index": None, "text": q, "type": "text"})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"index": None, "text": a, "type": "text"}]})
    meta = {k: v for k, v in record.items() if k not in ("turns", "id", "image", "system")}
    return {"id": record["id"], "messages": messages, "images": [record["image"]], **meta}


def _work(job: tuple[str, int, ShapesConfig, str]) -> tuple[dict, str]:
    split, index, cfg, out = job
    scene, record = make_sample(split, index, cfg)
    render(scene).save(os.path.join(out, record["image"]), compress_level=3)
    return record, scene.key()


def generate_shapes(out: Path | str, cfg: ShapesConfig, *, workers: int = 1, force: bool = False,
                    progress: bool = False) -> dict:
    """Generate all splits into ``out`` and return the dataset summary (also saved as dataset.json)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise LlavakitError(f"output directory {out} is not empty; pass --force to write into it anyway")
    for name, n in (("train", cfg.train), ("val", cfg.val), ("test", cfg.test)):
        if n < 0:
            raise LlavakitError(f"--{name} must be >= 0, got {n}")
    unknown = [f for f in cfg.families if f not in FAMILIES]
    if unknown or not cfg.families:
        raise LlavakitError(f"unknown question families {unknown or '(none given)'}; choose from {', '.join(FAMILIES)}")
    if not (0.0 <= cfg.multi_turn <= 1.0 and 0.0 <= cfg.heldout_share <= 1.0):
        raise LlavakitError("--multi-turn and --heldout-share are shares between 0 and 1")
    if cfg.text_captions < 0:
        raise LlavakitError(f"--text-captions must be >= 0, got {cfg.text_captions}")
    if not 32 <= cfg.image_size <= 1024:
        raise LlavakitError(f"--image-size must be between 32 and 1024 pixels, got {cfg.image_size}")
    if not 0.0 <= cfg.random_words <= 1.0:
        raise LlavakitError(f"--random-words is a share between 0 and 1, got {cfg.random_words}")
    cfg = replace(cfg, fonts=checked_fonts(cfg.fonts))
    cfg.train_weights()  # a bad --family-weight fails here, before any image is written
    (out / "images").mkdir(parents=True, exist_ok=True)
    summary: dict = {"generator": SHAPES_GENERATOR, "version": 1, "config": {**cfg.__dict__,
                                                                          "families": list(cfg.families),
                                                                          "fonts": list(cfg.fonts)},
                     "held_out": [list(p) for p in HELD_OUT], "families": list(cfg.families), "splits": {}}
    seen: dict[str, str] = {}
    for split in SPLITS:
        n = getattr(cfg, split)
        jobs = [(split, i, cfg, str(out)) for i in range(n)]
        results = _run(jobs, workers, progress, split)
        for record, key in results:
            if key in seen:  # astronomically unlikely; checked so "disjoint by scene" is a guarantee
                raise RuntimeError(f"scene of {record['id']} duplicates {seen[key]}")
            seen[key] = record["id"]
        records = [r for r, _ in results]
        _write_json(out / f"{split}.json", [to_llava(r) for r in records])
        _write_jsonl(out / f"{split}.jsonl", [to_messages(r) for r in records])
        summary["splits"][split] = {
            "samples": n,
            "questions": sum(len(r["turns"]) for r in records),
            "families": dict(Counter(f for r in records for f in r["families"])),
            "heldout_samples": sum(r["heldout"] for r in records),
        }
    if cfg.text_captions:
        _write_json(out / "text_captions.json", text_caption_samples(cfg.text_captions, cfg.seed, cfg.image_size))
        summary["text_captions"] = cfg.text_captions
    (out / "dataset.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _run(jobs: list, workers: int, progress: bool, label: str) -> list[tuple[dict, str]]:
    if workers <= 1 or len(jobs) < 64:
        it = map(_work, jobs)
        return list(_progress(it, len(jobs), label) if progress else it)
    with get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
        it = pool.imap(_work, jobs, chunksize=32)
        return list(_progress(it, len(jobs), label) if progress else it)


def _progress(it, total: int, label: str):
    from rich.progress import track

    return track(it, total=total, description=f"{label:>5}", transient=True)


def _write_json(path: Path, data: list) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def _write_jsonl(path: Path, rows: list) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
