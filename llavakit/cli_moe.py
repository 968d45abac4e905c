"""``llavakit upcycle`` and ``llavakit convert moe-llava``: MoE-LLaVA commands (thin; logic in checkpoints/).

``convert`` is a command group so other released formats can join it later
(``llavakit convert <format> SRC --out DIR``); ``convert-moe`` is kept as a
hidden alias of ``convert moe-llava`` for scripts written before the group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llavakit.cli import app, err, friendly_errors, out

convert_app = typer.Typer(help="Convert released checkpoints of other projects into llavakit's format.",
                          no_args_is_help=True)
app.add_typer(convert_app, name="convert")


@app.command()
@friendly_errors
def upcycle(
    dense: Annotated[str, typer.Argument(help="Dense (stage-2) LLaVA: a local directory or a hub id.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the MoE-LLaVA to.")],
    experts: Annotated[int, typer.Option(help="Experts per MoE layer.")] = 4,
    top_k: Annotated[int, typer.Option(help="Experts each token is routed to.")] = 2,
    layers: Annotated[str, typer.Option(
        help="Which layers get MoE: sparse (every other), first_half, second_half, dense, or indices like 0,2,5.")
    ] = "sparse",
    seed: Annotated[int, typer.Option(help="Seed for the router initialisation.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace the output directory if it exists.")] = False,
) -> None:
    """Turn a dense LLaVA into an untrained MoE-LLaVA (every expert a copy of its layer's FFN)."""
    from llavakit.checkpoints.upcycle import parse_layers
    from llavakit.checkpoints.upcycle import upcycle as upcycle_checkpoint

    with err.status("upcycling..."):
        path = upcycle_checkpoint(dense, out_dir, experts, top_k, parse_layers(layers), seed=seed, force=force)
    out.print(f"wrote {path}")


@convert_app.command("moe-llava")
@friendly_errors
def convert_moe(
    src: Annotated[str, typer.Argument(help="Released MoE-LLaVA (Phi2 / StableLM / Qwen): directory or hub id.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the llavakit MoE-LLaVA to.")],
    vision: Annotated[str | None, typer.Option(
        help="Its CLIP vision tower: directory or hub id (default: the config's mm_image_tower).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="HF-format tokenizer of the LM, if SRC has none.")] = None,
    force: Annotated[bool, typer.Option(help="Replace the output directory if it exists.")] = False,
) -> None:
    """Convert a released MoE-LLaVA checkpoint (DeepSpeed MoE layout) into llavakit's moe_llava format."""
    from llavakit.checkpoints.moe_convert import convert_moe_llava

    with err.status("converting..."):
        path = convert_moe_llava(src, vision, out_dir, tokenizer=tokenizer, force=force)
    out.print(f"wrote {path}")


app.command("convert-moe", hidden=True)(convert_moe)  # the pre-group spelling, kept for old scripts
