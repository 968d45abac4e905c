"""Terminal chat: stream answers, and a small interactive loop with slash commands.

Kept out of ``cli.py`` so the CLI stays one thin function per command. The loop
never dies on a user's mistake: a bad image or an over-long prompt prints one
line and the conversation continues unchanged.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from llavakit.errors import LlavakitError
from llavakit.runtime.generate import Generation
from llavakit.runtime.pipeline import ChatSession, Pipeline

HELP = "commands: /image PATH (attach to next question), /reset (new conversation), /exit (or Ctrl-D)"


def open_pipeline(model: str, backend: str | None, device: str | None, err: Console,
                  weights: str = "int4", draft: str | None = None, draft_k: int | None = None,
                  adapters: dict[str, str] | None = None, precise: bool = False) -> Pipeline:
    """Load the model with a spinner on stderr (the first use of a HF checkpoint exports it).

    ``draft``: a ``llavakit export-draft`` directory or ``budget-eagle``, for speculative decoding (``draft_k``
    tokens a step; None: the draft's recommendation).
    ``adapters``: PEFT LoRA adapters by name (``runtime/lora.py``).
    ``precise``: f32 OpenVINO settings (``runtime/ov_backend.PRECISE``).
    """
    with err.status(f"loading {model} (a HF checkpoint is exported to OpenVINO once, then cached)..."):
        extra = {"draft": draft, "num_draft_tokens": draft_k} if draft else {}
        if adapters:
            extra["adapters"] = adapters
        return Pipeline(model, backend=backend, device=device, weights=weights, precise=precise, **extra)


def adapter_options(values: list[str]) -> tuple[dict[str, str], dict[str, float]]:
    """``--adapter PATH[:alpha]`` values → ({name: path}, {name: alpha}); the name is the folder's."""
    from pathlib import Path

    from llavakit.runtime.lora import parse_adapter_arg

    adapters: dict[str, str] = {}
    mix: dict[str, float] = {}
    for value in values:
        path, alpha = parse_adapter_arg(value)
        name = Path(path.rstrip("/")).name or path
        if name in adapters and adapters[name] != path:
            name = f"{name}-{len(adapters)}"
        adapters[name], mix[name] = path, alpha
    return adapters, mix


def print_stream(generation: Generation, out: Console, err: Console, stats: bool) -> None:
    """Print text pieces as they arrive, then one line of metrics."""
    for piece in generation:
        out.file.write(piece)
        out.file.flush()
    out.file.write("\n")
    out.file.flush()
    result = generation.result
    if stats and result is not None:
        m = result.metrics
        err.print(
            f"[{m.generated_tokens} tokens, first token {m.time_to_first_token_s:.2f} s, "
            f"{m.decode_tokens_per_s:.1f} tokens/s]",
            style="dim", markup=False, highlight=False,
        )
        spec = getattr(result, "speculative", None)  # set by speculative decoding (--draft)
        if spec is not None:
            err.print(f"[draft: {spec.accepted}/{spec.drafted} accepted ({spec.acceptance_rate:.0%}), "
                      f"{spec.rounds} verify passes]", style="dim", markup=False, highlight=False)


def one_shot(pipe: Pipeline, question: str, images: list[str], system: str | None, settings: dict[str, Any],
             out: Console, err: Console, stats: bool) -> None:
    """Answer one question and return."""
    print_stream(pipe.stream(question, images, system, **settings), out, err, stats)


def interactive(pipe: Pipeline, images: list[str], system: str | None, settings: dict[str, Any],
                out: Console, err: Console, stats: bool) -> None:
    """Read questions from stdin until /exit or end of input."""
    session = pipe.chat(system)
    for path in images:
        session.add_image(path)
    err.print(HELP, style="dim", markup=False, highlight=False)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.file.write("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            if _command(session, line, err):
                return
            continue
        try:
            generation = session.stream(line, **settings)
            out.file.write("assistant> ")
            print_stream(generation, out, err, stats)
        except LlavakitError as exc:
            err.print(f"error: {exc}", style="red", markup=False, highlight=False)


def _command(session: ChatSession, line: str, err: Console) -> bool:
    """Run one slash command; True means leave the chat."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return True
    if name == "/reset":
        session.reset()
        err.print("(new conversation)", style="dim")
    elif name == "/image" and arg.strip():
        try:
            session.add_image(arg.strip())
            err.print(f"(image attached to your next question: {arg.strip()})", style="dim", markup=False)
        except LlavakitError as exc:
            err.print(f"error: {exc}", style="red", markup=False, highlight=False)
    else:
        err.print(HELP, style="dim", markup=False, highlight=False)
    return False
