"""Shapes world, part 2: question families, many phrasings each, and their answers.

Every question is computed from the :class:`~llavakit.data.shapes.scene.Scene`
description, so answers are right by construction. Families and their answer
kinds (what :mod:`llavakit.eval.accuracy` scores):

==========  =====================================================  ===========
family      asks                                                   answer kind
==========  =====================================================  ===========
color       the colour of a named shape                            ``color``
shape       the shape of a named colour                            ``shape``
count       how many shapes / circles / red shapes (0 possible)    ``number``
spatial     left/right or above/below, as a choice or yes/no       ``word`` / ``yesno``
exists      "is there a red circle?" — half "no" (hallucination)   ``yesno``
read        the rendered word                                      ``word``
caption     one sentence naming every object                       ``caption``
==========  =====================================================  ===========

Design decisions:

* Many templates per family, plus surface noise (casing, trailing
  punctuation, "colour"/"color", an optional "Answer with one word."), so a
  model learns the question, not our wording.
* Objects are referred to so that the reference is unambiguous: by shape when
  that shape occurs once, by colour when that colour occurs once, otherwise
  "the <colour> <shape>" (unique by construction).
* Spatial questions only ask about pairs clearly apart on that axis (a margin
  of 10% of the image), so the answer is never a judgement call.
* "No" answers of the existence family prefer hard negatives (the colour is
  in the scene on another shape, or the shape in another colour).
* Short answers are one lowercase word or a digit; captions list objects left
  to right as "a <colour> <shape>", which is what the caption rule checks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llavakit.data.shapes.scene import COLORS, SHAPES, Scene, SceneObject

FAMILIES: tuple[str, ...] = ("color", "shape", "count", "spatial", "exists", "read", "caption")

PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "hexagon": "hexagons"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class QA:
    """One question about a scene, its reference answer and how to score it."""

    family: str
    question: str
    answer: str
    kind: str  # color | shape | number | word | yesno | caption


# ------------------------------------------------------------------------------------- surface noise


def _colour_word(rng: random.Random) -> str:
    return "colour" if rng.random() < 0.5 else "color"


def _finish(rng: random.Random, text: str, short: bool = True) -> str:
    """Vary casing/punctuation a little and sometimes ask for a one-word answer."""
    text = text.strip()
    r = rng.random()
    if r < 0.12 and text.endswith("?"):
        text = text[:-1]
    elif r < 0.18:
        text = text[0].lower() + text[1:]
    if short and rng.random() < 0.15:
        text += rng.choice((" Answer with one word.", " Answer in one word.", " Reply with a single word.",
                            " Short answer please.", " Answer briefly."))
    return text


def _ref(rng: random.Random, scene: Scene, obj: SceneObject) -> str:
    """The shortest unambiguous name of ``obj`` in ``scene`` (varied when several work)."""
    same_shape = sum(o.shape == obj.shape for o in scene.objects)
    same_color = sum(o.color == obj.color for o in scene.objects)
    options = [f"{obj.color} {obj.shape}"] * 3
    if same_shape == 1:
        options.append(obj.shape)
    if same_color == 1:
        options.append(f"{obj.color} " + rng.choice(("shape", "object", "one")))
    return rng.choice(options)


def _by_position(rng: random.Random, scene: Scene, target: SceneObject | None = None
                 ) -> tuple[SceneObject, str] | None:
    """An object named by where it is ("the leftmost shape"), when it is clearly the most extreme one."""
    if len(scene.objects) < 2:
        return None
    margin = 0.10 * scene.size
    options = []
    for axis, low, high in (("cx", ("leftmost", "left-most", "far left"), ("rightmost", "right-most", "far right")),
                            ("cy", ("topmost", "highest", "top"), ("lowest", "bottom-most", "bottom"))):
        ranked = sorted(scene.objects, key=lambda o: getattr(o, axis))
        if getattr(ranked[1], axis) - getattr(ranked[0], axis) > margin:
            options.append((ranked[0], low))
        if getattr(ranked[-1], axis) - getattr(ranked[-2], axis) > margin:
            options.append((ranked[-1], high))
    if target is not None:
        options = [o for o in options if o[0] is target]
    if not options:
        return None
    obj, words = rng.choice(options)
    word = rng.choice(words)
    noun = rng.choice(("shape", "object", "figure"))
    if word in ("top", "bottom"):
        return obj, rng.choice((f"{noun} on the {word}", f"{noun} at the {word}"))
    if word in ("far left", "far right"):
        return obj, f"{noun} on the {word}"
    return obj, f"{word} {noun}"


# ------------------------------------------------------------------------------------------ families


def ask_color(rng: random.Random, scene: Scene, target: SceneObject | None = None) -> QA | None:
    placed = _by_position(rng, scene, target) if rng.random() < 0.25 else None
    if placed:
        obj, ref = placed
        c = _colour_word(rng)
        q = rng.choice((f"What {c} is the {ref}?", f"What is the {c} of the {ref}?", f"Which {c} is the {ref}?",
                        f"Tell me the {c} of the {ref}.", f"The {ref} is what {c}?"))
        return QA("color", _finish(rng, q), obj.color, "color")
    candidates = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    if target is not None:
        candidates = [target] if target in candidates else []
    if not candidates:
        return None
    obj = rng.choice(candidates)
    c = _colour_word(rng)
    s = obj.shape if len(scene.objects) > 1 or rng.random() < 0.5 else rng.choice(("shape", "object"))
    q = rng.choice((
        f"What {c} is the {s}?", f"What is the {c} of the {s}?", f"Which {c} is the {s}?",
        f"The {s} is what {c}?", f"Tell me the {c} of the {s}.", f"What {c} is the {s} in the image?",
        f"Name the {c} of the {s}.", f"What {c} does the {s} have?", f"Can you tell me what {c} the {s} is?",
        f"What {c} is the {s} in this picture?", f"Identify the {c} of the {s}.", f"{s.capitalize()}: what {c}?",
        f"Look at the {s}. What {c} is it?", f"In the picture, which {c} is the {s}?",
    ))
    return QA("color", _finish(rng, q), obj.color, "color")


def ask_shape(rng: random.Random, scene: Scene, target: SceneObject | None = None) -> QA | None:
    placed = _by_position(rng, scene, target) if rng.random() < 0.25 else None
    if placed:
        obj, ref = placed
        ref = ref.replace("shape", "one")  # "what shape is the leftmost one?", not "... leftmost shape?"
        q = rng.choice((f"What shape is the {ref}?", f"What is the shape of the {ref}?",
                        f"Which shape is the {ref}?", f"What kind of shape is the {ref}?"))
        return QA("shape", _finish(rng, q), obj.shape, "shape")
    candidates = [o for o in scene.objects if sum(p.color == o.color for p in scene.objects) == 1]
    if target is not None:
        candidates = [target] if target in candidates else []
    if not candidates:
        return None
    obj = rng.choice(candidates)
    col = obj.color
    thing = rng.choice(("object", "shape", "thing", "figure", "one"))
    q = rng.choice((
        f"What shape is the {col} {thing}?", f"What is the shape of the {col} {thing}?",
        f"Which shape is {col}?", f"What kind of shape is the {col} {thing}?", f"Name the {col} shape.",
        f"The {col} {thing} is which shape?", f"Identify the shape that is {col}.",
        f"What shape is drawn in {col}?", f"What is the {col} {thing}?", f"Which shape has the {col} {_colour_word(rng)}?",
        f"Tell me the shape of the {col} {thing}.", f"What geometric shape is {col}?",
        f"Look at the {col} {thing}. What shape is it?", f"What form does the {col} {thing} have?",
    ))
    return QA("shape", _finish(rng, q), obj.shape, "shape")


def ask_count(rng: random.Random, scene: Scene, allowed_pairs: list[tuple[str, str]]) -> QA:
    mode = rng.choices(("all", "shape", "color", "pair"), weights=(4, 3, 3, 1))[0]
    if mode == "pair":
        color, shape = rng.choice(sorted(scene.pairs())) if rng.random() < 0.5 else rng.choice(allowed_pairs)
        n = int((color, shape) in scene.pairs())
        noun = f"{color} {PLURALS[shape]}"
    elif mode == "shape":
        present = [o.shape for o in scene.objects]
        shape = rng.choice(present) if rng.random() < 0.85 else rng.choice(SHAPES)
        n = present.count(shape)
        noun = PLURALS[shape]
    elif mode == "color":
        present = [o.color for o in scene.objects]
        color = rng.choice(present) if rng.random() < 0.85 else rng.choice(COLORS)
        n = present.count(color)
        noun = f"{color} " + rng.choice(("shapes", "objects", "things"))
    else:
        n = len(scene.objects)
        noun = rng.choice(("shapes", "objects", "figures", "things", "items"))
    q = rng.choice((
        f"How many {noun} are there?", f"How many {noun} are in the image?", f"Count the {noun}.",
        f"What is the number of {noun}?", f"How many {noun} can you see?", f"How many {noun} do you see?",
        f"Count the {noun} in the picture.", f"How many {noun} are shown?", f"Number of {noun}?",
        f"How many {noun} does the image contain?", f"Can you count the {noun}?",
        f"How many {noun} are in this picture?",
    ))
    q = _finish(rng, q, short=False)
    if rng.random() < 0.1:
        q += " Answer with a number."
    return QA("count", q, str(n), "number")


def ask_spatial(rng: random.Random, scene: Scene, target: SceneObject | None = None) -> QA | None:
    margin = 0.10 * scene.size
    pairs = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b or (target is not None and target not in (a, b)):
                continue
            if abs(a.cx - b.cx) > margin:
                pairs.append((a, b, "h"))
            if abs(a.cy - b.cy) > margin:
                pairs.append((a, b, "v"))
    singles = [o for o in scene.objects if abs(o.cx - scene.size / 2) > 0.15 * scene.size
               and (target is None or o is target)]
    if not pairs and not singles:
        return None
    if singles and (not pairs or rng.random() < 0.15):
        obj = rng.choice(singles)
        side = "left" if obj.cx < scene.size / 2 else "right"
        r = _ref(rng, scene, obj)
        q = rng.choice((
            f"Is the {r} on the left or the right side of the image?", f"Which side of the image is the {r} on?",
            f"Is the {r} on the left or right?", f"On which side is the {r}, left or right?",
        ))
        return QA("spatial", _finish(rng, q), side, "word")
    a, b, axis = rng.choice(pairs)
    ra, rb = _ref(rng, scene, a), _ref(rng, scene, b)
    if axis == "h":
        truth = "left" if a.cx < b.cx else "right"
        other = "right" if truth == "left" else "left"
        if rng.random() < 0.5:
            q = rng.choice((
                f"Is the {ra} to the left or to the right of the {rb}?", f"Is the {ra} left or right of the {rb}?",
                f"Relative to the {rb}, is the {ra} on the left or on the right?",
                f"Is the {ra} on the left or right side of the {rb}?",
                f"Where is the {ra} compared to the {rb}: left or right?",
            ))
            return QA("spatial", _finish(rng, q), truth, "word")
        asked = truth if rng.random() < 0.5 else other
        q = rng.choice((
            f"Is the {ra} to the {asked} of the {rb}?", f"Is the {ra} {asked} of the {rb}?",
            f"Is the {ra} on the {asked} side of the {rb}?", f"Is there a {ra} to the {asked} of the {rb}?",
            f"Does the {ra} appear to the {asked} of the {rb}?",
        ))
        return QA("spatial", _finish(rng, q), "yes" if asked == truth else "no", "yesno")
    truth = "above" if a.cy < b.cy else "below"
    other = "below" if truth == "above" else "above"
    if rng.random() < 0.5:
        q = rng.choice((
            f"Is the {ra} above or below the {rb}?", f"Is the {ra} higher or lower than the {rb}? Say above or below.",
            f"Relative to the {rb}, is the {ra} above or below?", f"Is the {ra} located above or below the {rb}?",
            f"Where is the {ra} compared to the {rb}: above or below?",
        ))
        return QA("spatial", _finish(rng, q), truth, "word")
    asked = truth if rng.random() < 0.5 else other
    q = rng.choice((
        f"Is the {ra} {asked} the {rb}?", f"Is the {ra} located {asked} the {rb}?",
        f"Does the {ra} appear {asked} the {rb}?", f"Is the {ra} positioned {asked} the {rb}?",
    ))
    return QA("spatial", _finish(rng, q), "yes" if asked == truth else "no", "yesno")


def ask_exists(rng: random.Random, scene: Scene, allowed_pairs: list[tuple[str, str]], answer: str | None = None,
               target: SceneObject | None = None) -> QA:
    """Half "yes", half "no" (unless ``answer`` forces one); "no" prefers hard negatives."""
    if answer is None:
        answer = "yes" if rng.random() < 0.5 else "no"
    present = scene.pairs()
    mode = rng.choices(("pair", "shape", "color"), weights=(7, 2, 1))[0]
    if mode == "shape":
        shapes = {o.shape for o in scene.objects}
        pool = sorted(shapes) if answer == "yes" else [s for s in SHAPES if s not in shapes]
        if pool:
            s = rng.choice(pool)
            noun = rng.choice((f"a {s}", f"any {PLURALS[s]}"))
            q = rng.choice((f"Is there {noun} in the image?", f"Do you see {noun}?", f"Does the picture contain {noun}?",
                            f"Can you see {noun}?", f"Is there {noun}?"))
            return QA("exists", _finish(rng, q), answer, "yesno")
    if mode == "color":
        colors = {o.color for o in scene.objects}
        pool = sorted(colors) if answer == "yes" else [c for c in COLORS if c not in colors]
        if pool:
            c = rng.choice(pool)
            q = rng.choice((f"Is there anything {c} in the image?", f"Is there a {c} shape?",
                            f"Do you see any {c} objects?", f"Is any shape {c}?", f"Are there {c} shapes in the picture?"))
            return QA("exists", _finish(rng, q), answer, "yesno")
    if answer == "yes":
        obj = target or rng.choice(scene.objects)
        color, shape = obj.color, obj.shape
    else:
        absent = [p for p in allowed_pairs if p not in present]
        hard = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
        if target is not None:  # ask about the held-out pair's neighbourhood
            hard = [p for p in absent if p[0] == target.color or p[1] == target.shape] or hard
        color, shape = rng.choice(hard if hard and rng.random() < 0.7 else absent)
    art = "an" if color == "orange" else "a"
    q = rng.choice((
        f"Is there {art} {color} {shape} in the image?", f"Does the picture contain {art} {color} {shape}?",
        f"Can you see {art} {color} {shape}?", f"Is {art} {color} {shape} present?",
        f"Do you see any {color} {PLURALS[shape]}?", f"Are there any {color} {PLURALS[shape]}?",
        f"Is there {art} {color} {shape}?", f"Does this image show {art} {color} {shape}?",
        f"Is {art} {color} {shape} visible in the picture?", f"Can you find {art} {color} {shape} here?",
        f"Is there {art} {color} {shape} anywhere in the image?", f"Do you see {art} {color} {shape}?",
    ))
    return QA("exists", _finish(rng, q), answer, "yesno")


def ask_read(rng: random.Random, scene: Scene) -> QA | None:
    if not scene.word:
        return None
    q = rng.choice((
        "What word is written in the image?", "What does the text say?", "Read the word in the picture.",
        "What is written in the image?", "Which word appears in the image?", "What text do you see?",
        "What is the word?", "What word can you read in the picture?", "Read the text in the image.",
        "What does the word in the image say?", "What is written here?", "Which word is shown?",
        "What word is printed in the picture?", "Can you read the word in the image?",
        "What text appears in the image?", "What is the text in the image?", "Which word is written on the picture?",
        "What does the writing say?",
    ))
    return QA("read", _finish(rng, q), scene.word, "word")


#: An object whose radius is at least this share of the image side is "large" in a sized caption, else "small".
LARGE_RADIUS = 0.12


def size_word(obj: SceneObject, image_size: int) -> str:
    """"small" or "large": the object's radius against :data:`LARGE_RADIUS` of the image side."""
    return "large" if obj.radius >= LARGE_RADIUS * image_size else "small"


