"""MoE-LLaVA through the OpenVINO export and engine: INT8 greedy tokens equal torch fp32, INT4
agrees teacher-forced; the IR dispatches sparsely (one NonZero per expert) and keeps the router float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llavakit.checkpoints.build import build_llava
from llavakit.checkpoints.upcycle import upcycle_model
from llavakit.export.compress import CompressionOptions
from llavakit.export.exporter import export_openvino

PROMPT = "Describe the picture."


@pytest.fixture(scope="module")
def trained_moe(parts, tmp_path_factory) -> Path:
    """An upcycled tiny MoE whose experts and routers were pushed apart, as MoE-tuning would."""
    root = tmp_path_factory.mktemp("moe-export")
    dense = build_llava(parts("vision", "clip"), parts("lm", "llama"), root / "dense")
    model = upcycle_model(LlavaForConditionalGeneration.from_pretrained(dense), 4, 2, "sparse")
    torch.manual_seed(0)
    with torch.no_grad():
        for block in model.moe_blocks().values():
            for p in block.experts.parameters():
                p.add_(torch.randn_like(p) * p.std())
            block.router.weight.normal_(0, 1.0)
    model.save_pretrained(root / "moe")
    AutoProcessor.from_pretrained(dense).save_pretrained(root / "moe")
    return root / "moe"


@pytest.fixture(scope="module")
def torch_answer(trained_moe: Path, red_image_module):
    from llavakit import Pipeline

    pipe = Pipeline(trained_moe, backend="torch")
    result = pipe.generate(PROMPT, images=[red_image_module], max_new_tokens=12, ignore_eos=True)
    assert len(set(map(tuple, pipe.backend.expert_usage().values()))) >= 1
    return result.token_ids


@pytest.fixture(scope="module")
def red_image_module():
    from PIL import Image

    return Image.new("RGB", (40, 30), (200, 30, 30))


def export(model: Path, tmp: Path, weights: str) -> Path:
    options = CompressionOptions(weights=weights, vision="fp32", text_embeddings="fp32")
    return export_openvino(model, tmp / f"ov-{weights}", options, show_progress=False)


@pytest.mark.parametrize("weights", ["int8"])
def test_greedy_tokens_equal_torch(weights: str, trained_moe: Path, torch_answer, red_image_module,
                                   tmp_path: Path) -> None:
    from llavakit import Pipeline

    out = export(trained_moe, tmp_path, weights)
    ir = ov.Core().read_model(out / "openvino_language_model.xml")
    kinds = [op.get_type_name() for op in ir.get_ops()]
    assert kinds.count("NonZero") == 4  # one token selection per expert of the one MoE layer: sparse dispatch
    routers = [op for op in ir.get_ops() if op.get_type_name() == "Constant"
               and list(op.get_output_shape(0))[-2:] == [4, 32]]
    assert routers and all(op.get_element_type().is_real() for op in routers)  # router left in float
    got = Pipeline(out, precise=True).generate(PROMPT, images=[red_image_module], max_new_tokens=12,
                                               ignore_eos=True)
    assert got.token_ids == torch_answer


def test_int4_agrees_teacher_forced(trained_moe: Path, torch_answer, red_image_module, tmp_path: Path) -> None:
    from llavakit import Pipeline

    engine = Pipeline(export(trained_moe, tmp_path, "int4"), precise=True).backend
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    logits = engine.prefill(engine.prepare(messages, [red_image_module]))
    agree = []
    for token in torch_answer:  # feed torch's tokens, compare each next-token choice
        agree.append(int(np.argmax(logits)) == token)
        logits = engine.decode_one(token)
    assert agree[0] and sum(agree) / len(agree) >= 0.75, agree
