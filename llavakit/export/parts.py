"""The three traceable pieces a LLaVA is cut into for OpenVINO (DESIGN.md's data flow).

    pixel_values ──► VisionEmbeddings ──► projected image features
    input_ids ─────► TextEmbeddings ────► token embeddings
    inputs_embeds ─► LanguageModel (+ KV cache in, KV cache out) ──► logits

The engine merges image features into the token embeddings itself (the
``<image>`` positions), exactly as OpenVINO GenAI does, so the language model
only ever sees ``inputs_embeds`` — one IR serves text-only and image prompts.

The language model takes and returns the KV cache as plain tensors here; the
exporter then hides them inside the model as state (see ``stateful.py``).
Each wrapper is the transformers module itself plus the few lines that select
features or route the cache, so the IR computes what transformers computes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, LlavaForConditionalGeneration


class VisionEmbeddings(torch.nn.Module):
    """Vision tower → feature layer (CLS dropped for CLIP) → projector: (N, 3, H, W) → (N, P, D_text)."""

    def __init__(self, model: LlavaForConditionalGeneration) -> None:
        super().__init__()
        self.tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.layer = model.config.vision_feature_layer
        self.drop_cls = model.config.vision_feature_select_strategy == "default"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states
        layers = [self.layer] if isinstance(self.layer, int) else list(self.layer)
        picked = [hidden[i][:, 1:] if self.drop_cls else hidden[i] for i in layers]  # each (N, P, D_vision)
        return self.projector(torch.cat(picked, dim=-1))  # (N, P, D_text)


class TextEmbeddings(torch.nn.Module):
    """Token ids → embeddings: (B, T) → (B, T, D)."""

    def __init__(self, model: LlavaForConditionalGeneration) -> None:
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)  # (B, T, D)


class LanguageModel(torch.nn.Module):
    """Decoder + LM head with the KV cache as explicit tensors.

    Inputs: inputs_embeds (B, T, D), attention_mask (B, P+T), position_ids (B, T),
    then key/value per layer (B, H_kv, P, d). Outputs: logits (B, T, V), then the
    updated key/value per layer (B, H_kv, P+T, d).
    """

    def __init__(self, model: LlavaForConditionalGeneration) -> None:
        super().__init__()
        self.decoder = model.model.language_model
        self.head = model.lm_head
        self.text_config = model.config.get_text_config()

    def forward(self, inputs_embeds, attention_mask, position_ids, *past: torch.Tensor):
        cache = DynamicCache(config=self.text_config)
        for i, layer in enumerate(cache.layers):
            # Seed each layer with the given tensors directly: an empty lazily-created
            # cache would trace to a concat with a rank-1 empty tensor.
            layer.lazy_initialization(past[2 * i], past[2 * i + 1])
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
        out = self.decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                           past_key_values=cache, use_cache=True)
        logits = self.head(out.last_hidden_state)  # (B, T, V)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (logits, *present)


def kv_shape(model: LlavaForConditionalGeneration) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the language model."""
    cfg = model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return cfg.num_hidden_layers, kv_heads, head_dim