def describe(scene: Scene, rng: random.Random, sizes: bool = False) -> str:
    """One sentence naming every object ("a <colour> <shape>", left to right) and the word.

    With ``sizes`` each object is "a small/large <colour> <shape>". Why: the article comes before the
    colour, and "an" only ever preceded orange objects, none of them a star (a held-out pair). budget v5
    wrote "a" before the held-out orange star and then, committed to "a", a colour that fits it: 19 of its
    22 wrong test captions (forced to "an", it continued "orange star" 10 times in 12). A size word
    between article and colour makes the article always "a", so the colour is read where the colour
    questions read it, and those generalise to held-out pairs.
    """
    objs = sorted(scene.objects, key=lambda o: o.cx)
    if sizes:
        names = [f"a {size_word(o, scene.size)} {o.color} {o.shape}" for o in objs]
    else:
        names = [f"{'an' if o.color == 'orange' else 'a'} {o.color} {o.shape}" for o in objs]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    word = f', with the word "{scene.word}"' if scene.word else ""
    count = NUMBER_WORDS[len(objs)] if len(objs) < len(NUMBER_WORDS) else str(len(objs))
    form = rng.randrange(4)
    if form == 0:
        text = f"{listed}{word}."
        return text[0].upper() + text[1:]
    if form == 1:
        return f"The image shows {listed}{word}."
    if form == 2:
        plural = "shape" if len(objs) == 1 else "shapes"
        return f"There {'is' if len(objs) == 1 else 'are'} {count} {plural}: {listed}{word}."
    return f"A picture of {listed}{word}."


