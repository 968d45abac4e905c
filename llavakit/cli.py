"""The ``llavakit`` command: one thin function per subcommand, nothing else.

Each command parses options, calls one typed library function, and prints.
Errors a user can fix (:class:`LlavakitError`) are printed as one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from llavakit.errors import LlavakitError

app = typer.Typer(
    help="Build, train, compress and chat with LLaVA-family vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console(highlight=False)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn LlavakitError into a one-line message and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except LlavakitError as exc:
            err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _quiet_libraries() -> None:
    """Hide load reports and progress bars from transformers: the CLI reports for itself."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.command()
@friendly_errors
def build(
    vision: Annotated[str, typer.Option(help="CLIP or SigLIP vision model: a local directory or a hub id.")],
    lm: Annotated[str, typer.Option(help="Causal language model: a local directory or a hub id.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the new LLaVA to.")],
    projector: Annotated[str, typer.Option(help="mlp2x_gelu (LLaVA-1.5) or linear (LLaVA-1).")] = "mlp2x_gelu",
    chat_template: Annotated[
        Optional[str], typer.Option(help="'keep' (the LM's own), 'llava'/'vicuna', or a .jinja file.")
    ] = None,
    dtype: Annotated[Optional[str], typer.Option(help="float32, bfloat16 or float16; default: the LM's.")] = None,
    force: Annotated[bool, typer.Option(help="Replace the output directory if it exists.")] = False,
    arch: Annotated[str, typer.Option(help="llava (LLaVA-1.5) or llava-next (LLaVA-1.6, AnyRes tiles).")] = "llava",
    grid_pinpoints: Annotated[Optional[str], typer.Option(
        help="llava-next: tile grids as JSON [[height, width], ...] in pixels (multiples of the tower's image "
             "size); default: LLaVA-1.6's published grid scaled to the tower.")] = None,
) -> None:
    """Assemble a LLaVA-1.5 (or LLaVA-NeXT) from a vision encoder, a language model and a fresh projector."""
    import json

    from llavakit.checkpoints.build import build_llava
    from llavakit.errors import BuildError

    try:
        pinpoints = json.loads(grid_pinpoints) if grid_pinpoints is not None else None
    except ValueError as exc:
        raise BuildError(f"--grid-pinpoints {grid_pinpoints!r} is not JSON like [[336, 672], [672, 336]]: {exc}") from exc
    with err.status("building..."):
        path = build_llava(vision, lm, out_dir, projector=projector, chat_template=chat_template, dtype=dtype,
                           force=force, arch=arch, grid_pinpoints=pinpoints)
    out.print(f"wrote {path}")


