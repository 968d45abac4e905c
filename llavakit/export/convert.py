"""Trace the three parts (``parts.py``) into OpenVINO models with GenAI's input/output names.

Shapes are dynamic wherever they vary at run time (batch, sequence, cache
length, number of images) and static where they are fixed by the weights
(hidden sizes, image size), so one IR serves every prompt and OpenVINO can
still specialise kernels on the fixed dimensions.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import openvino as ov
import torch
from transformers import LlavaForConditionalGeneration

from llavakit.export.lora import LoraSlots, WithLoraInputs
from llavakit.export.parts import LanguageModel, TextEmbeddings, VisionEmbeddings, kv_shape
from llavakit.export.stateful import add_beam_idx, make_stateful


def _convert(module: torch.nn.Module, example: tuple, shapes: list[ov.PartialShape],
             lora: LoraSlots | None = None) -> ov.Model:
    """Trace ``module``; with ``lora``, its factors become trailing inputs (``export/lora.py``)."""
    if lora is not None:
        factors, factor_shapes = lora.examples()
        module, example, shapes = WithLoraInputs(module, lora, len(example)), (*example, *factors), shapes + factor_shapes
    with torch.no_grad(), warnings.catch_warnings(), (lora.hooked() if lora else nullcontext()):
        warnings.simplefilter("ignore")  # tracer warnings about Python-side branches we have checked
        return ov.convert_model(module.eval(), example_input=example, input=shapes)


def _name(ports, names: list[str]) -> None:
    for port, name in zip(ports, names, strict=True):
        port.get_tensor().set_names({name})


def convert_vision(model: LlavaForConditionalGeneration, lora: LoraSlots | None = None) -> ov.Model:
    """``pixel_values`` (N, 3, S, S) → ``last_hidden_state`` (N, P, D_text); ``lora``: projector slots."""
    size = model.config.vision_config.image_size
    example = (torch.zeros(1, 3, size, size),)
    ov_model = _convert(VisionEmbeddings(model), example, [ov.PartialShape([-1, 3, size, size])], lora)
    _name(ov_model.inputs, ["pixel_values", *(lora.input_names() if lora else [])])
    _name(ov_model.outputs, ["last_hidden_state"])
    return ov_model


def convert_text_embeddings(model: LlavaForConditionalGeneration) -> ov.Model:
    """``input_ids`` (B, T) → ``inputs_embeds`` (B, T, D)."""
    example = (torch.ones(1, 4, dtype=torch.int64),)
    ov_model = _convert(TextEmbeddings(model), example, [ov.PartialShape([-1, -1])])
    _name(ov_model.inputs, ["input_ids"])
    _name(ov_model.outputs, ["inputs_embeds"])
    return ov_model


def convert_language_model(model: LlavaForConditionalGeneration, lora: LoraSlots | None = None) -> ov.Model:
    """Stateful LM: ``inputs_embeds``, ``attention_mask``, ``position_ids``, ``beam_idx`` → ``logits``.

    ``lora``: LoRA slots whose factors become extra inputs ``lora.A.*`` / ``lora.B.*`` (``export/lora.py``).
    """
    layers, kv_heads, head_dim = kv_shape(model)
    hidden = model.config.get_text_config().hidden_size
    past, new = 2, 3  # example lengths; every length is dynamic in the IR
    example = (
        torch.randn(1, new, hidden),
        torch.ones(1, past + new, dtype=torch.int64),
        torch.arange(past, past + new)[None],
        *[torch.randn(1, kv_heads, past, head_dim) for _ in range(2 * layers)],
    )
    shapes = [ov.PartialShape([-1, -1, hidden]), ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1])]
    shapes += [ov.PartialShape([-1, kv_heads, -1, head_dim])] * (2 * layers)
    ov_model = _convert(LanguageModel(model), example, shapes, lora)
    cache_in = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    cache_out = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    lora_in = lora.input_names() if lora else []
    _name(ov_model.inputs, ["inputs_embeds", "attention_mask", "position_ids", *cache_in, *lora_in])
    _name(ov_model.outputs, ["logits", *cache_out])
    add_beam_idx(ov_model, cache_in)
    make_stateful(ov_model, dict(zip(cache_in, cache_out, strict=True)))
    return ov_model
