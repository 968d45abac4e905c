"""Shapes world, part 1: sample a scene and render it to a PIL image.

A :class:`Scene` is a plain description (objects with colour name, shape name,
centre, size; an optional word; a background recipe) so that questions and
answers are computed from the *description*, never from pixels, and tests can
check answers against it.

Design decisions (robustness over prettiness — models trained on this are
tested on scenes drawn by other people's code):

* Colours are sampled inside a hue band per colour name (not one RGB value),
  and sometimes the "textbook" RGB value (pure red, CSS orange, ...), so a
  model learns the *name*, not a pixel value.
* Backgrounds are low-saturation (solid, gradient, noise, faint texture) so
  they are never mistaken for a coloured shape.
* Drawing varies: supersampled (anti-aliased) or aliased, filled / filled with
  outline / hollow with a thick coloured outline, rotations, sizes.
* Objects never overlap (rejection sampling with a margin) and each
  (colour, shape) pair occurs at most once per scene, so every object can be
  named unambiguously by "the <colour> <shape>".
* The optional word is drawn with Pillow's built-in scalable font
  (``ImageFont.load_default(size=...)``, present on every Pillow with
  FreeType), in varied size, case, colour, stroke and a slight rotation, in an
  area no shape covers.
* Reading beyond one font and 60 words (``fonts``, ``random_words``; off by
  default, so existing datasets stay what they were): words drawn in TrueType
  fonts given by path as well as the built-in one, and made-up words (letters
  alternating consonant / vowel, 3-7 long) that no word list holds, so that a
  model learns letters rather than the look of 60 words. A robustness probe drawn
  with matplotlib's DejaVu fonts read 34-44% of its words before this
  (``benchmarks/training.md``).
* Everything random comes from the ``random.Random`` passed in, so a scene is
  a pure function of its seed.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")

#: (hue in degrees, saturation range, value range) per colour name.
_HUE_BANDS: dict[str, tuple[float, float, tuple[float, float], tuple[float, float]]] = {
    "red": (0.0, 8.0, (0.75, 1.0), (0.70, 1.0)),
    "orange": (27.0, 5.0, (0.80, 1.0), (0.90, 1.0)),
    "yellow": (54.0, 4.0, (0.75, 1.0), (0.80, 1.0)),
    "green": (125.0, 20.0, (0.65, 1.0), (0.45, 0.90)),
    "blue": (222.0, 14.0, (0.70, 1.0), (0.60, 1.0)),
    "purple": (285.0, 12.0, (0.55, 0.95), (0.45, 0.85)),
}
#: Textbook values other renderers are likely to use (CSS / matplotlib names).
_CANONICAL: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((255, 0, 0), (220, 20, 60), (200, 0, 0), (214, 39, 40), (230, 50, 50)),
    "orange": ((255, 165, 0), (255, 140, 0), (255, 128, 0), (255, 127, 14)),
    "yellow": ((255, 255, 0), (255, 215, 0), (240, 220, 0), (230, 210, 30), (210, 200, 0)),
    "green": ((0, 128, 0), (0, 255, 0), (34, 139, 34), (0, 200, 0), (44, 160, 44), (50, 205, 50)),
    "blue": ((0, 0, 255), (30, 144, 255), (0, 0, 200), (65, 105, 225), (31, 119, 180), (0, 100, 255)),
    "purple": ((128, 0, 128), (148, 0, 211), (160, 32, 240), (128, 0, 255), (148, 103, 189), (120, 40, 170)),
}

WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "map", "box", "car", "hat", "key", "cup", "pen", "bus", "fox", "owl", "egg",
    "ice", "jam", "log", "net", "oak", "pig", "sky", "toy", "van", "web", "zoo", "milk", "fish", "book",
    "door", "lamp", "tree", "moon", "bird", "frog", "ship", "rain", "snow", "wind", "cake", "game",
    "home", "king", "lion", "nest", "park", "sand", "tent", "wolf", "apple", "house", "water", "train",
    "plant", "music", "robot", "light", "smile", "bread", "chair", "cloud",
)


@dataclass(frozen=True)
class SceneObject:
    """One shape: names for questions, geometry (pixels) for layout answers."""

    shape: str
    color: str
    cx: float
    cy: float
    radius: float  # half the object's extent, pixels
    rgb: tuple[int, int, int]
    rotation: float = 0.0  # degrees
    style: str = "fill"  # fill | outline | hollow
    variant: tuple[float, ...] = ()  # triangles: (kind 0 regular / 1 isosceles / 2 right, half-w, half-h, mirror)


@dataclass(frozen=True)
class Scene:
    """Everything needed to render the picture and to answer any question about it."""

    size: int
    objects: tuple[SceneObject, ...]
    background: dict = field(default_factory=dict)
    word: str | None = None  # lowercase; rendered in ``word_case``
    word_box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    word_style: dict = field(default_factory=dict)
    render_seed: int = 0

    def key(self) -> str:
        """A canonical string of the scene, for disjointness checks between splits."""
        parts = [f"{o.color}-{o.shape}@{o.cx:.2f},{o.cy:.2f},{o.radius:.2f}" for o in self.objects]
        return f"{self.size}|{';'.join(sorted(parts))}|{self.word}|{self.background}|{self.render_seed}"

    def to_dict(self) -> dict:
        """JSON-able description (stored with test samples so scoring can see the truth)."""
        return {
            "size": self.size,
            "objects": [{"shape": o.shape, "color": o.color, "cx": round(o.cx, 1), "cy": round(o.cy, 1),
                         "radius": round(o.radius, 1)} for o in self.objects],
            "word": self.word,
        }

    def pairs(self) -> set[tuple[str, str]]:
        return {(o.color, o.shape) for o in self.objects}


def sample_color(rng: random.Random, name: str) -> tuple[int, int, int]:
    """An RGB value clearly read as ``name``: a jittered hue band, or a textbook value."""
    if rng.random() < 0.3:
        return rng.choice(_CANONICAL[name])
    hue, jitter, (s0, s1), (v0, v1) = _HUE_BANDS[name]
    h = ((hue + rng.uniform(-jitter, jitter)) % 360.0) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return int(r * 255), int(g * 255), int(b * 255)


def _neutral(rng: random.Random, lo: float = 0.0, hi: float = 1.0) -> tuple[int, int, int]:
    """A low-saturation colour (grey, off-white, faint tint): never mistaken for a named colour."""
    h = rng.random()
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.0, 0.12), rng.uniform(lo, hi))
    return int(r * 255), int(g * 255), int(b * 255)


def _sample_background(rng: random.Random) -> dict:
    kind = rng.choices(("solid", "gradient", "noise", "texture"), weights=(4, 3, 2, 2))[0]
    light = rng.random() < 0.75  # mostly light backgrounds, some dark
    lo, hi = (0.78, 1.0) if light else (0.08, 0.35)
    bg = {"kind": kind, "a": _neutral(rng, lo, hi)}
    if kind == "gradient":
        bg["b"] = _neutral(rng, lo, hi)
        bg["angle"] = rng.uniform(0, 360)
    elif kind == "noise":
        bg["sigma"] = rng.uniform(4, 18)
        bg["seed"] = rng.getrandbits(32)
    elif kind == "texture":
        bg["pattern"] = rng.choice(("stripes", "checker", "dots", "grid"))
        bg["period"] = rng.randint(6, 18)
        bg["contrast"] = rng.uniform(8, 22)
        bg["angle"] = rng.choice((0, 45, 90, 135))
    return bg


def sample_scene(
    rng: random.Random,
    size: int,
    *,
    allowed_pairs: list[tuple[str, str]],
    n_objects: int | None = None,
    with_word: bool | None = None,
    must_include: tuple[str, str] | None = None,
    fonts: tuple[str, ...] = (),
    random_words: float = 0.0,
) -> Scene:
    """Sample a layout: 1-5 non-overlapping objects with distinct (colour, shape), maybe a word.

    ``allowed_pairs`` is where the train/test split of colour×shape combinations is
    enforced; ``must_include`` puts one given pair in the scene (held-out test items).
    ``fonts`` (TrueType paths) and ``random_words`` (the share of made-up words) widen
    the reading task; at their defaults ``rng`` is drawn exactly as before.
    """
    if with_word is None:
        with_word = rng.random() < 0.35
    if n_objects is None:
        n_objects = rng.choices((1, 2, 3, 4, 5, 6), weights=(20, 25, 21, 15, 12, 7))[0]
    background = _sample_background(rng)
    word = word_box = None
    word_style: dict = {}
    occupied: list[tuple[float, float, float, float]] = []  # boxes shapes must avoid
    if with_word:
        word = random_word(rng) if random_words and rng.random() < random_words else rng.choice(WORDS)
        word_style = _sample_word_style(rng, size, dark_background=sum(background["a"]) < 384)
        if fonts:  # None = the built-in font, which stays one of the choices
            word_style["font"] = rng.choice((None, *fonts))
        w, h = _word_extent(word_style, word)
        x0 = rng.uniform(0.04 * size, max(0.04 * size, size * 0.96 - w))
        y0 = rng.uniform(0.04 * size, max(0.04 * size, size * 0.96 - h))
        word_box = (x0, y0, x0 + w, y0 + h)
        occupied.append(word_box)

    chosen: list[tuple[str, str]] = [must_include] if must_include else []
    pool = [p for p in allowed_pairs if p not in chosen]
    rng.shuffle(pool)
    chosen += pool[: max(0, n_objects - len(chosen))]

    # Bigger objects when there are few of them; rejection-sample non-overlapping positions.
    objects: list[SceneObject] = []
    scale = {1: (0.12, 0.26), 2: (0.10, 0.19), 3: (0.09, 0.16), 4: (0.08, 0.14), 5: (0.07, 0.12), 6: (0.065, 0.11)
             }[len(chosen)]
    for color, shape in chosen:
        for _attempt in range(60):
            r = rng.uniform(*scale) * size
            cx = rng.uniform(r + 0.03 * size, size - r - 0.03 * size)
            cy = rng.uniform(r + 0.03 * size, size - r - 0.03 * size)
            box = (cx - r, cy - r, cx + r, cy + r)
            gap = 0.04 * size
            if all(math.hypot(cx - o.cx, cy - o.cy) > r + o.radius + gap for o in objects) and not any(
                _boxes_overlap(box, b, gap / 2) for b in occupied
            ):
                break
        else:
            continue  # no room: fewer objects (answers are computed from what is placed)
        style = rng.choices(("fill", "outline", "hollow"), weights=(62, 30, 8))[0]
        rot = _sample_rotation(rng, shape)
        variant: tuple[float, ...] = ()
        if shape == "triangle" and rng.random() < 0.4:  # not only equilateral: isosceles and right triangles
            variant = (rng.choice((1.0, 2.0)), rng.uniform(0.65, 0.9), rng.uniform(0.6, 0.8), rng.choice((-1.0, 1.0)))
            rot = rng.choice((0.0, 0.0, 180.0, rng.uniform(-20, 20)))
        objects.append(SceneObject(shape, color, cx, cy, r, sample_color(rng, color), rot, style, variant))
    if not objects or (must_include and (objects[0].color, objects[0].shape) != must_include):
        # Always room for one object when the scene is empty; retry with fewer objects.
        return sample_scene(rng, size, allowed_pairs=allowed_pairs, n_objects=max(1, n_objects - 1),
                            with_word=with_word, must_include=must_include)
    return Scene(size=size, objects=tuple(objects), background=background, word=word,
                 word_box=word_box, word_style=word_style, render_seed=rng.getrandbits(32))


def _sample_rotation(rng: random.Random, shape: str) -> float:
    if shape == "square":
        return rng.choice((0.0, 0.0, rng.uniform(-18, 18)))  # never near 45°: that would be a diamond
    if shape == "triangle":
        return rng.choice((0.0, 180.0, rng.uniform(-25, 25), rng.uniform(0, 360)))
    return rng.uniform(0, 360)


def _boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], pad: float) -> bool:
    return not (a[2] + pad < b[0] or b[2] + pad < a[0] or a[3] + pad < b[1] or b[3] + pad < a[1])


def _sample_word_style(rng: random.Random, size: int, dark_background: bool) -> dict:
    """Word style with guaranteed contrast: light text on dark backgrounds and vice versa."""
    if rng.random() < 0.7:
        if dark_background:
            fill = (255, 255, 255) if rng.random() < 0.5 else _neutral(rng, 0.85, 1.0)
        else:
            fill = (0, 0, 0) if rng.random() < 0.5 else _neutral(rng, 0.0, 0.3)
    else:  # a coloured word, only in a colour that stands out from the background (no yellow on white)
        fill = (255, 255, 255) if dark_background else (0, 0, 0)
        for _ in range(8):
            candidate = sample_color(rng, rng.choice(COLORS))
            lum = 0.299 * candidate[0] + 0.587 * candidate[1] + 0.114 * candidate[2]
            if (lum > 150) if dark_background else (lum < 130):
                fill = candidate
                break
    return {
        "font_size": int(rng.uniform(0.11, 0.19) * size),
        "case": rng.choices(("upper", "lower", "title"), weights=(4, 4, 2))[0],
        "fill": fill,
        "stroke": rng.choice((0, 0, 0, 1)),
        "angle": rng.choice((0.0, 0.0, rng.uniform(-8, 8))),
        "stretch": rng.choice((1.0, 1.0, rng.uniform(0.8, 1.25))),  # narrower / wider letters
        "shear": rng.choice((0.0, 0.0, 0.0, rng.uniform(-0.25, 0.25))),  # italic-like slant
    }


_FONTS: dict[tuple[str | None, int], ImageFont.FreeTypeFont] = {}
_VOWELS, _CONSONANTS = "aeiou", "bcdfghjklmnprstvwyz"


def random_word(rng: random.Random) -> str:
    """A made-up word of 3-7 letters, consonants and vowels alternating (so it tokenizes like a word)."""
    n = rng.randint(3, 7)
    start = rng.random() < 0.5
    return "".join(rng.choice(_VOWELS if (i % 2 == 0) == start else _CONSONANTS) for i in range(n))


def _font(size: int, path: str | None = None) -> ImageFont.FreeTypeFont:
    """The built-in scalable font (``path`` None) or a TrueType file, at ``size`` px (cached)."""
    if (path, size) not in _FONTS:
        _FONTS[path, size] = ImageFont.load_default(size=size) if path is None else ImageFont.truetype(path, size)
    return _FONTS[path, size]


def check_fonts(paths: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The given font files, each checked to load, as absolute paths (a clear error names a bad one)."""
    checked = []
    for path in paths:
        try:
            ImageFont.truetype(str(path), 12)
        except OSError as exc:
            raise ValueError(f"font {path} cannot be loaded ({exc}); give TrueType/OpenType files (.ttf, .otf)") from None
        checked.append(str(Path(path).resolve()))
    return tuple(checked)