def ask_caption(rng: random.Random, scene: Scene, sizes: bool = False) -> QA:
    q = rng.choice((
        "Describe the image in one sentence.", "Give a short caption for this picture.", "What is in the image?",
        "Write a one-sentence description of the scene.", "Caption this image.", "Briefly describe what you see.",
        "Describe this picture briefly.", "What does the image show?", "Summarize the image in one sentence.",
        "What can you see in this picture?", "Write a caption for the image.", "Describe the scene.",
        "What do you see?", "Describe what is shown.", "Give a one-sentence description of this image.",
        "Describe the image.", "Describe all the shapes in the picture.",
    ))
    return QA("caption", _finish(rng, q, short=False), describe(scene, rng, sizes), "caption")


def ask(family: str, rng: random.Random, scene: Scene, allowed_pairs: list[tuple[str, str]],
        target: SceneObject | None = None, caption_sizes: bool = False) -> QA | None:
    """One question of ``family`` about ``scene`` (about ``target`` when given), or None if none fits.

    ``caption_sizes``: captions name each object's size (see :func:`describe`)."""
    if family == "color":
        return ask_color(rng, scene, target)
    if family == "shape":
        return ask_shape(rng, scene, target)
    if family == "count":
        return ask_count(rng, scene, allowed_pairs)
    if family == "spatial":
        return ask_spatial(rng, scene, target)
    if family == "exists":
        return ask_exists(rng, scene, allowed_pairs, target=target)
    if family == "read":
        return ask_read(rng, scene)
    if family == "caption":
        return ask_caption(rng, scene, caption_sizes)
    raise ValueError(f"unknown question family {family!r}; expected one of {FAMILIES}")
