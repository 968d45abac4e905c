"""``llavakit data ...``: dataset tools (synthetic shapes-world generator, validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llavakit.cli import app, friendly_errors, out

data_app = typer.Typer(help="Data sets: generate shapes world, check a training file.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command()
@friendly_errors
def shapes(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write images/ and the split files to.")],
    train: Annotated[int, typer.Option(help="Training samples (one scene each).")] = 2000,
    val: Annotated[int, typer.Option(help="Validation samples.")] = 200,
    test: Annotated[int, typer.Option(help="Test samples (single questions, held-out combinations).")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same data set.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 160,
    workers: Annotated[int, typer.Option(help="Worker processes (output does not depend on it).")] = 1,
    force: Annotated[bool, typer.Option(help="Write into a non-empty output directory.")] = False,
) -> None:
    """Generate the shapes-world visual-QA set (LLaVA JSON and HF messages JSONL)."""
    from llavakit.data.shapes import ShapesConfig, generate_shapes

    cfg = ShapesConfig(train=train, val=val, test=test, seed=seed, image_size=image_size)
    summary = generate_shapes(out_dir, cfg, workers=workers, force=force, progress=True)
    for split, info in summary["splits"].items():
        fams = ", ".join(f"{k} {v}" for k, v in sorted(info["families"].items()))
        out.print(f"{split:>5}: {info['samples']} samples, {info['questions']} questions "
                  f"({info['heldout_samples']} with held-out pairs) — {fams}")
    out.print(f"wrote {out_dir}/{{train,val,test}}.json (LLaVA) and .jsonl (HF messages), images/ and dataset.json")
