"""Export a HF checkpoint once and reuse it: ``Pipeline("hf-dir")`` runs on OpenVINO without a manual step.

The cache key is the source directory plus the size and modification time of
its files and the export options, so editing or retraining the checkpoint
makes a fresh export, and two precisions of one model live side by side.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from llavakit.checkpoints.demo import cache_dir
from llavakit.export import layout


def export_key(source: Path, options: object) -> str:
    """A short digest naming one (source files, options) combination."""
    digest = hashlib.sha1(str(source.resolve()).encode())
    for path in sorted(source.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(repr(sorted(asdict(options).items())).encode())
    return digest.hexdigest()[:16]


def ensure_exported(source: Path, weights: str = "int4") -> Path:
    """The cached OpenVINO export of ``source`` at ``weights`` precision, exporting it if needed."""
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino

    options = CompressionOptions(weights=weights)
    target = cache_dir() / "exports" / f"{source.name}-{weights}-{export_key(source, options)}"
    if not layout.is_exported(target):
        import logging

        import nncf

        nncf.set_log_level(logging.WARNING)  # an export on first use is a side job: no statistics tables
        export_openvino(source, target, options, force=True)
    return target
