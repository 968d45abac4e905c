"""Released MoE-LLaVA layouts → ours, on synthetic checkpoints written with the original key names
and config keys (Phi-2, StableLM-epoch, Qwen-1), checked tensor by tensor and against a plain-loop
routing computed from the raw reference tensors with each family's own FFN formula."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText

from llavakit.checkpoints.moe_convert import (
    convert_key,
    convert_moe_llava,
    convert_state_dict,
)
from llavakit.checkpoints.random_parts import make_tokenizer
from llavakit.errors import BuildError

C, F, H, L, E = 32, 64, 4, 2, 4  # hidden, FFN, heads, layers, experts
VISION_HIDDEN = 32


def _t(*shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape) * scale


def _norm(prefix: str, bias: bool) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight": 1 + _t(C, scale=0.05)}
    if bias:
        out[f"{prefix}.bias"] = _t(C, scale=0.05)
    return out


def _ffn(prefix: str, variant: str) -> dict[str, torch.Tensor]:
    if variant == "phi":
        return {f"{prefix}.fc1.weight": _t(F, C), f"{prefix}.fc1.bias": _t(F), f"{prefix}.fc2.weight": _t(C, F),
                f"{prefix}.fc2.bias": _t(C)}
    if variant == "stablelm":
        return {f"{prefix}.gate_proj.weight": _t(F, C), f"{prefix}.up_proj.weight": _t(F, C),
                f"{prefix}.down_proj.weight": _t(C, F)}
    return {f"{prefix}.w1.weight": _t(F, C), f"{prefix}.w2.weight": _t(F, C), f"{prefix}.c_proj.weight": _t(C, F)}


def reference_state(variant: str, vocab: int) -> dict[str, torch.Tensor]:
    """A state dict in the released layout; layer 0 is MoE (sparse mode), layer 1 dense."""
    torch.manual_seed({"phi": 1, "stablelm": 2, "qwen": 3}[variant])
    root, layers = ("transformer.", "transformer.h") if variant == "qwen" else ("model.", "model.layers")
    sd: dict[str, torch.Tensor] = {}
    sd[root + ("wte.weight" if variant == "qwen" else "embed_tokens.weight")] = _t(vocab, C)
    for i in range(L):
        p = f"{layers}.{i}"
        if variant == "qwen":
            sd |= _norm(f"{p}.ln_1", False) | _norm(f"{p}.ln_2", False)
            sd |= {f"{p}.attn.c_attn.weight": _t(3 * C, C), f"{p}.attn.c_attn.bias": _t(3 * C),
                   f"{p}.attn.c_proj.weight": _t(C, C)}
        else:
            for proj in ("q_proj", "k_proj", "v_proj"):
                sd |= {f"{p}.self_attn.{proj}.weight": _t(C, C), f"{p}.self_attn.{proj}.bias": _t(C)}
            out_proj = "dense" if variant == "phi" else "o_proj"
            sd[f"{p}.self_attn.{out_proj}.weight"] = _t(C, C)
            if variant == "phi":
                sd[f"{p}.self_attn.dense.bias"] = _t(C)
            sd |= _norm(f"{p}.input_layernorm", True)
            if variant == "stablelm":
                sd |= _norm(f"{p}.post_attention_layernorm", True)
            sd[f"{p}.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # a cached buffer some checkpoints carry
        if i == 0:
            sd[f"{p}.mlp.deepspeed_moe.gate.wg.weight"] = _t(E, C, scale=1.0)
            for j in range(E):
                sd |= _ffn(f"{p}.mlp.deepspeed_moe.experts.deepspeed_experts.{j}", variant)
        else:
            sd |= _ffn(f"{p}.mlp", variant)
    final = {"qwen": "ln_f", "phi": "final_layernorm", "stablelm": "norm"}[variant]
    sd |= _norm(root + final, variant != "qwen")
    sd["lm_head.weight"] = _t(vocab, C)
    if variant == "phi":
        sd["lm_head.bias"] = _t(vocab)
    sd |= {root + "mm_projector.image_spatial_proj.0.weight": _t(C, VISION_HIDDEN),
           root + "mm_projector.image_spatial_proj.0.bias": _t(C),
           root + "mm_projector.image_spatial_proj.2.weight": _t(C, C),
           root + "mm_projector.image_spatial_proj.2.bias": _t(C)}
    return sd


def reference_config(variant: str, tok) -> dict:
    vocab = len(tok) + 8  # released LMs have spare embedding rows
    moe = {"moe_enable": True, "moe_mode": "sparse", "moe_layers_idx": [0], "ep_size": 1, "num_experts": [E],
           "top_k_experts": 2, "capacity_factor": 1.5, "eval_capacity_factor": 2.0, "min_capacity": 0,
           "use_residual": False, "router_aux_loss_coef": 0.01, "train_modules": ["fc1", "fc2", "wg"]}
    mm = {"mm_image_tower": "openai/clip-vit-large-patch14-336", "mm_vision_select_layer": -2,
          "mm_vision_select_feature": "patch", "image_projector_type": "mlp2x_gelu", "image_aspect_ratio": "pad",
          "mm_hidden_size": VISION_HIDDEN, "mm_use_im_start_end": False}
    base = {"vocab_size": vocab, "hidden_size": C, "num_hidden_layers": L, "num_attention_heads": H,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "moe": moe, **mm}
    if variant == "phi":
        return {**base, "model_type": "moe_llava_phi", "intermediate_size": F, "num_key_value_heads": H,
                "hidden_act": "gelu_new", "partial_rotary_factor": 0.5, "layer_norm_eps": 1e-5,
                "max_position_embeddings": 512, "rope_theta": 10000.0, "qk_layernorm": False}
    if variant == "stablelm":
        return {**base, "model_type": "moe_llava_stablelm", "intermediate_size": F, "num_key_value_heads": H,
                "hidden_act": "silu", "rope_pct": 0.25, "rope_theta": 10000, "norm_eps": 1e-5,
                "use_qkv_bias": True, "max_position_embeddings": 512}
    return {**base, "model_type": "moe_llava_qwen", "intermediate_size": 2 * F, "kv_channels": C // H,
            "rotary_pct": 1.0, "rotary_emb_base": 10000, "layer_norm_epsilon": 1e-6, "seq_length": 512,
            "no_bias": True}


def write_reference(root: Path, variant: str) -> tuple[Path, dict[str, torch.Tensor]]:
    tok = make_tokenizer({"qwen": "qwen2"}.get(variant, variant))
    src = root / f"MoE-LLaVA-{variant}"
    src.mkdir()
    config = reference_config(variant, tok)
    state = reference_state(variant, config["vocab_size"])
    save_file(state, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(src)
    return src, state


def ref_ffn(variant: str, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Each family's FFN written from its own formula (not transformers' modules)."""
    lin = lambda name, v: v @ w[f"{name}.weight"].T + w.get(f"{name}.bias", 0)
    if variant == "phi":
        return lin("fc2", torch.nn.functional.gelu(lin("fc1", x), approximate="tanh"))
    if variant == "stablelm":
        return lin("down_proj", torch.nn.functional.silu(lin("gate_proj", x)) * lin("up_proj", x))
    return lin("c_proj", lin("w1", x) * torch.nn.functional.silu(lin("w2", x)))