@app.command()
@friendly_errors
def export(
    model: Annotated[str, typer.Argument(help="HF-format LLaVA: a local directory or a hub id.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the OpenVINO model to.")],
    weights: Annotated[str, typer.Option(help="Language model precision: fp32, fp16, int8 or int4.")] = "int4",
    lm_mode: Annotated[Optional[str], typer.Option(help="INT4 flavour: int4_sym (default) or int4_asym.")] = None,
    group_size: Annotated[Optional[int], typer.Option(help="INT4 group size (-1: per channel; default 64).")] = None,
    ratio: Annotated[Optional[float], typer.Option(help="Share of LM layers in INT4, the rest INT8 (default 0.6).")
                     ] = None,
    all_layers: Annotated[Optional[bool], typer.Option(help="Also compress embeddings and LM head to INT4.")] = None,
    awq: Annotated[Optional[bool], typer.Option(help="Activation-aware INT4 (uses calibration data).")] = None,
    scale_estimation: Annotated[Optional[bool], typer.Option(help="Scale estimation (uses calibration data).")
                                ] = None,
    gptq: Annotated[Optional[bool], typer.Option(help="GPTQ error feedback for INT4 (uses calibration data; slow).")
                    ] = None,
    lora_correction: Annotated[Optional[bool], typer.Option(
        help="NNCF LoRA correction of the INT4 error (uses calibration data; slow; not with --gptq).")] = None,
    vision: Annotated[Optional[str], typer.Option(
        help="Vision encoder: int8 (PTQ; the default), int8_weights (the default with --lora-slots), fp16 or fp32.")
    ] = None,
    text_embeddings: Annotated[Optional[str], typer.Option(help="Text embeddings: int8 (default), fp16 or fp32.")
                               ] = None,
    calibration: Annotated[
        Optional[str], typer.Option(help="Folder of images, LLaVA JSON, 'shapes' (rendered scenes) or 'synthetic' "
                                         "to calibrate on (default: the domain the model declares, as nano and "
                                         "budget do; else synthetic).")
    ] = None,
    calibration_size: Annotated[Optional[int], typer.Option(help="Calibration samples (default 32).")] = None,
    lm_gguf: Annotated[
        Optional[str], typer.Option(help="Also write the LM as a llama.cpp GGUF (q4_k_m, q4_0, q8_0, f16, f32) "
                                         "for --backend llamacpp; needs llama-cpp-python.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the output directory if it exists.")] = False,
    lora_slots: Annotated[bool, typer.Option(
        help="Add runtime LoRA inputs so PEFT adapters switch per request (Pipeline adapters=, serve "
             "--adapter); such an export is not loadable by openvino_genai.VLMPipeline.")] = False,
    lora_targets: Annotated[Optional[str], typer.Option(
        help="With --lora-slots: only these LM Linears, comma-separated (e.g. q_proj,v_proj); default all.")
    ] = None,
) -> None:
    """Export to OpenVINO (GenAI layout) and compress with NNCF: INT4 LM, INT8 vision by default."""
    import logging

    import nncf

    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino
    from llavakit.export.report import print_report

    from llavakit.checkpoints.resolve import resolve_source
    from llavakit.export.declared import export_recipe

    if lora_slots and vision is None:
        vision = "int8_weights"  # PTQ would quantize the projector's LoRA inputs
    given = {"lm_mode": lm_mode, "group_size": group_size, "ratio": ratio, "all_layers": all_layers, "awq": awq,
             "scale_estimation": scale_estimation, "gptq": gptq, "lora_correction": lora_correction, "vision": vision,
             "text_embeddings": text_embeddings, "calibration_size": calibration_size}
    recipe, declared = export_recipe(resolve_source(model, "model"), weights, given)
    if declared:  # budget declares its INT4 recipe (AWQ, group 16): say so, flags still win
        out.print("using the model's declared " + weights + " recipe: "
                  + ", ".join(f"{k}={v}" for k, v in declared.items()) + " (flags override)")
    options = CompressionOptions(**recipe)
    nncf.set_log_level(logging.ERROR)  # keep NNCF's progress bars, drop its info tables: we print our own report
    path = export_openvino(model, out_dir, options, calibration=calibration, force=force, lm_gguf=lm_gguf,
                           lora_slots=lora_slots, lora_targets=lora_targets.split(",") if lora_targets else None)
    print_report(path, out)


@app.command()
@friendly_errors
def chat(
    model: Annotated[str, typer.Argument(help="Model directory, hub id, or 'demo'.")],
    question: Annotated[Optional[str], typer.Argument(help="Ask once and exit; omit for an interactive chat.")] = None,
    image: Annotated[Optional[list[Path]], typer.Option("--image", "-i", help="Image file (repeatable).")] = None,
    backend: Annotated[Optional[str], typer.Option(
        help="auto (default: openvino, or llamacpp where `llavakit bench` measured it faster), openvino, "
             "llamacpp or torch.")] = None,
    device: Annotated[Optional[str], typer.Option(help="OpenVINO: CPU, GPU, NPU, AUTO; torch: cpu, cuda.")] = None,
    weights: Annotated[str, typer.Option(help="Precision when a HF checkpoint is exported on first use.")] = "int4",
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy; > 0 samples.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample from the k best tokens (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(help="> 1 discourages repeats.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed for sampling.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable).")] = None,
    stats: Annotated[bool, typer.Option(help="Print time to first token and tokens/s.")] = True,
    draft: Annotated[Optional[Path], typer.Option(
        help="Draft for speculative decoding: a `llavakit export-draft` directory, or budget-eagle (the draft "
             "shipped for budget); openvino backend.")] = None,
    draft_k: Annotated[Optional[int], typer.Option(
        help="Tokens the draft proposes per verify pass (default: the draft's recommendation, else 4).")] = None,
    adapter: Annotated[Optional[list[str]], typer.Option(
        help="PEFT LoRA adapter directory, optionally ':alpha' (repeatable: a weighted mix). OpenVINO needs an "
             "export with --lora-slots.")] = None,
) -> None:
    """Chat about images: answer one question, or start an interactive session."""
    from llavakit.cli_chat import adapter_options, interactive, one_shot, open_pipeline

    adapters, mix = adapter_options(adapter or [])
    settings = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or 1.0,
                    top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
                    stop=tuple(stop or ()), **({"adapter": mix} if mix else {}))
    pipe = open_pipeline(model, backend, device, err, weights, draft=str(draft) if draft else None, draft_k=draft_k,
                         adapters=adapters)
    images = [str(p) for p in image or []]
    if question is None:
        interactive(pipe, images, system, settings, out, err, stats)
    else:
        one_shot(pipe, question, images, system, settings, out, err, stats)


