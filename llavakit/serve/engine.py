"""From an OpenAI request to a generation job on a slot, shared by the HTTP API and the web UI.

- ``Engine`` owns the slots (``Pipeline.fork()`` each, sharing one compiled model), the
  scheduler, and the list of served models: the base model, then one entry per LoRA
  adapter the Pipeline loaded (``llavakit serve --adapter name=PATH``). A request's
  ``model`` picks an entry and the entry's ``adapter`` goes to the generation (None = the
  base model); every slot switches adapters per request (``runtime/lora.py``).
- ``conversation`` turns OpenAI messages into the engine's list-of-parts messages plus
  image references, applying the same ``<image>`` tag rules as the CLI and Python API.
- ``Engine.submit`` runs the generation in a worker thread and reports through ``sink``
  with :class:`Piece` / :class:`Done` / :class:`Failed` events, so the async API and the
  threaded UI consume the same stream.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from llavakit.data.chat_templates import IMAGE_TOKEN
from llavakit.errors import LlavakitError, PromptError
from llavakit.runtime.pipeline import Pipeline
from llavakit.runtime.prompt import user_content
from llavakit.runtime.types import GenerationResult
from llavakit.serve.errors import APIError, RequestTimeoutError
from llavakit.serve.images import ImageRef, parse_image_url
from llavakit.serve.scheduler import Job, Scheduler
from llavakit.serve.schemas import ChatCompletionRequest, Message
from llavakit.serve.settings import ServeSettings

log = logging.getLogger("llavakit.serve")


@dataclass
class ModelEntry:
    """One servable model id: the base model (adapter None) or a LoRA adapter (its name)."""

    id: str
    adapter: str | dict[str, float] | None = None  # a name, or {name: weight} for "a:0.5+b:0.5"
    parent: str | None = None  # the base model's id, for adapters
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ChatJob:
    """Everything a worker needs: engine messages, decoded images, generation settings."""

    messages: list[dict]
    images: list[Image.Image]
    settings: dict[str, Any]
    model: ModelEntry


@dataclass
class Piece:
    text: str


@dataclass
class Done:
    result: GenerationResult


@dataclass
class Failed:
    error: BaseException


Event = Piece | Done | Failed


def make_slots(pipeline: Pipeline, n: int) -> list[Pipeline]:
    """``n`` independent generation states on one loaded model; 1 for backends that cannot fork."""
    slots = [pipeline]
    for _ in range(n - 1):
        try:
            slots.append(pipeline.fork())
        except LlavakitError as exc:
            log.warning("serving with 1 slot: %s", exc)
            break
    return slots


class Engine:
    """The served model: slots, queue, model list."""

    def __init__(self, pipeline: Pipeline, settings: ServeSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.scheduler = Scheduler(make_slots(pipeline, settings.slots), settings.max_queue)
        self.models = [ModelEntry(settings.model_name)]
        self.models += [ModelEntry(name, adapter=name, parent=settings.model_name) for name in pipeline.adapters
                        if name != settings.model_name]

    def resolve_model(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == name:
                return entry
        mix = self._adapter_mix(name)
        if mix is not None:
            return ModelEntry(name, adapter=mix, parent=self.settings.model_name)
        raise APIError(404, f"model {name!r} is not served here; available: {[m.id for m in self.models]}, "
                            "or an adapter with a weight ('name:0.5') or a mix ('a:0.5+b:0.5')",
                       code="model_not_found", param="model")

    def _adapter_mix(self, name: str) -> dict[str, float] | None:
        """``"a:0.5"`` or ``"a:0.5+b:0.5"`` over the served adapters -> {name: weight}; None if it is not one.

        Why in the model id: OpenAI's request has no adapter field, and clients only let users pick a
        model, so the id carries the weights; nothing new is compiled (runtime/lora.py).
        """
        from llavakit.runtime.lora import AdapterWeightError, parse_spec

        if not all(":" in part for part in name.split("+")):  # every part names its weight
            return None
        try:
            return dict(parse_spec(name, self.pipeline.adapters))
        except AdapterWeightError as exc:
            raise APIError(400, f"model {name!r}: {exc}", param="model") from None
        except LlavakitError:
            return None

    def submit(self, chat: ChatJob, sink: Callable[[Event], None]) -> Job:
        """Queue a generation; ``sink`` gets its events from the worker thread. Raises QueueFullError."""

        def work(slot: Pipeline, job: Job) -> None:
            if job.stopped():
                sink(Failed(_stop_reason(job)))
                return
            try:
                generation = slot.stream_messages(chat.messages, chat.images, adapter=chat.model.adapter,
                                                  **chat.settings)
                pieces = iter(generation)
                for piece in pieces:
                    sink(Piece(piece))
                    if job.stopped():
                        pieces.close()  # type: ignore[attr-defined]
                        sink(Failed(_stop_reason(job)))
                        return
                assert generation.result is not None
                sink(Done(generation.result))
            except LlavakitError as exc:
                sink(Failed(exc))
            except Exception as exc:  # a bug: logged with its traceback, reported as 500, server keeps serving
                log.exception("generation failed")
                sink(Failed(exc))

        return self.scheduler.submit(Job(work, self.settings.request_timeout_s))

    def cancel(self, job: Job) -> None:
        self.scheduler.cancel(job)

    def close(self) -> None:
        self.scheduler.close()


def _stop_reason(job: Job) -> BaseException:
    if job.cancelled.is_set():
        return LlavakitError("cancelled")
    return RequestTimeoutError("the request took longer than the server's timeout (queue wait included)")


def conversation(messages: list[Message], settings: ServeSettings) -> tuple[list[dict], list[ImageRef]]:
    """OpenAI messages → engine messages (list-of-parts) and the image references in order."""
    out: list[dict] = []
    refs: list[ImageRef] = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else []
        if content is None:
            parts = [{"type": "text", "text": ""}]
        if isinstance(content, list):
            n_images = sum(1 for p in content if p.type == "image_url")
            if n_images and role != "user":
                raise PromptError(f"messages[{index}] ({message.role}) has an image; images go in user messages")
            for part in content:
                if part.type == "image_url":
                    refs.append(parse_image_url(part.image_url.url, len(refs), settings))
                    if len(refs) > settings.max_images:
                        raise PromptError(f"too many images: more than {settings.max_images} in this request "
                                          "(the server's limit, --max-images)")
            text = "".join(p.text for p in content if p.type == "text")
            if IMAGE_TOKEN in text:
                # Tags place the images, as in the CLI/Python API: one tag per image of this message.
                parts = user_content(text, n_images)
            elif _attached(content):
                # A question with pictures attached ([text, image] as often as [image, text]): the pictures go
                # first, as in the CLI/Python API and as LLaVA models are trained ("<image>\n" + question);
                # budget asked "What is in this image?" after the picture names all three shapes, before it
                # only one. Text between images keeps its place: that order is the user's.
                parts = user_content(text, n_images)
            else:
                parts = [{"type": "text", "text": p.text} if p.type == "text" else {"type": "image"} for p in content]
        elif role == "user" and content and IMAGE_TOKEN in content:
            parts = user_content(content, 0)  # raises: tags but no image
        out.append({"role": role, "content": parts})
    return out, refs


def _attached(content: list) -> bool:
    """Whether a message's parts are text and images in two runs (text then images, or images then text)."""
    kinds = [part.type == "image_url" for part in content if part.type != "text" or part.text]
    changes = sum(1 for a, b in zip(kinds, kinds[1:]) if a != b)
    return any(kinds) and changes <= 1


def generation_settings(request: ChatCompletionRequest, settings: ServeSettings) -> dict[str, Any]:
    """Request fields → GenerationConfig fields (OpenAI defaults: temperature 1, top_p 1)."""
    max_tokens = request.max_completion_tokens or request.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens}, more than this server's limit of "
                            f"{settings.max_tokens_limit}", param="max_tokens")
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stop) > 4:
        raise APIError(400, f"stop has {len(stop)} strings; at most 4 are allowed", param="stop")
    temperature = 1.0 if request.temperature is None else request.temperature
    out: dict[str, Any] = {
        "max_new_tokens": max_tokens,
        "do_sample": temperature > 0,
        "temperature": temperature if temperature > 0 else 1.0,
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "seed": request.seed,
        "stop": tuple(stop),
        "ignore_eos": request.ignore_eos,
    }
    if request.top_k is not None:
        out["top_k"] = request.top_k
    if request.repetition_penalty is not None:
        out["repetition_penalty"] = request.repetition_penalty
    return out
