"""The LLaVA training forward traces as one graph inside ``compile_ready`` (train/compile_ready.py)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from llavakit.train.compile_ready import CHECK_SWITCH, compile_ready


def _batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Two samples: the image's tokens first, then text; labels on the text."""
    cfg = model.config
    n_img = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    ids = torch.randint(10, cfg.text_config.vocab_size, (2, n_img + 16), generator=torch.Generator().manual_seed(0))
    ids[ids == cfg.image_token_id] = 10
    ids[:, :n_img] = cfg.image_token_id  # (2, T)
    labels = ids.clone()
    labels[:, :n_img] = -100
    size = cfg.vision_config.image_size
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(2, 3, size, size)}  # (2, 3, H, W)


def test_llava_forward_has_no_graph_break_inside_compile_ready(tiny_llava: Path) -> None:
    from transformers import AutoModelForImageTextToText

    def load() -> torch.nn.Module:  # a fresh model each time: hooks are installed per instance
        return AutoModelForImageTextToText.from_pretrained(str(tiny_llava), attn_implementation="sdpa").train()

    model = load()
    batch = _batch(model)

    def loss(**b: torch.Tensor) -> torch.Tensor:
        return model(**b).loss

    before = os.environ.get(CHECK_SWITCH)
    torch._dynamo.reset()
    plain = torch._dynamo.explain(loss)(**batch)
    assert plain.graph_break_count > 0  # transformers' own forward breaks: the control
    torch._dynamo.reset()
    model = load()
    with compile_ready(model):
        ready = torch._dynamo.explain(loss)(**batch)  # the very first forward of this instance
        eager = loss(**batch)
    torch._dynamo.reset()
    assert ready.graph_break_count == 0, [r.reason[:120] for r in ready.break_reasons]
    assert ready.graph_count == 1
    assert torch.allclose(eager, loss(**batch))  # the same loss with the check off
    assert os.environ.get(CHECK_SWITCH) == before  # restored on the way out
