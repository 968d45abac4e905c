"""``llavakit eval``: accuracy per question family, side by side across precisions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llavakit.cli import app, err, friendly_errors, out


@app.command("eval")
@friendly_errors
def eval_cmd(
    model: Annotated[list[str], typer.Argument(help="HF-format LLaVA directory or OpenVINO export; several "
                                                    "(e.g. dense and MoE) give side-by-side columns.")],
    data: Annotated[Path, typer.Option(help="Test file: LLaVA JSON or HF messages (e.g. shapes test.json).")],
    backend: Annotated[str, typer.Option(help="openvino, llamacpp (the LM in llama.cpp; needs the bench extra) "
                                              "or torch.")] = "openvino",
    weights: Annotated[str, typer.Option(help="Comma-separated precisions: fp32, fp16, int8, int4; with --backend "
                                              "llamacpp the LM's GGUF type: q4_k_m, q4_0, q8_0, ... (HF checkpoints "
                                              "are exported once per precision; an export runs as it is).")] = "fp32",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate the first N questions only.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Answer length (default 12; captions 64).")] = None,
    calibration: Annotated[
        Optional[str], typer.Option(help="Folder of images, LLaVA JSON, 'shapes' (rendered scenes) or 'synthetic' "
                                         "to calibrate on (default: the domain the model declares, as nano and "
                                         "budget do; else synthetic).")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="OpenVINO: CPU, GPU, ...; torch: cpu, cuda.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write scores and predictions here.")] = None,
) -> None:
    """Accuracy per question family and overall (greedy answers), one column per model and precision."""
    from rich.progress import Progress

    from llavakit.eval.accuracy import evaluate, write_json

    precisions = [w.strip() for w in weights.split(",") if w.strip()]
    with Progress(console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        report = evaluate(model, data, backend=backend, precisions=precisions, limit=limit,
                          max_new_tokens=max_new_tokens, calibration=calibration, device=device,
                          on_progress=on_progress)
    out.print(report.table())
    if json_out:
        write_json(report, json_out)
        out.print(f"wrote {json_out}")