def _cased(word: str, case: str) -> str:
    return word.upper() if case == "upper" else word.title() if case == "title" else word


def _word_extent(style: dict, word: str) -> tuple[float, float]:
    font = _font(style["font_size"], style.get("font"))
    x0, y0, x1, y1 = font.getbbox(_cased(word, style["case"]), stroke_width=style["stroke"])
    w, h = (x1 - x0) * style.get("stretch", 1.0), y1 - y0
    pad = 2 + abs(style["angle"]) / 8 * 0.15 * w + abs(style.get("shear", 0.0)) * h
    return w + 2 * pad, h + 2 * pad


# --------------------------------------------------------------------------------------- rendering


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` (deterministic: rendering randomness comes from ``scene.render_seed``)."""
    rng = random.Random(scene.render_seed)
    size = scene.size
    # Drawing resolution relative to the output: 1 = aliased edges, >1 anti-aliased, <1 soft (upscaled)
    ss = rng.choices((1.0, 2.0, 3.0, rng.uniform(0.55, 0.9), rng.uniform(1.2, 1.8)), weights=(2, 5, 2, 1, 1))[0]
    canvas = _background(scene.background, max(8, round(size * ss)))
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_object(draw, obj, ss, rng)
    if canvas.size != (size, size):
        canvas = canvas.resize((size, size), rng.choice((Image.Resampling.LANCZOS, Image.Resampling.BILINEAR,
                                                          Image.Resampling.BOX, Image.Resampling.BICUBIC)))
    if scene.word:
        _draw_word(canvas, scene)
    if rng.random() < 0.12:  # JPEG artefacts, as in pictures saved by other tools
        from io import BytesIO

        buf = BytesIO()
        canvas.save(buf, format="JPEG", quality=rng.randint(55, 92))
        canvas = Image.open(BytesIO(buf.getvalue())).convert("RGB")
    return canvas


def _background(bg: dict, n: int) -> Image.Image:
    a = np.array(bg["a"], dtype=np.float32)
    kind = bg["kind"]
    if kind == "solid":
        return Image.new("RGB", (n, n), tuple(int(v) for v in bg["a"]))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)  # (n, n) each
    if kind == "gradient":
        t = math.radians(bg["angle"])
        proj = xx * math.cos(t) + yy * math.sin(t)  # (n, n)
        proj = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
        img = a + (np.array(bg["b"], dtype=np.float32) - a) * proj[..., None]  # (n, n, 3)
    elif kind == "noise":
        gen = np.random.default_rng(bg["seed"])
        noise = gen.normal(0.0, bg["sigma"], size=(n, n, 1)).astype(np.float32)  # grey noise: no hue
        img = a + noise
    else:  # texture: a faint periodic pattern
        period = bg["period"] / n
        t = math.radians(bg["angle"])
        u = xx * math.cos(t) + yy * math.sin(t)
        v = -xx * math.sin(t) + yy * math.cos(t)
        pattern = bg["pattern"]
        if pattern == "stripes":
            m = (np.floor(u / period) % 2).astype(np.float32)
        elif pattern == "checker":
            m = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
        elif pattern == "dots":
            du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
            m = (du * du + dv * dv < 0.06).astype(np.float32)
        else:
            m = (((u / period) % 1 < 0.12) | ((v / period) % 1 < 0.12)).astype(np.float32)
        sign = -1.0 if a.mean() > 128 else 1.0
        img = a + sign * bg["contrast"] * m[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _polygon(obj: SceneObject, ss: float) -> list[tuple[float, float]]:
    cx, cy, r = obj.cx * ss, obj.cy * ss, obj.radius * ss
    rot = math.radians(obj.rotation)
    if obj.shape == "square":
        radii, n, start = [r * 1.0] * 4, 4, math.pi / 4  # corners at r: side = r*sqrt(2)
    elif obj.shape == "triangle":
        radii, n, start = [r * 1.05] * 3, 3, -math.pi / 2
    elif obj.shape == "hexagon":
        radii, n, start = [r] * 6, 6, 0.0
    elif obj.shape == "star":
        radii, n, start = [r * 1.05, r * 0.45] * 5, 10, -math.pi / 2
    else:
        raise ValueError(obj.shape)
    pts = []
    for i, rad in enumerate(radii):
        ang = start + rot + 2 * math.pi * i / n
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    if obj.shape == "triangle" and obj.variant:  # isosceles / right triangle in a box, then rotated
        kind, hw, hh, mirror = obj.variant
        hw, hh = hw * r, hh * r
        local = [(0.0, -hh), (-hw, hh), (hw, hh)] if kind == 1 else [(-hw * mirror, -hh), (-hw * mirror, hh),
                                                                       (hw * mirror, hh)]
        mx, my = sum(x for x, _ in local) / 3, sum(y for _, y in local) / 3  # centroid on (cx, cy): inside
        c, s_ = math.cos(rot), math.sin(rot)
        return [(cx + (x - mx) * c - (y - my) * s_, cy + (x - mx) * s_ + (y - my) * c) for x, y in local]
    if obj.shape == "triangle":  # centre the triangle's bounding box on (cx, cy): looks placed, not shifted
        ys = [p[1] for p in pts]
        dy = cy - (min(ys) + max(ys)) / 2
        pts = [(x, y + dy) for x, y in pts]
    return pts


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, ss: float, rng: random.Random) -> None:
    width = max(1, round(rng.uniform(1.0, 2.5) * ss))
    fill: tuple[int, int, int] | None = obj.rgb
    outline = None
    if obj.style == "outline":
        dark = rng.random() < 0.7
        outline = tuple(int(c * 0.55) for c in obj.rgb) if dark else (0, 0, 0)
    elif obj.style == "hollow":
        fill, outline = None, obj.rgb
        thick = (0.10, 0.14) if obj.shape == "star" else (0.18, 0.28)  # thick star outlines self-intersect
        width = int(max(2 * ss, round(obj.radius * ss * rng.uniform(*thick))))
    if obj.shape == "circle":
        r = obj.radius * ss * 0.95
        box = (obj.cx * ss - r, obj.cy * ss - r, obj.cx * ss + r, obj.cy * ss + r)
        draw.ellipse(box, fill=fill, outline=outline, width=width if outline else 0)
    else:
        draw.polygon(_polygon(obj, ss), fill=fill, outline=outline, width=width if outline else 0)


def _draw_word(canvas: Image.Image, scene: Scene) -> None:
    style = scene.word_style
    text = _cased(scene.word or "", style["case"])
    font = _font(style["font_size"], style.get("font"))
    x0, y0, x1, y1 = scene.word_box or (0, 0, 0, 0)
    stroke_fill = (255, 255, 255) if sum(style["fill"]) < 384 else (0, 0, 0)
    box = (int(x1 - x0) + 1, int(y1 - y0) + 1)
    stretch, shear = style.get("stretch", 1.0), style.get("shear", 0.0)
    # Draw unstretched on a layer wide enough for the plain text, then map it onto the word box:
    # output (x, y) samples input (x / stretch + shear * (y - h/2), y) — wider/narrower letters and a slant.
    layer = Image.new("RGBA", (int(box[0] / stretch) + 1, box[1]), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    d.text((layer.width / 2, layer.height / 2), text, font=font, fill=tuple(style["fill"]) + (255,),
           anchor="mm", stroke_width=style["stroke"], stroke_fill=stroke_fill + (255,))
    if stretch != 1.0 or shear:
        h2 = layer.height / 2
        layer = layer.transform(box, Image.Transform.AFFINE, (1 / stretch, shear, -shear * h2, 0, 1, 0),
                                resample=Image.Resampling.BICUBIC)
    if style["angle"]:
        layer = layer.rotate(style["angle"], resample=Image.Resampling.BICUBIC, expand=False)
    canvas.paste(layer, (int(x0), int(y0)), layer)
