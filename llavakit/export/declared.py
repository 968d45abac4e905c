"""What a model directory says about its own export: its image domain and per-precision option overrides.

A model may carry ``llavakit_build.json`` (the default models ``nano`` and ``budget`` do):

    "calibration": "shapes"          INT8 vision (and AWQ / scale estimation) calibrate on rendered
                                     shapes-world scenes instead of generic synthetic ones
    "export": {"int4": {...}}        CompressionOptions fields applied when that precision is exported:
                                     on first use (``Pipeline(dir, weights=...)``), by ``llavakit eval``
                                     and by ``llavakit export`` (where a flag given wins; ``export_recipe``)
    "image_fit": "pad-border"        a picture that is not square is padded to a square with its border
                                     colour before the image processor, instead of being centre-cropped by
                                     it (``runtime/image_fit.py``; the export carries this file along)

``llavakit train`` writes the file for what it trains: the base model's declarations carry over, and a model
trained on ``llavakit data shapes`` output declares shapes world (``trained_build_info``).

Why: the right calibration images and INT4 recipe depend on the model. For budget, generic calibration
cost 3 points at INT8 and the notebook INT4 defaults 6 (benchmarks/quantization.md); the model's own
declaration fixes that for every user without flags.
Kept free of numpy/torch imports: it is read on the cache-hit path.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The file in a model directory that holds these declarations.
BUILD_INFO = "llavakit_build.json"
#: Calibration sources by name (``--calibration``): rendered shapes-world scenes, the generic synthetic ones.
SHAPES = "shapes"
SYNTHETIC = "synthetic"


def build_info(model_dir: str | Path) -> dict:
    """The model's ``BUILD_INFO`` as a dict; {} when absent or unreadable (a declaration is optional)."""
    try:
        info = json.loads((Path(model_dir) / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def write_build_info(model_dir: str | Path, info: dict) -> None:
    """Write ``BUILD_INFO`` into ``model_dir`` (the one writer: build, export of nano, training)."""
    (Path(model_dir) / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")


def default_calibration(model_dir: str | Path) -> str | None:
    """The calibration source the model declares ("shapes", a folder, a JSON file), else None."""
    value = build_info(model_dir).get("calibration")
    return value if isinstance(value, str) and value else None


def declared_options(model_dir: str | Path, weights: str) -> dict:
    """CompressionOptions overrides the model declares for exports at ``weights`` precision ({} if none)."""
    export = build_info(model_dir).get("export")
    options = export.get(weights) if isinstance(export, dict) else None
    return dict(options) if isinstance(options, dict) else {}


def export_recipe(model_dir: str | Path, weights: str, given: dict | None = None) -> tuple[dict, dict]:
    """CompressionOptions fields for an export at ``weights``, and the part of them the model declared.

    Order of precedence: what the caller gave (not None) > the model's declared recipe > CompressionOptions'
    defaults. Why: budget at INT4 loses 6.7 points with the notebook defaults and 1.1 with its declared
    AWQ + group-32 recipe (benchmarks/quantization.md); a user who types ``--weights int4`` should get the
    latter without knowing the recipe, and still be able to override any knob.
    """
    explicit = {k: v for k, v in (given or {}).items() if v is not None}
    declared = {k: v for k, v in declared_options(model_dir, weights).items() if k not in explicit}
    return {"weights": weights, **declared, **explicit}, declared


def trained_build_info(base_model: str | Path, data: str | Path) -> dict:
    """The declarations of a model trained from ``base_model`` on ``data`` ({} when there is nothing to say).

    The base model's calibration, export recipe and image fit carry over (fine-tuning nano keeps nano's; the
    image fit belongs to the vision tower, which fine-tuning keeps); data written
    by ``llavakit data shapes`` (its ``dataset.json`` says ``"generator": "llavakit shapes"``) makes it shapes.
    """
    from llavakit.data.shapes.generate import SHAPES_GENERATOR

    info = {k: v for k, v in build_info(base_model).items() if k in ("calibration", "export", "image_fit")}
    path = Path(data)
    summary = (path if path.is_dir() else path.parent) / "dataset.json"
    try:
        generator = json.loads(summary.read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        generator = None
    if generator == SHAPES_GENERATOR:
        info["calibration"] = SHAPES
    return info
