"""The PyTorch reference backend: transformers' LLaVA with a KV cache we drive ourselves.

It is the ground truth the OpenVINO engine is checked against, so it stays as
close to transformers as possible: transformers' processor renders and expands
the prompt, transformers' model runs it; only the loop (prefill, then one token
at a time through ``DynamicCache``) is ours, shared with every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache

from llavakit.errors import LlavakitError, ModelLoadError, PromptError
from llavakit.runtime.types import union_of_ids

SUPPORTED_MODEL_TYPES = ("llava", "llava_next", "moe_llava")


@dataclass
class TorchPrompt:
    """Processor output for one conversation."""

    inputs: dict[str, torch.Tensor]
    adapter: tuple = ()  # the LoRA mix (runtime/lora.py); () = the base model


def pick_torch_device(device: str | None) -> torch.device:
    """Map a user's device name to a torch device; refuse missing ones, listing what exists."""
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if device is None or device.lower() in ("auto",):
        return torch.device(available[-1])
    name = device.lower()
    if name.split(":")[0] not in available:
        raise LlavakitError(f"device {device!r} is not available to the torch backend; available: {available}")
    return torch.device(name)


class TorchBackend:
    """Run a HF-format LLaVA directory with transformers."""

    name = "torch"

    def __init__(self, model_dir: Path, device: str | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.device = pick_torch_device(device)
        import llavakit.models.moe_llava  # noqa: F401  (registers "moe_llava" with the Auto classes)

        try:
            self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
            self.processor = AutoProcessor.from_pretrained(model_dir)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"could not load a LLaVA model from {model_dir}: {exc}") from exc
        if self.model.config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"{model_dir} holds a {self.model.config.model_type!r} model; supported: {SUPPORTED_MODEL_TYPES}"
            )
        self.tokenizer = self.processor.tokenizer
        text_config = self.model.config.get_text_config()
        self.max_context = int(getattr(text_config, "max_position_embeddings", 4096))
        self.eos_token_ids = union_of_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self._cache: DynamicCache | None = None
        self.lora = None  # runtime/lora.TorchAdapters once adapters are loaded

    def load_adapters(self, adapters: dict[str, str | Path]) -> None:
        """PEFT adapters (name → directory) for per-request use, as the OpenVINO engine takes them."""
        from llavakit.runtime.lora import TorchAdapters

        self.lora = TorchAdapters(self.model, adapters)

    def adapter_names(self) -> list[str]:
        return self.lora.names if self.lora else []

    def render(self, messages: list[dict]) -> str:
        """The prompt text the chat template makes of ``messages`` (ends with the assistant cue)."""
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def prepare(self, messages: list[dict], images: list[Image.Image]) -> TorchPrompt:
        text = self.render(messages)
        try:
            inputs = self.processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)
        except ValueError as exc:  # e.g. image tokens vs images, raised by the processor
            raise PromptError(str(exc)) from exc
        return TorchPrompt({k: v.to(self.device) for k, v in inputs.items()})

    def prompt_length(self, prepared: TorchPrompt) -> int:
        return int(prepared.inputs["input_ids"].shape[1])

    @torch.inference_mode()
    def prefill(self, prepared: TorchPrompt) -> np.ndarray:
        self._cache = DynamicCache(config=self.model.config.get_text_config())
        if self.lora is not None:
            self.lora.activate(prepared.adapter)
        if hasattr(self.model, "track_expert_usage"):  # MoE: count expert use per generation
            self.model.track_expert_usage(True)
        out = self.model(**prepared.inputs, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float().cpu().numpy()  # (V,)

    @torch.inference_mode()
    def decode_one(self, token_id: int) -> np.ndarray:
        ids = torch.tensor([[token_id]], device=self.device)  # (1, 1)
        out = self.model(input_ids=ids, past_key_values=self._cache, use_cache=True)
        return out.logits[0, -1].float().cpu().numpy()  # (V,)

    def expert_usage(self) -> dict[int, list[int]] | None:
        """MoE models: layer → how many token assignments each expert got in the last generation."""
        return self.model.expert_usage() if hasattr(self.model, "expert_usage") else None

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

