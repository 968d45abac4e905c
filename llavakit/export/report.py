"""Show what an export produced: each part's precision, size on disk and time taken."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from llavakit.export import layout


def print_report(model_dir: Path, console: Console) -> None:
    """Print the table recorded in ``llavakit_export.json``."""
    report = json.loads((Path(model_dir) / layout.EXPORT_REPORT).read_text())
    table = Table(title=f"exported {model_dir}")
    for column in ("part", "precision", "size", "time"):
        table.add_column(column)
    for name, part in report["parts"].items():
        size = f"{part['bytes'] / 2**20:.1f} MiB" if "bytes" in part else ""
        table.add_row(name, part.get("precision", ""), size, f"{part['seconds']:.1f} s")
    console.print(table)
