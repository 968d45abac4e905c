"""Supervised pretraining of an in-house vision tower on shapes world, from the scene descriptions.

Why: trained only through the LM's next-token loss, nano's tiny ViT (from
scratch) learnt colours and positions but not shape identity or reading (16%
and 1% on the test split after 15 500 steps): the answer tokens give the tower
a weak, indirect signal, and the LM learns priors ("red -> circle") instead,
which the held-out colour x shape pairs then punish. The generator knows, for
every pixel region, which object is there, so the tower can be taught directly:
each *patch token* is trained to say the colour and shape of the object it
covers (or "none") and whether it shows text; the mean of the patch tokens to
say the word and how many objects of each shape / colour the scene holds. The
LLaVA stages then only have to learn to *read* these tokens.

Design decisions:

* **Factorised labels**: colour and shape are separate heads, never a joint
  colour x shape class, so a held-out pair (a red triangle, never in training)
  is just "red" + "triangle", both well known. Held-out pairs are never drawn
  here either (:func:`~llavakit.data.shapes.generate.allowed_pairs`).
* **Linear heads on the tokens the LLaVA sees** (last hidden state, patch
  tokens without CLS, i.e. ``vision_feature_layer=-1`` + "default" strategy):
  what the heads read is then linearly present in exactly the features the
  projector gets. The heads are thrown away afterwards; the tower is saved as a
  plain ``CLIPVisionModel`` directory, so nothing downstream changes.
* **Data lives on the GPU**: scenes are rendered once (a process pool) into one
  uint8 tensor, normalised on the device like the CLIP image processor does.
  No per-step host work, so the step rate is the GPU's, not a data loader's.
  That is also why this is a short plain loop and not the Trainer: it is an
  auxiliary classifier, not a LLaVA stage (those go through ``llavakit.train``).
* **Scenes for robustness**: the same sampler as the QA data (hue bands and
  textbook colours, varied backgrounds, sizes, outline / hollow styles,
  rotated words, JPEG artefacts), a word on half of them.
* **Letters, not only words** (``fonts`` / ``random_words``, off by default):
  the word head is a classifier over the 60 known words, so a tower taught by
  it alone recognises the look of those words in one font. A letter head reads
  up to ``MAX_LETTERS`` letters (position by position) from the text patches, and
  made-up words (which the word head ignores) make letters the only way to
  that loss. Scenes without a word ignore the letter head.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llavakit.data.shapes.generate import HELD_OUT, allowed_pairs
from llavakit.data.shapes.scene import (
    COLORS,
    SHAPES,
    WORDS,
    Scene,
    render,
    sample_scene,
)
from llavakit.errors import LlavakitError

NONE_COLOR = len(COLORS)  # label of a patch with no object
NONE_SHAPE = len(SHAPES)
NONE_WORD = len(WORDS)  # label of a scene without a word
IGNORE = -100  # a target no loss reads (cross_entropy's ignore_index): a made-up word for the word head
MAX_LETTERS = 8  # letters the letter head reads; longer words are cut (the generator's are at most 7)
END = 26  # letter class after the last letter (a-z are 0-25)
MAX_COUNT = 6  # a scene holds at most 6 objects
COUNT_KEYS = (*SHAPES, *COLORS)  # one count head per shape and per colour


@dataclass(frozen=True)
class SceneLabels:
    """Targets of one scene for a ``grid`` x ``grid`` patch layout."""

    color: np.ndarray  # (G, G) int64, 0..5 or NONE_COLOR
    shape: np.ndarray  # (G, G) int64, 0..4 or NONE_SHAPE
    text: np.ndarray  # (G, G) int64, 1 where the word is
    word: int  # index into WORDS, NONE_WORD, or IGNORE for a made-up word
    counts: np.ndarray  # (len(COUNT_KEYS),) int64: objects per shape, then per colour
    letters: np.ndarray  # (MAX_LETTERS,) int64: a-z as 0-25, then END; all IGNORE without a word


def scene_labels(scene: Scene, grid: int) -> SceneLabels:
    """Per-patch and per-scene targets from the scene description (never from pixels).

    A patch belongs to the object whose centre is nearest to the patch centre, if that
    distance is within 0.85 of the object's radius; the patch holding an object's centre
    always belongs to it (small objects still get a token). Text patches are those whose
    centre lies in the word's box.
    """
    patch = scene.size / grid
    centres = (np.arange(grid) + 0.5) * patch  # (G,)
    ys, xs = np.meshgrid(centres, centres, indexing="ij")  # (G, G) each
    color = np.full((grid, grid), NONE_COLOR, dtype=np.int64)
    shape = np.full((grid, grid), NONE_SHAPE, dtype=np.int64)
    best = np.full((grid, grid), np.inf)
    for obj in scene.objects:
        dist = np.hypot(xs - obj.cx, ys - obj.cy) / obj.radius  # (G, G), in radii
        inside = (dist <= 0.85) & (dist < best)
        ci, cj = min(int(obj.cy // patch), grid - 1), min(int(obj.cx // patch), grid - 1)
        inside[ci, cj] = True
        color[inside] = COLORS.index(obj.color)
        shape[inside] = SHAPES.index(obj.shape)
        best = np.where(inside, np.minimum(dist, best), best)
    text = np.zeros((grid, grid), dtype=np.int64)
    if scene.word and scene.word_box:
        x0, y0, x1, y1 = scene.word_box
        text[(xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)] = 1
    counts = np.array([sum(o.shape == s for o in scene.objects) for s in SHAPES]
                      + [sum(o.color == c for o in scene.objects) for c in COLORS], dtype=np.int64)
    word = (WORDS.index(scene.word) if scene.word in WORDS else IGNORE) if scene.word else NONE_WORD
    return SceneLabels(color, shape, text, word, counts, letter_labels(scene.word))


def letter_labels(word: str | None) -> np.ndarray:
    """(MAX_LETTERS,) targets of the letter head: the word's letters, END after them, IGNORE without a word."""
    out = np.full(MAX_LETTERS, IGNORE if not word else END, dtype=np.int64)
    for i, ch in enumerate((word or "")[:MAX_LETTERS]):
        out[i] = ord(ch) - ord("a") if "a" <= ch <= "z" else END
    return out


