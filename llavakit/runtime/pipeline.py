"""``Pipeline``: the one Python entry point for chatting with a LLaVA.

    from llavakit import Pipeline
    pipe = Pipeline("path/to/model")
    print(pipe.generate("What is in the picture?", images=["cat.png"]).text)

A Pipeline owns one backend (chosen from what the model directory holds when not
given) and turns prompts + images into conversations the backend runs through
the shared generation loop. Later features (OpenVINO engine, LoRA, speculative
decoding, serving) extend this class rather than replace it.

A chat session keeps the conversation and its images; a turn that fails (bad
image, prompt too long) leaves the conversation exactly as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llavakit.checkpoints.resolve import resolve_source
from llavakit.errors import ContextOverflowError, LlavakitError
from llavakit.images import load_images
from llavakit.runtime.image_fit import apply_fit, declared_fit
from llavakit.runtime.generate import Generation, start_generation
from llavakit.runtime.prompt import count_images, user_content
from llavakit.runtime.types import GenerationConfig, GenerationResult

BACKENDS = ("openvino", "torch", "llamacpp", "auto")
ImageLike = Any  # PIL.Image.Image | str | os.PathLike | bytes


class Pipeline:
    """Load a model once; generate, stream, or chat with it.

    ``backend`` is "openvino" (the default: an exported directory runs as is, a
    HF checkpoint is exported once into the cache at ``weights`` precision) or
    "torch" (the transformers reference; needs the HF checkpoint). ``device``
    uses each backend's names (OpenVINO: CPU, GPU, NPU, AUTO; torch: cpu, cuda).
    ``precise=True`` asks OpenVINO for fp32 compute and KV cache (for parity
    checks); ``properties`` passes any other OpenVINO compile setting.
    "llamacpp" runs the LM from the export's llama.cpp GGUF (vision stays on
    OpenVINO; ``gguf`` picks a file or type); "auto", the default, is "llamacpp"
    only where a measurement recorded it as faster on this machine
    (``runtime/backend_choice.py``), else "openvino".
    ``draft`` (a ``llavakit export-draft`` directory, or ``"budget-eagle"``, the draft
    shipped for ``budget``) turns on speculative decoding on the OpenVINO engine: the
    draft proposes ``num_draft_tokens`` tokens per step (default: what the draft's
    marker recommends, else 4; ``draft_adaptive`` tunes it), the model verifies them in one pass.
    ``adapters`` ({name: PEFT adapter directory}) are LoRA adapters a call picks with
    ``adapter="name"``, ``"name:0.5"`` or a mix ``{"a": 0.5, "b": 0.5}`` (``runtime/lora.py``);
    on OpenVINO they need an export with ``--lora-slots``.
    """

    def __init__(self, model: str | Path, backend: str | None = None, device: str | None = None,
                 weights: str = "int4", precise: bool = False, properties: dict | None = None,
                 gguf: str | Path | None = None, draft: str | Path | None = None, num_draft_tokens: int | None = None,
                 draft_adaptive: bool = False, adapters: dict[str, str | Path] | None = None) -> None:
        from llavakit.export.layout import is_exported

        self.speculative = None  # a SpeculativeDecoder when ``draft`` is given (runtime/speculative.py)

        self.model_dir = resolve_source(model, "model")
        self.image_fit = declared_fit(self.model_dir)  # how a non-square picture becomes square (image_fit.py)
        self.backend_name = backend or "auto"
        if self.backend_name not in BACKENDS:
            raise LlavakitError(f"unknown backend {self.backend_name!r}; available: {list(BACKENDS)}")
        if draft is not None and self.backend_name in ("torch", "llamacpp"):
            raise LlavakitError(f"a draft model (speculative decoding) needs the openvino backend, not {self.backend_name!r}")
        exported = is_exported(self.model_dir)
        if self.backend_name == "torch":
            if exported:
                raise LlavakitError(f"{self.model_dir} is an OpenVINO export; the torch backend needs the HF checkpoint")
            from llavakit.runtime.torch_backend import TorchBackend  # torch only when asked for

            self.backend = TorchBackend(self.model_dir, device=device)
            self._load_adapters(adapters)
            return
        if not exported:
            from llavakit.export.cache import ensure_exported  # exporting needs torch; running does not

            self.model_dir = ensure_exported(self.model_dir, weights, lora_slots=bool(adapters))
        if self.backend_name == "auto" and (draft is not None or adapters):
            self.backend_name = "openvino"  # speculative decoding and LoRA adapters run on the OpenVINO engine only
        if self.backend_name == "auto":
            from llavakit.runtime.backend_choice import auto_backend

            self.backend_name = "llamacpp" if gguf is not None else auto_backend(self.model_dir)
        if self.backend_name == "llamacpp":
            from llavakit.runtime.llamacpp_backend import LlamaCppBackend

            if adapters:
                raise LlavakitError("the llamacpp backend does not apply LoRA adapters; use the openvino backend "
                                    "on an export with --lora-slots")
            self.backend = LlamaCppBackend(self.model_dir, device=device, properties=properties, precise=precise,
                                           gguf=gguf)
            return
        from llavakit.runtime.ov_backend import OpenVINOBackend
        from llavakit.runtime.ov_llava_next import LlavaNextOpenVINOBackend, is_llava_next_export

        engine = LlavaNextOpenVINOBackend if is_llava_next_export(self.model_dir) else OpenVINOBackend
        self.backend = engine(self.model_dir, device=device, properties=properties, precise=precise)
        self._load_adapters(adapters)
        if draft is not None and getattr(self.backend, "lora", None) is not None:
            raise LlavakitError("speculative decoding (draft=) does not run on an export with LoRA slots yet")
        if draft is not None:
            from llavakit.checkpoints.budget_draft import resolve_draft
            from llavakit.runtime.speculative import draft_marker, speculative_decoder

            draft = resolve_draft(draft, self.model_dir)
            if num_draft_tokens is None:
                num_draft_tokens = int(draft_marker(draft).get("num_draft_tokens", 4))
            self.speculative = speculative_decoder(self.backend, self.model_dir, draft, num_draft_tokens,
                                                  adaptive=draft_adaptive, device=device, properties=properties,
                                                  precise=precise)

    def generate(self, prompt: str, images: Sequence[ImageLike] | ImageLike = (), system: str | None = None,
                 **settings: Any) -> GenerationResult:
        """Answer one prompt about ``images``; returns text, generated token ids and metrics.

        ``settings`` are :class:`GenerationConfig` fields: max_new_tokens, do_sample,
        temperature, top_k, top_p, repetition_penalty, seed, stop.
        """
        return self.stream(prompt, images, system, **settings).finish()

    def stream(self, prompt: str, images: Sequence[ImageLike] | ImageLike = (), system: str | None = None,
               **settings: Any) -> Generation:
        """Like :meth:`generate`, but iterate the returned object for text pieces as they come."""
        loaded = load_images(images)
        messages = _system(system) + [{"role": "user", "content": user_content(prompt, len(loaded))}]
        return self.stream_messages(messages, loaded, **settings)

    def _load_adapters(self, adapters: dict[str, str | Path] | None) -> None:
        if adapters:
            self.backend.load_adapters({str(k): v for k, v in adapters.items()})

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded LoRA adapters."""
        names = getattr(self.backend, "adapter_names", None)
        return names() if names else []

    def stream_messages(self, messages: list[dict], images: list, adapter: Any = None,
                        **settings: Any) -> Generation:
        """Run a whole conversation (list-of-parts messages) whose image parts ``images`` fill in order.

        ``adapter``: None (the base model), a loaded adapter's name, "name:alpha", or {name: weight}.
        """
        from llavakit.runtime.lora import parse_spec

        mix = parse_spec(adapter, self.adapters)
        cfg = make_config(**settings)
        prepared = self.backend.prepare(messages, apply_fit(images, self.image_fit))
        prepared.adapter = mix
        if self.speculative is not None:
            generation = self.speculative.start(prepared, cfg)
        else:
            generation = start_generation(self.backend, prepared, cfg)
        return generation.on_finish(lambda result: setattr(result.metrics, "images", len(images)))

    def chat(self, system: str | None = None, overflow: str = "error") -> ChatSession:
        """Start a multi-turn conversation; ``overflow="drop_oldest"`` forgets old turns instead of failing."""
        return ChatSession(self, system, overflow)

    def fork(self) -> Pipeline:
        """A Pipeline on the same loaded model with its own generation state (KV cache).

        Forks may generate at the same time from different threads; the server runs one per
        slot. Only backends that can share compiled models do it (OpenVINO); others raise.
        """
        if not hasattr(self.backend, "fork"):
            raise LlavakitError(f"the {self.backend_name} backend cannot fork independent sessions")
        twin = copy.copy(self)
        twin.backend = self.backend.fork()
        if self.speculative is not None:  # each slot verifies and drafts on states of its own
            twin.speculative = self.speculative.fork(twin.backend)
        return twin


