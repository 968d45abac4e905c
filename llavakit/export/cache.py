"""Export a HF checkpoint once and reuse it: ``Pipeline("hf-dir")`` runs on OpenVINO without a manual step.

The cache key is the source directory plus the size and modification time of
its files and the export options, so editing or retraining the checkpoint
makes a fresh export, and two precisions of one model live side by side.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from llavakit.checkpoints.demo import cache_dir
from llavakit.export import layout
from llavakit.export.declared import export_recipe

#: Bump when the export's defaults or layout change, so cached exports are redone.
EXPORT_FORMAT = 2  # 2: models that declare a calibration domain are calibrated on it


def export_key(source: Path, weights: str) -> str:
    """A short digest naming one (source files, precision) combination.

    Kept free of torch/NNCF imports: a cache hit must be as cheap as loading an export.
    """
    digest = hashlib.sha1(f"{source.resolve()}|{weights}|{EXPORT_FORMAT}".encode())
    for path in sorted(source.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def ensure_exported(source: Path, weights: str = "int4", lora_slots: bool = False) -> Path:
    """The cached OpenVINO export of ``source`` at ``weights`` precision, exporting it if needed.

    ``lora_slots``: the export runtime LoRA adapters need (``export/lora.py``), cached separately.
    """
    flavour = f"{weights}-lora" if lora_slots else weights
    target = cache_dir() / "exports" / f"{source.name}-{flavour}-{export_key(source, flavour)}"
    if not layout.is_exported(target):
        import logging

        import nncf

        from llavakit.export.compress import CompressionOptions
        from llavakit.export.exporter import export_openvino

        recipe, _ = export_recipe(source, weights, {"vision": "int8_weights"} if lora_slots else None)
        options = CompressionOptions(**recipe)  # the model's own recipe for this precision, if it declares one
        nncf.set_log_level(logging.WARNING)  # an export on first use is a side job: no statistics tables
        export_openvino(source, target, options, force=True, lora_slots=lora_slots)
    return target