def _render_one(job: tuple) -> tuple[np.ndarray, SceneLabels]:
    seed, index, size, grid, heldout, fonts, random_words = job
    rng = random.Random(f"vision/{seed}/{'heldout' if heldout else 'train'}/{index}")
    widen = {"fonts": fonts, "random_words": random_words}
    if heldout:  # evaluation scenes: each holds one colour x shape pair never seen in training
        scene = sample_scene(rng, size, allowed_pairs=allowed_pairs("test"), must_include=rng.choice(HELD_OUT),
                             with_word=rng.random() < 0.5, **widen)
    else:
        scene = sample_scene(rng, size, allowed_pairs=allowed_pairs("train"), with_word=rng.random() < 0.5, **widen)
    return np.asarray(render(scene), dtype=np.uint8), scene_labels(scene, grid)


def render_scenes(n: int, *, seed: int = 0, size: int = 160, grid: int = 10, workers: int = 1, heldout: bool = False,
                  fonts: tuple[str, ...] = (), random_words: float = 0.0
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` scenes as uint8 images (N, H, W, 3) and stacked labels.

    Training scenes (default) never hold a held-out colour x shape pair; ``heldout=True`` scenes each hold one
    (for measuring whether the heads generalise to unseen combinations). ``fonts`` / ``random_words``: see
    ``sample_scene`` (the same for the held-out scenes, so their letter accuracy measures what was trained).
    """
    jobs = [(seed, i, size, grid, heldout, tuple(fonts), random_words) for i in range(n)]
    if workers > 1 and n >= 256:
        with get_context("fork").Pool(workers) as pool:
            results = pool.map(_render_one, jobs, chunksize=64)
    else:
        results = [_render_one(j) for j in jobs]
    images = torch.from_numpy(np.stack([r[0] for r in results]))  # (N, H, W, 3) uint8
    labels = {
        "color": torch.from_numpy(np.stack([r[1].color for r in results])),  # (N, G, G)
        "shape": torch.from_numpy(np.stack([r[1].shape for r in results])),  # (N, G, G)
        "text": torch.from_numpy(np.stack([r[1].text for r in results])),  # (N, G, G)
        "word": torch.tensor([r[1].word for r in results]),  # (N,)
        "counts": torch.from_numpy(np.stack([r[1].counts for r in results])),  # (N, K)
        "letters": torch.from_numpy(np.stack([r[1].letters for r in results])),  # (N, MAX_LETTERS)
    }
    return images, labels


class VisionHeads(nn.Module):
    """Linear read-outs of the tower's patch tokens (per patch) and of their mean (per scene)."""

    def __init__(self, hidden: int, grid: int) -> None:
        super().__init__()
        self.color = nn.Linear(hidden, len(COLORS) + 1)
        self.shape = nn.Linear(hidden, len(SHAPES) + 1)
        self.text = nn.Linear(hidden, 2)
        self.word = nn.Linear(hidden, len(WORDS) + 1)
        self.counts = nn.Linear(hidden, len(COUNT_KEYS) * (MAX_COUNT + 1))
        self.grid = grid
        self.row = nn.Linear(hidden, grid)
        self.col = nn.Linear(hidden, grid)
        self.letters = nn.Linear(hidden, MAX_LETTERS * (END + 1))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = tokens.mean(dim=1)  # (B, C)
        text = self.text(tokens)  # (B, P, 2)
        # letters are read from the text patches: their mean, weighted by the text head's own belief
        text_w = text.float().softmax(-1)[..., 1:].detach()  # (B, P, 1), no gradient into the weights
        text_pool = (tokens * text_w).sum(1) / text_w.sum(1).clamp(min=1e-3)  # (B, C)
        return {"letters": self.letters(text_pool).view(tokens.shape[0], MAX_LETTERS, END + 1),  # (B, L, 27)
                "color": self.color(tokens), "shape": self.shape(tokens), "text": text,  # (B, P, k)
                "row": self.row(tokens), "col": self.col(tokens),  # (B, P, G): where the token is
                "word": self.word(pooled),  # (B, W+1)
                "counts": self.counts(pooled).view(tokens.shape[0], len(COUNT_KEYS), MAX_COUNT + 1)}  # (B, K, 7)


def normalise(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W), as CLIPImageProcessor does (rescale 1/255, then mean/std)."""
    x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def head_losses(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                color_ok: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Cross-entropy per head; patch heads weight object / text patches up (most patches are empty).

    ``color_ok`` (B,) bool: False for images whose colours were permuted (augmentation), whose colour
    targets are then unknown: they train every head but the colour ones.
    """
    ce = nn.functional.cross_entropy
    b = labels["color"].shape[0]
    color_t, shape_t, text_t = (labels[k].reshape(b, -1) for k in ("color", "shape", "text"))  # (B, P)
    obj_w = torch.where(color_t == NONE_COLOR, 0.3, 1.0)  # (B, P)
    text_w = torch.where(text_t == 1, 1.0, 0.3)
    ok = torch.ones(b, device=color_t.device) if color_ok is None else color_ok.float()  # (B,)
    grid = labels["color"].shape[1]  # (B, G, G) targets
    pos = torch.arange(grid * grid, device=color_t.device)  # (P,)
    n_shape = len(SHAPES)

    def patch_ce(logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        loss = ce(logits.float().flatten(0, 1), target.flatten(), reduction="none")  # (B*P,)
        return (loss * w.flatten()).sum() / w.sum().clamp(min=1e-6)

    counts = ce(out["counts"].float().flatten(0, 1), labels["counts"].flatten(), reduction="none").view(b, -1)  # (B, K)
    return {
        "color": patch_ce(out["color"], color_t, obj_w * ok[:, None]),
        "shape": patch_ce(out["shape"], shape_t, obj_w),
        "text": patch_ce(out["text"], text_t, text_w),
        "pos": 0.5 * (ce(out["row"].float().flatten(0, 1), (pos // grid).repeat(b))
                      + ce(out["col"].float().flatten(0, 1), (pos % grid).repeat(b))),
        "word": _ce_or_zero(out["word"].float(), labels["word"]),
        **({"letters": _ce_or_zero(out["letters"].float().flatten(0, 1), labels["letters"].flatten())}
           if "letters" in labels else {}),
        "counts": (counts[:, :n_shape].sum() + (counts[:, n_shape:] * ok[:, None]).sum())
        / (b * n_shape + ok.sum() * (counts.shape[1] - n_shape)),
    }


def _ce_or_zero(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not IGNORE; 0 (not NaN) when every one is."""
    loss = nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
    return loss / (target != IGNORE).sum().clamp(min=1)


#: Channel orders for the colour augmentation (index 0 is the identity).
_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def permute_colors(images: torch.Tensor, share: float, gen: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap RGB channels of a ``share`` of the images (B, H, W, 3); returns them and ``color_ok`` (B,).

    Why: in training no triangle is ever red (a held-out pair), so a tower may learn "red, hence not a
    triangle". On channel-swapped images colours are unrelated to shapes, and the shape head must
    rely on form alone; the colour head skips these images (their colour names are unknown).
    """
    b = images.shape[0]
    swap = torch.rand(b, generator=gen) < share  # (B,)
    which = torch.randint(1, len(_PERMS), (b,), generator=gen) * swap  # (B,) 0 = identity
    perms = torch.tensor(_PERMS)[which].to(images.device)  # (B, 3)
    idx = perms[:, None, None, :].expand(-1, images.shape[1], images.shape[2], -1)  # (B, H, W, 3)
    return torch.gather(images, 3, idx), (which == 0).to(images.device)


@torch.no_grad()
def head_accuracy(tower: nn.Module, heads: VisionHeads, images: torch.Tensor, labels: dict[str, torch.Tensor],
                  mean: list[float], std: list[float], batch: int = 512) -> dict[str, float]:
    """Accuracy of each head on held-aside scenes: object patches only for colour / shape, words where present."""
    dev = next(tower.parameters()).device
    hits: dict[str, list[float]] = {k: [0.0, 0.0] for k in ("color", "shape", "word", "letters", "counts", "pos")}
    for i in range(0, images.shape[0], batch):
        x = normalise(images[i: i + batch].to(dev), mean, std)
        lab = {k: v[i: i + batch].to(dev) for k, v in labels.items()}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = heads(tower(pixel_values=x).last_hidden_state[:, 1:])  # (B, P, C) patch tokens
        b = x.shape[0]
        obj = lab["color"].reshape(b, -1) != NONE_COLOR  # (B, P)
        for k in ("color", "shape"):
            pred = out[k].argmax(-1)  # (B, P)
            hits[k][0] += (pred == lab[k].reshape(b, -1))[obj].sum().item()
            hits[k][1] += obj.sum().item()
        has = (lab["word"] != NONE_WORD) & (lab["word"] != IGNORE)
        hits["word"][0] += (out["word"].argmax(-1) == lab["word"])[has].sum().item()
        hits["word"][1] += has.sum().item()
        if "letters" in lab:  # whole words read letter by letter (made-up ones included)
            spelled = lab["letters"][:, 0] != IGNORE  # (B,)
            right = (out["letters"].argmax(-1) == lab["letters"]).all(-1)  # (B,)
            hits["letters"][0] += right[spelled].sum().item()
            hits["letters"][1] += spelled.sum().item()
        hits["counts"][0] += (out["counts"].argmax(-1) == lab["counts"]).all(-1).sum().item()
        hits["counts"][1] += b
        grid = heads.grid
        pos = torch.arange(grid * grid, device=dev)  # (P,)
        hits["pos"][0] += ((out["row"].argmax(-1) == pos // grid) & (out["col"].argmax(-1) == pos % grid)).sum().item()
        hits["pos"][1] += b * grid * grid
    return {k: round(100.0 * h / max(1.0, n), 2) for k, (h, n) in hits.items()}


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 3000
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 150
    seed: int = 0
    log_every: int = 50
    color_swap: float = 0.3  # share of images with swapped RGB channels (shape head only), see permute_colors


def pretrain_vision(vision_dir: str | Path, out_dir: str | Path, images: torch.Tensor, labels: dict[str, torch.Tensor],
                    cfg: PretrainConfig = PretrainConfig(), device: str | None = None,
                    eval_set: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None,
                    other_evals: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None) -> dict:
    """Train the CLIP vision tower in ``vision_dir`` with the scene heads; save the tower to ``out_dir`` and the
    heads beside it (``<out_dir>_heads.safetensors``: not part of the LLaVA, kept to re-score the tower later).

    Returns a summary: the loss curve (every ``log_every`` steps) and, with ``eval_set``, head accuracies;
    ``other_evals`` adds ``accuracy_<name>`` for other held-out sets (e.g. scenes drawn without extra fonts).
    """
    from transformers import AutoImageProcessor, CLIPVisionModel

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    tower = CLIPVisionModel.from_pretrained(vision_dir, dtype=torch.float32).to(dev).train()
    proc = AutoImageProcessor.from_pretrained(vision_dir)
    grid = tower.config.image_size // tower.config.patch_size
    if tuple(images.shape[1:3]) != (tower.config.image_size,) * 2 or labels["color"].shape[1] != grid:
        raise LlavakitError(f"images {tuple(images.shape)} / label grid {labels['color'].shape[1]} do not match the "
                            f"tower ({tower.config.image_size} px, {grid}x{grid} patches)")
    heads = VisionHeads(tower.config.hidden_size, grid).to(dev)
    params = [*tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warm-up, cosine to 0
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    images_dev = images.to(dev)  # (N, H, W, 3) uint8: the whole set on the device
    labels_dev = {k: v.to(dev) for k, v in labels.items()}
    n = images.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    curve, t0 = [], time.time()
    for step in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch,), generator=gen).to(dev)  # (B,)
        raw, color_ok = permute_colors(images_dev[idx], cfg.color_swap, gen)  # (B, H, W, 3), (B,)
        x = normalise(raw, proc.image_mean, proc.image_std)  # (B, 3, H, W)
        lab = {k: v[idx] for k, v in labels_dev.items()}
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = heads(tower(pixel_values=x).last_hidden_state[:, 1:])  # (B, P, C) patch tokens, CLS dropped
        losses = head_losses(out, lab, color_ok)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {"step": step + 1, "loss": round(loss.item(), 4), "lr": lr_at(step),
                   **{k: round(v.item(), 4) for k, v in losses.items()}, "s": round(time.time() - t0, 1)}
            curve.append(row)
            print(json.dumps(row), flush=True)
    tower.eval()
    summary: dict = {"config": cfg.__dict__, "train_scenes": n, "curve": curve, "seconds": round(time.time() - t0, 1)}
    if eval_set is not None:
        summary["accuracy"] = head_accuracy(tower, heads, eval_set[0], eval_set[1], proc.image_mean, proc.image_std)
        k = min(2000, n)  # the same heads on (the first) training scenes, to see the held-out gap
        summary["accuracy_train_scenes"] = head_accuracy(tower, heads, images[:k], {a: v[:k] for a, v in labels.items()},
                                                         proc.image_mean, proc.image_std)
    for name, (other_images, other_labels) in (other_evals or {}).items():
        summary[f"accuracy_{name}"] = head_accuracy(tower, heads, other_images, other_labels, proc.image_mean,
                                                    proc.image_std)
    out = Path(out_dir)
    # Rounded through fp16: the committed towers are fp16, so what the LLaVA stages train on is what ships.
    tower.to(torch.float16).to(torch.float32).save_pretrained(out)
    proc.save_pretrained(out)
    (out / "vision_pretrain.json").write_text(json.dumps(summary, indent=1))
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()},
              str(out.with_name(out.name + "_heads.safetensors")))
    return summary