class ChatSession:
    """A conversation: turns and their images. ``send``/``stream`` add a turn."""

    def __init__(self, pipeline: Pipeline, system: str | None = None, overflow: str = "error") -> None:
        if overflow not in ("error", "drop_oldest"):
            raise LlavakitError(f"overflow must be 'error' or 'drop_oldest', got {overflow!r}")
        self.pipeline = pipeline
        self.system = system
        self.overflow = overflow
        self.reset()

    def reset(self) -> None:
        """Forget every turn and image."""
        self.messages: list[dict] = _system(self.system)
        self.images: list = []
        self.pending_images: list = []

    def add_image(self, image: ImageLike) -> None:
        """Attach an image to the next user turn (checked now, so a bad file is reported at once)."""
        self.pending_images.extend(load_images([image]))

    def send(self, text: str, images: Sequence[ImageLike] | ImageLike = (), **settings: Any) -> GenerationResult:
        """Ask one question; returns the answer and keeps it in the history."""
        return self.stream(text, images, **settings).finish()

    def stream(self, text: str, images: Sequence[ImageLike] | ImageLike = (), **settings: Any) -> Generation:
        """Ask one question and stream the answer; the turn is recorded once the answer is complete."""
        new_images = self.pending_images + load_images(images)
        turn = {"role": "user", "content": user_content(text, len(new_images))}
        history, old_images = list(self.messages), list(self.images)
        while True:
            try:
                generation = self.pipeline.stream_messages(history + [turn], old_images + new_images, **settings)
                break
            except ContextOverflowError:
                first = next((i for i, m in enumerate(history) if m["role"] != "system"), None)
                if self.overflow != "drop_oldest" or first is None:
                    raise
                dropped = history[first : first + 2]  # the oldest user turn and its answer
                history = history[:first] + history[first + 2 :]
                old_images = old_images[count_images(dropped):]
        return generation.on_finish(lambda result: self._record(history, old_images, turn, new_images, result))

    def _record(self, history: list, old_images: list, turn: dict, new_images: list, result: GenerationResult) -> None:
        answer = {"role": "assistant", "content": [{"type": "text", "text": result.text}]}
        self.messages = history + [turn, answer]
        self.images = old_images + new_images
        self.pending_images = []


def make_config(**settings: Any) -> GenerationConfig:
    """Build a GenerationConfig, refusing unknown setting names clearly."""
    known = GenerationConfig.__dataclass_fields__
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise LlavakitError(f"unknown generation setting(s) {unknown}; known: {sorted(known)}")
    if isinstance(settings.get("stop"), str):
        settings["stop"] = (settings["stop"],)
    cfg = GenerationConfig(**settings)
    cfg.stop = tuple(cfg.stop or ())
    return cfg


def _system(system: str | None) -> list[dict]:
    return [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
