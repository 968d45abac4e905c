"""``llavakit serve``: OpenAI-compatible HTTP API and web chatbot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llavakit.cli import app, err, friendly_errors
from llavakit.errors import LlavakitError


@app.command()
@friendly_errors
def serve(
    model: Annotated[str, typer.Argument(help="Model directory, hub id, or 'demo'.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="LLAVAKIT_API_KEY",
                                                   help="Require 'Authorization: Bearer KEY' (and this key "
                                                        "as the web UI's password).")] = None,
    ui: Annotated[bool, typer.Option(help="Also serve the Gradio web chatbot at /ui.")] = False,
    slots: Annotated[int, typer.Option(help="Requests generating at once (each its own KV cache).")] = 2,
    max_queue: Annotated[int, typer.Option(help="Requests waiting for a slot; more get HTTP 429.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take, queue wait included (504).")] = 300.0,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 4096,
    max_images: Annotated[int, typer.Option(help="Images per request.")] = 4,
    max_image_mb: Annotated[float, typer.Option(help="Encoded size of one image, MiB (413).")] = 8.0,
    max_image_pixels: Annotated[int, typer.Option(help="Decoded pixels of one image (413).")] = 4096 * 4096,
    max_request_mb: Annotated[float, typer.Option(help="Request body size, MiB (413).")] = 20.0,
    allow_remote_images: Annotated[bool, typer.Option(help="Fetch http(s) image URLs (only --allow-host hosts).")] = False,
    allow_host: Annotated[Optional[list[str]], typer.Option(help="Host allowed for remote images (repeatable).")] = None,
    served_model_name: Annotated[Optional[str], typer.Option(help="Model id in /v1/models (default: the "
                                                                   "model's folder name).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, openvino, llamacpp or torch.")] = None,
    device: Annotated[Optional[str], typer.Option(help="OpenVINO: CPU, GPU, NPU, AUTO; torch: cpu, cuda.")] = None,
    weights: Annotated[str, typer.Option(help="Precision when a HF checkpoint is exported on first use.")] = "int4",
    adapter: Annotated[Optional[list[str]], typer.Option(
        help="LoRA adapter NAME=PATH (repeatable): listed in /v1/models, picked by a request's model. OpenVINO "
             "needs an export with --lora-slots.")] = None,
    draft: Annotated[Optional[Path], typer.Option(
        help="Draft for speculative decoding in every slot: a `llavakit export-draft` directory, or "
             "budget-eagle (the draft shipped for budget); openvino backend, no adapters.")] = None,
    draft_k: Annotated[Optional[int], typer.Option(
        help="Tokens the draft proposes per verify pass (default: the draft's recommendation, else 4).")] = None,
    precise: Annotated[bool, typer.Option(
        help="OpenVINO in f32 (compute and KV cache, no dynamic activation quantization): slower, but the "
             "answers match transformers, and a draft's output equals plain greedy exactly on every CPU.")] = False,
) -> None:
    """Serve a model over the OpenAI chat-completions API (and a web chatbot with --ui)."""
    import uvicorn

    from llavakit.cli_chat import open_pipeline
    from llavakit.serve import ServeSettings, create_app

    mib = 1024 * 1024
    settings = ServeSettings(
        model_name=served_model_name or Path(model.rstrip("/")).name or "llavakit", api_key=api_key, slots=slots,
        max_queue=max_queue, request_timeout_s=timeout, max_request_bytes=int(max_request_mb * mib),
        max_image_bytes=int(max_image_mb * mib), max_image_pixels=max_image_pixels, max_images=max_images,
        max_tokens_limit=max_tokens_limit, allow_remote_images=allow_remote_images,
        allowed_hosts=tuple(allow_host or ()), ui=ui)
    adapters = {}
    for item in adapter or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LlavakitError(f"--adapter {item!r}: expected NAME=PATH (e.g. --adapter pirate=adapters/pirate)")
        adapters[name] = path
    pipe = open_pipeline(model, backend, device, err, weights, draft=str(draft) if draft else None, draft_k=draft_k,
                         adapters=adapters or None, precise=precise)
    application = create_app(pipe, settings)
    where = f"http://{host}:{port}"
    err.print(f"serving {settings.model_name!r} on {where}/v1 ({len(application.state.engine.scheduler.slots)} "
              f"slot(s), queue {max_queue})" + (f", web chatbot at {where}/ui" if ui else "")
              + (f", speculative decoding with {draft} (k={pipe.speculative.k})" if draft else ""), highlight=False)
    uvicorn.run(application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