@app.command("export-draft")
@friendly_errors
def export_draft(
    model: Annotated[str, typer.Argument(help="A HF causal LM (same tokenizer as the VLM) or a LLaVA (its LM).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the draft.")],
    weights: Annotated[str, typer.Option(help="fp32, fp16, int8 or int4.")] = "int8",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    head_size: Annotated[Optional[int], typer.Option(
        help="Keep only the LM-head rows of this many most frequent ids (a cheaper draft step).")] = None,
    head_file: Annotated[Optional[Path], typer.Option(
        help="JSON {\"head_ids\": [...]} most frequent first; default MODEL/draft_head.json.")] = None,
    target: Annotated[Optional[str], typer.Option(
        help="For an EAGLE feature draft (scripts/gpu/train_eagle.py): the VLM it drafts for (its LM head).")] = None,
) -> None:
    """Export a small LM, or an EAGLE feature draft, for speculative decoding (`llavakit chat --draft DIR`)."""
    from llavakit.export.draft import export_draft_lm
    from llavakit.export.eagle import export_eagle_draft, is_eagle_source

    if is_eagle_source(Path(model)):
        if target is None:
            raise LlavakitError(f"{model} is an EAGLE feature draft: pass --target MODEL, the VLM it was trained "
                                "for (its LM head becomes the draft's)")
        written = export_eagle_draft(model, target, out_dir, weights=weights, force=force, head_size=head_size,
                                     head_file=head_file)
    else:
        written = export_draft_lm(model, out_dir, weights=weights, force=force, head_size=head_size,
                                  head_file=head_file)
    out.print(f"draft written to {written}")


@app.command()
@friendly_errors
def bench(
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Write bench.json and bench.md here.")] = None,
    peer: Annotated[
        Optional[list[str]],
        typer.Option(help="genai-pa, genai-sdpa, transformers-fp32, transformers-bf16, floor, llamacpp, "
                          "llavakit-llamacpp (repeatable)."),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Cold and warm requests per engine (medians reported).")] = 3,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens decoded per request (eos ignored).")] = 64,
    work_dir: Annotated[Optional[Path], typer.Option(help="Cache of built/exported bench models.")] = None,
    quick: Annotated[bool, typer.Option(help="A tiny 4-layer shape: checks the harness, not speed.")] = False,
    lever: Annotated[Optional[list[str]], typer.Option(help="Extra LM variants to measure (repeatable).")] = None,
) -> None:
    """Benchmark the engine against its peers on the bench-1b shape (ratios, same run)."""
    from llavakit.eval.bench import run_bench

    run_bench(out=out_dir, peers=peer, repeats=repeats, max_new_tokens=max_new_tokens, work_dir=work_dir,
              quick=quick, levers=lever, console=out)


@app.command()
@friendly_errors
def demo(
    question: Annotated[str, typer.Argument(help="What to ask about the example image.")] = "What is in this image?",
    image: Annotated[Optional[Path], typer.Option("--image", "-i", help="Image (default: the bundled example).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 64,
) -> None:
    """Chat about an image with the default model, budget (assembled offline on first use)."""
    from llavakit.checkpoints.budget import BUDGET_DESCRIPTION, budget_available
    from llavakit.checkpoints.demo import DEMO_DESCRIPTION, EXAMPLE_IMAGE
    from llavakit.cli_chat import one_shot, open_pipeline

    trained = budget_available()  # a build without budget's trained parts falls back to the untrained demo
    err.print(BUDGET_DESCRIPTION if trained else DEMO_DESCRIPTION, style="yellow")
    # INT8, not the usual INT4: a 135M LM loses ~13 points of shapes-world accuracy at INT4 (README table)
    pipe = open_pipeline("budget" if trained else "demo", None, None, err, weights="int8" if trained else "int4")
    picture = str(image or EXAMPLE_IMAGE)
    out.print(f"[dim]image:[/] {picture}\n[dim]you:[/] {question}")
    settings = {"max_new_tokens": max_new_tokens, "repetition_penalty": 1.2}  # a 135M LM loops without it
    one_shot(pipe, question, [picture], None, settings, out, err, True)


# Subcommands that live in their own modules register themselves on ``app`` when imported
# (each module does ``from llavakit.cli import app, friendly_errors``).
from llavakit import cli_data, cli_eval, cli_moe, cli_serve, cli_train  # noqa: E402,F401


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    # Run the imported module's app: as __main__ this file is a second copy, and the
    # subcommand modules registered themselves on llavakit.cli.app, not on this one.
    from llavakit.cli import main as _main

    sys.exit(_main())