def ref_moe_loop(variant: str, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Plain loop over tokens and experts, from the raw reference tensors."""
    p = ("transformer.h.0" if variant == "qwen" else "model.layers.0") + ".mlp.deepspeed_moe."
    wg = state[p + "gate.wg.weight"]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        logits = [float(wg[e] @ x[t]) for e in range(E)]
        z = [math.exp(v - max(logits)) for v in logits]
        probs = [v / sum(z) for v in z]
        top = sorted(range(E), key=lambda e: (-probs[e], e))[:2]
        for e in top:
            prefix = f"{p}experts.deepspeed_experts.{e}."
            w = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            out[t] += probs[e] / sum(probs[i] for i in top) * ref_ffn(variant, w, x[t])
    return out


def test_key_names_from_the_issue() -> None:
    assert convert_key("model.layers.3.mlp.deepspeed_moe.experts.deepspeed_experts.1.fc1.weight", "phi") == \
        "model.language_model.layers.3.mlp.experts.1.fc1.weight"
    assert convert_key("model.layers.0.mlp.deepspeed_moe.experts.deepspeed_experts.2.up_proj.weight", "stablelm") \
        == "model.language_model.layers.0.mlp.experts.2.up_proj.weight"
    assert convert_key("transformer.h.4.mlp.deepspeed_moe.experts.deepspeed_experts.0.w2.weight", "qwen") == \
        "model.language_model.layers.4.mlp.experts.0.gate_proj.weight"
    assert convert_key("model.layers.2.mlp.deepspeed_moe.gate.wg.weight", "phi") == \
        "model.language_model.layers.2.mlp.router.weight"
    assert convert_key("model.mm_projector.image_spatial_proj.2.bias", "stablelm") == \
        "model.multi_modal_projector.linear_2.bias"
    assert convert_key("transformer.image_tower.image_tower.vision_model.post_layernorm.weight", "qwen") == \
        "model.vision_tower.vision_model.post_layernorm.weight"
    assert convert_key("model.layers.1.self_attn.rotary_emb.inv_freq", "phi") is None
    with pytest.raises(BuildError, match="unexpected weight"):
        convert_key("vision.encoder.weight", "phi")
    q, k, v = torch.arange(3 * 4 * 2.0).reshape(12, 2).chunk(3)
    split = convert_state_dict({"transformer.h.0.attn.c_attn.weight": torch.cat([q, k, v])}, "qwen")
    torch.testing.assert_close(split["model.language_model.layers.0.self_attn.k_proj.weight"], k)


@pytest.mark.parametrize("variant", ["phi", "stablelm", "qwen"])
def test_convert_released_layout(variant: str, parts, tmp_path: Path, red_image) -> None:
    src, state = write_reference(tmp_path, variant)
    out = convert_moe_llava(src, parts("vision", "clip"), tmp_path / "ours")
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    ours = model.state_dict()
    for key, tensor in state.items():  # every reference tensor landed, unchanged
        if key.endswith((".attn.c_attn.weight", ".attn.c_attn.bias", "inv_freq")):
            continue
        torch.testing.assert_close(ours[convert_key(key, variant)], tensor, rtol=0, atol=0)
    if variant == "qwen":
        qkv = state["transformer.h.1.attn.c_attn.bias"]
        torch.testing.assert_close(ours["model.language_model.layers.1.self_attn.v_proj.bias"], qkv[2 * C:])
    x = torch.randn(7, C)
    with torch.no_grad():
        got = model.model.language_model.layers[0].mlp(x[None])[0]
    torch.testing.assert_close(got, ref_moe_loop(variant, state, x), rtol=1e-4, atol=1e-5)

    from llavakit import Pipeline

    pipe = Pipeline(out, backend="torch")
    assert "A chat between a curious user" in pipe.backend.render([{"role": "user", "content": "hi"}])
    assert pipe.backend.processor.image_processor.do_pad  # the original's pad-to-square
    result = pipe.generate("What is it?", images=[red_image], max_new_tokens=3, ignore_eos=True)
    assert len(result.token_ids) == 3 and sum(pipe.backend.expert_usage()[0]) > 0


def test_convert_refuses_what_it_cannot_reproduce(parts, tmp_path: Path) -> None:
    src, state = write_reference(tmp_path, "stablelm")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "image_projector_type": "qformer4_36"}))
    with pytest.raises(BuildError, match="qformer4_36"):
        convert_moe_llava(src, parts("vision", "clip"), tmp_path / "a")
    (src / "config.json").write_text(json.dumps({**config, "model_type": "llava_stablelm"}))
    with pytest.raises(BuildError, match="not a released MoE-LLaVA"):
        convert_moe_llava(src, parts("vision", "clip"), tmp_path / "b")
    (src / "config.json").write_text(json.dumps(config))
    del state["model.layers.0.mlp.deepspeed_moe.gate.wg.weight"]
    save_file(state, src / "model.safetensors")
    with pytest.raises(BuildError, match="missing .*router"):
        convert_moe_llava(src, parts("vision", "clip"), tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_cli_convert_moe_llava(parts, tmp_path: Path) -> None:
    src, _ = write_reference(tmp_path, "phi")
    vision = str(parts("vision", "clip"))
    cli = str(Path(sys.executable).with_name("llavakit"))
    done = subprocess.run([cli, "convert", "moe-llava", str(src), "--vision", vision, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o" / "config.json").read_text())["model_type"] == "moe_llava"
    again = subprocess.run([cli, "convert-moe", str(src), "--vision", vision, "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, check=False)  # the hidden pre-group alias
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = subprocess.run([cli, "--help"], capture_output=True, text=True, check=False).stdout
    assert "convert" in listed and "convert-moe" not in listed


def test_vision_tower_defaults_to_config(parts, tmp_path: Path) -> None:
    src, _ = write_reference(tmp_path, "stablelm")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "mm_image_tower": str(parts("vision", "clip"))}))
    out = convert_moe_llava(src, None, tmp_path / "o")
    assert json.loads((out / "llavakit_convert.json").read_text())["mm_image_tower"] == str(parts("vision", "clip"))
    del config["mm_image_tower"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(BuildError, match="no mm_image_tower; pass the CLIP tower with --vision"):
        convert_moe_llava(src, None, tmp_path / "p")


def test_pad_to_square_same_pixels_in_torch_and_the_engine(parts, tmp_path: Path) -> None:
    """The converted processor pads (image_aspect_ratio: pad); the engine's NumPy path gives the same bits."""
    from transformers import AutoProcessor

    from llavakit.runtime.image_processing import ImageProcessor

    src, _ = write_reference(tmp_path, "stablelm")
    out = convert_moe_llava(src, parts("vision", "clip"), tmp_path / "ours")
    torch_proc = AutoProcessor.from_pretrained(out).image_processor
    engine_proc = ImageProcessor.from_pretrained(out)
    assert engine_proc.do_pad
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 52, 3), dtype=np.uint8))  # 52 x 20
    pixels = engine_proc(wide)  # (1, 3, S, S)
    np.testing.assert_array_equal(pixels, torch_proc(wide, return_tensors="np")["pixel_values"])
    mean, std = np.asarray(engine_proc.image_mean), np.asarray(engine_proc.image_std)
    band = (np.floor(mean * 255) / 255 - mean) / std  # the mean colour, normalised
    np.testing.assert_allclose(pixels[0, :, 0, :], np.broadcast_to(band[:, None], pixels[0, :, 0, :].shape),
                               atol=1e-5)  # top row: padding, not picture
    unpadded = dataclasses.replace(engine_proc, do_pad=False)(wide)
    assert not np.allclose(unpadded, pixels)  # without the pad, the sides are cropped away instead


def test_converted_model_on_openvino_equals_torch(parts, tmp_path: Path) -> None:
    """Released layout → convert → export → our engine: same greedy tokens and expert usage as torch."""
    from llavakit import Pipeline
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino

    src, _ = write_reference(tmp_path, "phi")
    out = convert_moe_llava(src, parts("vision", "clip"), tmp_path / "ours")
    ov_dir = export_openvino(out, tmp_path / "ov", CompressionOptions(weights="fp32", vision="fp32",
                                                                      text_embeddings="fp32"), show_progress=False)
    tall = Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 16, 3), dtype=np.uint8))  # 16 x 45
    torch_pipe, ov_pipe = Pipeline(out, backend="torch"), Pipeline(ov_dir, precise=True)
    a = torch_pipe.generate("What is it?", images=[tall], max_new_tokens=8, ignore_eos=True)
    b = ov_pipe.generate("What is it?", images=[tall], max_new_tokens=8, ignore_eos=True)
    assert a.token_ids == b.token_ids
    assert b.metrics.expert_usage == a.metrics.expert_usage
    assert sum(b.metrics.expert_usage[0]) == 2 * (b.metrics.prompt_tokens + 7)  # top-2 per computed position
