"""Where does a model's INT8 / INT4 accuracy go? One OpenVINO export per compression variant, one eval each.

    .venv/bin/python benchmarks/quant_variants.py --model budget --data shapes/test.json --limit 200 \
        --out /tmp/qv [VARIANT ...]

Each variant is a set of ``CompressionOptions`` plus a calibration source ("shapes" = rendered shapes-world
scenes, disjoint from the test split; "synthetic" = the generic scenes; None = the model's declared default). Results (accuracy per family and
every prediction) go to OUT/VARIANT.json; an export already in OUT/VARIANT is reused. Findings for budget:
benchmarks/quantization.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from llavakit.export.declared import SHAPES, SYNTHETIC

VARIANTS: dict[str, tuple[dict, str | None]] = {
    "fp32": (dict(weights="fp32", vision="fp32", text_embeddings="fp32"), None),
    # INT8: which part loses accuracy?
    "int8_synthetic_cal": (dict(weights="int8", vision="int8", text_embeddings="int8"), SYNTHETIC),
    "int8_lm_only": (dict(weights="int8", vision="fp32", text_embeddings="int8"), None),
    "int8_vision_weights": (dict(weights="int8", vision="int8_weights", text_embeddings="int8"), None),
    "int8_shapes_cal": (dict(weights="int8", vision="int8", text_embeddings="int8"), SHAPES),
    # INT4: layout and data-aware corrections
    "int4_default": (dict(weights="int4", vision="int8", text_embeddings="int8"), SYNTHETIC),
    "int4_lm_only": (dict(weights="int4", vision="fp32", text_embeddings="int8"), None),
    "int4_sym_g32": (dict(weights="int4", group_size=32, vision="int8", text_embeddings="int8"), SHAPES),
    "int4_asym_g32": (dict(weights="int4", lm_mode="int4_asym", group_size=32, vision="int8",
                           text_embeddings="int8"), SHAPES),
    "int4_asym_g32_r1": (dict(weights="int4", lm_mode="int4_asym", group_size=32, ratio=1.0, vision="int8",
                              text_embeddings="int8"), SHAPES),
    "int4_awq_se": (dict(weights="int4", vision="int8_weights", text_embeddings="int8", awq=True,
                         scale_estimation=True, calibration_size=64), SHAPES),
    "int4_sym_g32_awq_se": (dict(weights="int4", group_size=32, vision="int8", text_embeddings="int8", awq=True,
                                 scale_estimation=True, calibration_size=64), SHAPES),
    "int4_awq_se_r04": (dict(weights="int4", ratio=0.4, vision="int8", text_embeddings="int8", awq=True,
                             scale_estimation=True, calibration_size=64), SHAPES),
    "int4_g32_awq_se_r04": (dict(weights="int4", group_size=32, ratio=0.4, vision="int8", text_embeddings="int8",
                                 awq=True, scale_estimation=True, calibration_size=64), SHAPES),
    "int4_g32_awq_se_lora": (dict(weights="int4", group_size=32, vision="int8", text_embeddings="int8", awq=True,
                                  scale_estimation=True, lora_correction=True, calibration_size=64), SHAPES),
    "int4_g16_awq_se": (dict(weights="int4", group_size=16, vision="int8", text_embeddings="int8", awq=True,
                             scale_estimation=True, calibration_size=64), SHAPES),
    "int4_g32_awq_lora": (dict(weights="int4", group_size=32, vision="int8", text_embeddings="int8", awq=True,
                               lora_correction=True, calibration_size=64), SHAPES),
}


def run_variant(name: str, source: Path, items: list, out: Path) -> dict:
    """Export ``source`` as variant ``name`` into OUT/name (once) and score it on ``items``."""
    from llavakit.eval.accuracy import pipeline_predictor, score_items
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino
    from llavakit.export.layout import is_exported
    from llavakit.runtime.pipeline import Pipeline

    opts, calibration = VARIANTS[name]
    target = out / name
    start = time.perf_counter()
    if not is_exported(target):
        export_openvino(source, target, CompressionOptions(**opts), calibration=calibration, force=True,
                        show_progress=False)
    seconds = time.perf_counter() - start
    column = score_items(items, pipeline_predictor(Pipeline(target, backend="openvino")), name)
    size = sum(p.stat().st_size for p in target.glob("*.bin"))
    return {"variant": name, "options": opts, "calibration": calibration, "export_s": round(seconds, 1),
            "bin_mb": round(size / 1e6, 1), "accuracy": {k: column.accuracy(k) for k in column.total},
            "predictions": column.predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help=f"default: all of {', '.join(VARIANTS)}")
    parser.add_argument("--model", default="budget")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    import nncf

    from llavakit.checkpoints.resolve import resolve_source
    from llavakit.eval.accuracy import load_items

    nncf.set_log_level(logging.WARNING)
    items = load_items(a.data, a.limit)
    source = resolve_source(a.model, "model")
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.variants or list(VARIANTS):
        result = run_variant(name, source, items, a.out)
        (a.out / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(name, json.dumps({k: round(v, 1) for k, v in result["accuracy"].items()}), flush=True)


if __name__ == "__main__":
    main()
