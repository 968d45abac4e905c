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
    ops = {str(n.target) for g in ready.graphs for n in g.graph.nodes}
    assert not any("masked_scatter" in op for op in ops)  # its backward cannot be captured in a CUDA graph
    assert torch.allclose(eager, loss(**batch))  # the same loss with the check off
    assert os.environ.get(CHECK_SWITCH) == before  # restored on the way out


def test_merged_features_give_transformers_loss_and_gradients(tiny_llava: Path) -> None:
    """The fixed-shape merge (a pre-hook while training) equals transformers' masked_scatter merge."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_llava), attn_implementation="sdpa").train()
    batch = _batch(model)
    feats = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    batch["input_ids"][1, :feats] = 11  # a text-only second sample: one image in a batch of two
    batch["pixel_values"] = batch["pixel_values"][:1]
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == feats

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        value = model(**batch).loss
        value.backward()
        return value.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    reference, ref_grads = loss_and_grads()
    with compile_ready(model):
        merged, grads = loss_and_grads()
    assert torch.allclose(reference, merged, atol=1e-6)
    assert len(grads) == len(ref_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref_grads, grads))
    assert not model._forward_pre_hooks  # removed on the way out
