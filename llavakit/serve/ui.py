"""The web chatbot (``llavakit serve MODEL --ui``, at /ui): Gradio Blocks in the API's process.

It is seed 000's Gradio demo done properly: the UI does not call the model itself but
submits jobs to the same :class:`~llavakit.serve.engine.Engine` as the HTTP API, so
chat users and API clients share the slots and the queue limits, and a busy server
says so instead of hanging. Images are uploaded or pasted into the message box;
the conversation (text and images) stays in the session's state, answers stream in
piece by piece, the Stop button cancels the job (its slot is free after the current
token), and each answer shows its time to first token and decode speed. The adapter
picker lists the engine's models: "base" and each LoRA adapter served with `--adapter`.
"""

from __future__ import annotations

import queue
import time
from typing import Any, Iterator

import gradio as gr

from llavakit.errors import LlavakitError
from llavakit.images import load_image
from llavakit.runtime.prompt import user_content
from llavakit.serve.engine import ChatJob, Done, Engine, Piece
from llavakit.serve.errors import to_api_error
from llavakit.serve.scheduler import Job

POLL_S = 0.25
REFRESH_S = 0.05  # at most ~20 chat updates a second


def _label(entry: Any) -> str:
    return "base" if entry.adapter is None else entry.id


def build_ui(engine: Engine) -> gr.Blocks:
    """The chatbot's Blocks; every handler goes through ``engine``."""
    settings = engine.settings
    active: dict[str, Job] = {}  # session -> running job, for the Stop button
    choices = {_label(m): m for m in engine.models}

    def respond(message: dict, chat: list, state: dict | None, adapter: str, max_tokens: int, temperature: float,
                top_p: float, repetition_penalty: float, request: gr.Request) -> Iterator[tuple]:
        state = state or {"messages": [], "images": []}
        text, files = (message or {}).get("text", ""), (message or {}).get("files", [])
        if not text.strip() and not files:
            yield gr.update(), chat, state, gr.update()
            return
        try:
            if len(state["images"]) + len(files) > settings.max_images:
                raise LlavakitError(f"at most {settings.max_images} images per conversation on this server "
                                    "(--max-images); press Clear to start a new one")
            new_images = [load_image(f if isinstance(f, str) else f["path"], max_pixels=settings.max_image_pixels,
                                     max_bytes=settings.max_image_bytes) for f in files]
            turn = {"role": "user", "content": user_content(text, len(new_images))}
        except LlavakitError as exc:
            gr.Warning(str(exc))
            yield gr.update(), chat, state, gr.update()
            return
        shown = list(chat or []) + [{"role": "user", "content": {"path": f if isinstance(f, str) else f["path"]}}
                                    for f in files]
        shown += [{"role": "user", "content": text}] if text else []
        shown += [{"role": "assistant", "content": ""}]
        yield gr.update(value=None), shown, state, "*waiting for a slot…*"
        events: queue.Queue = queue.Queue()
        cfg = {"max_new_tokens": int(max_tokens), "do_sample": temperature > 0, "temperature": temperature or 1.0,
               "top_p": top_p, "repetition_penalty": repetition_penalty}
        chat_job = ChatJob(state["messages"] + [turn], state["images"] + new_images, cfg,
                           choices.get(adapter, engine.models[0]))
        try:
            job = engine.submit(chat_job, events.put)
        except LlavakitError as exc:
            shown[-1] = {"role": "assistant", "content": f"⚠ {exc}"}
            yield gr.update(), shown, state, ""
            return
        active[request.session_hash] = job
        answer = ""
        try:
            while True:
                try:
                    event = events.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if isinstance(event, Piece):
                    # Coalesce: re-rendering the chat per token would take the GIL from the decoding
                    # threads; one update per REFRESH_S shows the same stream at a fraction of the cost.
                    answer += event.text
                    time.sleep(REFRESH_S)
                    while isinstance(event, Piece):
                        try:
                            event = events.get_nowait()
                        except queue.Empty:
                            break
                        if isinstance(event, Piece):
                            answer += event.text
                        else:
                            events.put(event)  # handled on the next turn of the loop
                            break
                    shown[-1] = {"role": "assistant", "content": answer}
                    yield gr.update(), shown, state, "*generating…*"
                elif isinstance(event, Done):
                    m = event.result.metrics
                    state = {"messages": chat_job.messages + [
                        {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                        "images": chat_job.images}
                    stats = (f"**first token** {m.time_to_first_token_s:.2f} s · **{m.decode_tokens_per_s:.1f} "
                             f"tokens/s** · {m.generated_tokens} tokens · prompt {m.prompt_tokens} tokens "
                             f"({m.cached_tokens} cached)")
                    shown[-1] = {"role": "assistant", "content": answer}
                    yield gr.update(), shown, state, stats
                    return
                else:
                    shown[-1] = {"role": "assistant", "content": (answer + "\n\n" if answer else "") +
                                 f"⚠ {to_api_error(event.error).message}"}
                    yield gr.update(), shown, state, ""
                    return
        finally:
            engine.cancel(job)  # no-op when it finished; frees the slot when the user pressed Stop
            active.pop(request.session_hash, None)

    def stop(request: gr.Request) -> str:
        job = active.pop(request.session_hash, None)
        if job is not None:
            engine.cancel(job)
        return "*stopped*"

    def clear() -> tuple:
        return [], {"messages": [], "images": []}, ""

    with gr.Blocks(title="llavakit chat") as blocks:
        gr.Markdown(f"### llavakit · `{settings.model_name}`\nUpload or paste images into the message box and "
                    "ask about them. The same server answers the OpenAI API at `/v1`.")
        chatbot = gr.Chatbot(label="chat", height=420, elem_id="chat")
        box = gr.MultimodalTextbox(placeholder="Ask about an image… (attach, drop or paste images)",
                                   file_types=["image"], file_count="multiple", sources=["upload"],
                                   show_label=False, elem_id="message")
        stats = gr.Markdown("", elem_id="stats")
        with gr.Row():
            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            clear_btn = gr.Button("Clear", elem_id="clear")
        with gr.Accordion("Generation settings", open=False):
            adapter = gr.Dropdown(list(choices), value=next(iter(choices)), label="adapter")
            max_tokens = gr.Slider(1, settings.max_tokens_limit, value=min(256, settings.max_tokens_limit), step=1,
                                   label="max new tokens")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top p")
            repetition = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="repetition penalty")
        state = gr.State({"messages": [], "images": []})
        inputs = [box, chatbot, state, adapter, max_tokens, temperature, top_p, repetition]
        event = box.submit(respond, inputs, [box, chatbot, state, stats])
        stop_btn.click(stop, None, stats, cancels=[event])
        clear_btn.click(clear, None, [chatbot, state, stats], cancels=[event])
    return blocks
