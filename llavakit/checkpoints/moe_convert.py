"""Released MoE-LLaVA checkpoints (LanguageBind/MoE-LLaVA-{Phi2,StableLM,Qwen}) → llavakit's ``moe_llava``.

The key mapping is a set of pure functions (``sanitize()`` style, DESIGN.md):
``convert_key`` / ``convert_state_dict`` / ``text_config_from_reference`` /
``moe_from_reference`` take names, tensors and dicts and return the same in our
layout, so they are tested without any weights of the real models.

The reference layouts (PKU-YuanGroup/MoE-LLaVA, confirmed in its model files):
- StableLM (``moe_llava_stablelm``, StableLM-epoch) and Phi-2 (``moe_llava_phi``)
  use ``model.embed_tokens``, ``model.layers.{i}...``, ``lm_head``; names inside a
  layer already equal transformers' StableLm / Phi ones (Phi: ``self_attn.dense``,
  ``mlp.fc1/fc2``, ``model.final_layernorm``, a biased ``lm_head``).
- Qwen (``moe_llava_qwen``, Qwen-1) uses ``transformer.wte``, ``transformer.h.{i}``
  with ``ln_1``, a fused ``attn.c_attn`` (q, k, v stacked, biased), ``attn.c_proj``,
  ``ln_2``, ``mlp.w1/w2/c_proj`` computing ``c_proj(w1(x) · silu(w2(x)))`` and
  ``transformer.ln_f``. It becomes a transformers Qwen2 (q/k/v split, ``w2`` →
  ``gate_proj``, ``w1`` → ``up_proj``, ``c_proj`` → ``down_proj``, intermediate
  size halved as Qwen-1 itself does).
- MoE layers (DeepSpeed): ``<mlp>.deepspeed_moe.experts.deepspeed_experts.{j}.<ffn>``
  → ``<mlp>.experts.{j}.<ffn>``; the gate ``<mlp>.deepspeed_moe.gate.wg.weight``
  → ``<mlp>.router.weight``.
- Projector ``mm_projector.image_spatial_proj.{0,2}`` (mlp2x_gelu) →
  ``multi_modal_projector.linear_{1,2}``; a stored tower
  ``image_tower.image_tower.<CLIP names>`` → ``vision_tower.<CLIP names>``.
  The hub checkpoints name the tower (``mm_image_tower``, e.g.
  openai/clip-vit-large-patch14-336); it is fetched from there unless a local
  directory is given (``--vision``), which is the only way without a hub.

Preprocessing keeps the original's ``image_aspect_ratio: pad`` (pad to a square
with the mean colour, then CLIP's resize/crop) through transformers'
``LlavaImageProcessor(do_pad=True)``, which the OpenVINO export copies and the
engine's NumPy preprocessing reproduces bit for bit (``runtime/image_processing``); the chat template is the reference's
phi/stablelm/qwen conversation ("A chat between a curious user and an
artificial intelligence assistant. …", USER/ASSISTANT, the LM's end token).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from llavakit.errors import BuildError

VARIANTS = {"moe_llava_phi": "phi", "moe_llava_stablelm": "stablelm", "moe_llava_qwen": "qwen"}
_LM = "model.language_model."
_QWEN_LAYER = {
    "ln_1.": "input_layernorm.", "ln_2.": "post_attention_layernorm.", "attn.c_proj.": "self_attn.o_proj.",
    "mlp.w1.": "mlp.up_proj.", "mlp.w2.": "mlp.gate_proj.", "mlp.c_proj.": "mlp.down_proj.",
}
_MOE_KEYS = ("moe_enable", "moe_mode", "moe_layers_idx", "ep_size", "num_experts", "top_k_experts",
             "capacity_factor", "eval_capacity_factor", "min_capacity", "use_residual", "router_aux_loss_coef",
             "train_modules")


def variant_of(config: dict) -> str:
    """'phi', 'stablelm' or 'qwen' from the reference config's model_type; anything else is refused."""
    model_type = config.get("model_type")
    if model_type not in VARIANTS:
        raise BuildError(f"model_type {model_type!r} is not a released MoE-LLaVA; supported: {sorted(VARIANTS)}")
    return VARIANTS[model_type]


def _qwen_ffn(name: str) -> str:
    for old, new in (("w1.", "up_proj."), ("w2.", "gate_proj."), ("c_proj.", "down_proj.")):
        if name.startswith(old):
            return new + name[len(old):]
    raise BuildError(f"unexpected Qwen FFN weight {name!r}")


def convert_key(key: str, variant: str) -> str | None:
    """Our name for one reference weight; None for tensors we rebuild (rotary caches, Qwen's c_attn)."""
    if key.endswith((".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")):
        return None
    root = "transformer." if variant == "qwen" else "model."
    if not key.startswith(root) and not key.startswith("lm_head."):
        raise BuildError(f"unexpected weight {key!r} in a MoE-LLaVA-{variant} checkpoint")
    if key.startswith("lm_head."):
        return key
    rest = key[len(root):]
    if rest.startswith("mm_projector.image_spatial_proj."):
        idx, param = rest[len("mm_projector.image_spatial_proj."):].split(".", 1)
        linear = {"0": "linear_1", "2": "linear_2"}.get(idx)
        if linear is None:
            raise BuildError(f"projector weight {key!r} is not an mlp2x_gelu layer (0 or 2)")
        return f"model.multi_modal_projector.{linear}.{param}"
    if rest.startswith("image_tower.image_tower."):
        return "model.vision_tower." + rest[len("image_tower.image_tower."):]
    moe = re.match(r"^(?:layers|h)\.(\d+)\.mlp\.deepspeed_moe\.(.*)$", rest)
    if moe:
        layer, inner = moe.groups()
        if inner == "gate.wg.weight":
            return f"{_LM}layers.{layer}.mlp.router.weight"
        expert = re.match(r"^experts\.deepspeed_experts\.(\d+)\.(.*)$", inner)
        if not expert:
            raise BuildError(f"unexpected DeepSpeed MoE weight {key!r}")
        j, ffn = expert.groups()
        ffn = _qwen_ffn(ffn) if variant == "qwen" else ffn
        return f"{_LM}layers.{layer}.mlp.experts.{j}.{ffn}"
    if variant != "qwen":
        return _LM + rest  # embed_tokens, layers.{i}.<HF names>, norm / final_layernorm
    if rest.startswith("wte."):
        return _LM + "embed_tokens." + rest[len("wte."):]
    if rest.startswith("ln_f."):
        return _LM + "norm." + rest[len("ln_f."):]
    layer = re.match(r"^h\.(\d+)\.(.*)$", rest)
    if layer:
        i, inner = layer.groups()
        if inner.startswith("attn.c_attn."):
            return None  # split into q/k/v by convert_state_dict
        for old, new in _QWEN_LAYER.items():
            if inner.startswith(old):
                return f"{_LM}layers.{i}.{new}{inner[len(old):]}"
    raise BuildError(f"unexpected weight {key!r} in a MoE-LLaVA-qwen checkpoint")


def convert_state_dict(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """The whole reference state dict in our names (Qwen's fused q/k/v split into three)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        fused = re.match(r"^transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)$", key)
        if variant == "qwen" and fused:
            layer, param = fused.groups()
            q, k, v = tensor.chunk(3, dim=0)  # (3·H, C) → 3 × (H, C); Qwen-1 stacks q, k, v in that order
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{_LM}layers.{layer}.self_attn.{name}.{param}"] = part.contiguous()
            continue
        new = convert_key(key, variant)
        if new is not None:
            out[new] = tensor
    return out


def text_config_from_reference(config: dict) -> dict:
    """A transformers text config (phi / stablelm / qwen2) from the reference's flat LM config."""
    variant = variant_of(config)
    c = config
    common = {"vocab_size": c["vocab_size"], "hidden_size": c["hidden_size"],
              "num_hidden_layers": c["num_hidden_layers"], "num_attention_heads": c["num_attention_heads"],
              "max_position_embeddings": c.get("max_position_embeddings", c.get("seq_length", 2048)),
              "bos_token_id": c.get("bos_token_id"), "eos_token_id": c.get("eos_token_id"),
              "tie_word_embeddings": bool(c.get("tie_word_embeddings", False))}
    if variant == "phi":
        keep = ("intermediate_size", "num_key_value_heads", "hidden_act", "partial_rotary_factor", "rope_theta",
                "layer_norm_eps", "qk_layernorm", "resid_pdrop", "embd_pdrop", "attention_dropout")
        return {"model_type": "phi", **common, **{k: c[k] for k in keep if k in c}}
    if variant == "stablelm":
        return {"model_type": "stablelm", **common, "intermediate_size": c["intermediate_size"],
                "num_key_value_heads": c.get("num_key_value_heads", c["num_attention_heads"]),
                "hidden_act": c.get("hidden_act", "silu"), "partial_rotary_factor": c.get("rope_pct", 0.25),
                "rope_theta": c.get("rope_theta", 10000), "layer_norm_eps": c.get("norm_eps", 1e-5),
                "use_qkv_bias": bool(c.get("use_qkv_bias", False)), "qk_layernorm": False,
                "use_parallel_residual": False}
    if c.get("rotary_pct", 1.0) != 1.0:
        raise BuildError(f"Qwen rotary_pct={c['rotary_pct']} is not supported (released Qwen models use 1.0)")
    return {"model_type": "qwen2", **common, "intermediate_size": c["intermediate_size"] // 2,
            "num_key_value_heads": c["num_attention_heads"], "hidden_act": "silu",
            "rope_theta": c.get("rotary_emb_base", 10000), "rms_norm_eps": c.get("layer_norm_epsilon", 1e-6),
            "use_sliding_window": False}


def moe_from_reference(config: dict) -> dict:
    """The ``moe`` block, key for key (our model validates it)."""
    moe = config.get("moe")
    if not isinstance(moe, dict) or not moe.get("moe_enable", True):
        raise BuildError("the checkpoint's config.json has no enabled 'moe' block; is it a MoE-LLaVA?")
    return {k: moe[k] for k in _MOE_KEYS if k in moe}


def check_multimodal(config: dict) -> None:
    """Refuse mm_* settings this converter does not reproduce, naming them."""
    projector = config.get("image_projector_type", config.get("mm_projector_type", "mlp2x_gelu"))
    if projector != "mlp2x_gelu":
        raise BuildError(f"image_projector_type {projector!r} is not supported; released MoE-LLaVA uses mlp2x_gelu")
    feature = config.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        raise BuildError(f"mm_vision_select_feature {feature!r} is not supported; only 'patch' (CLS dropped)")


def read_state_dict(src: Path) -> dict[str, torch.Tensor]:
    """All weights of a HF directory: safetensors shards, else PyTorch ``.bin`` shards (tensors only)."""
    files = sorted(src.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        return {k: v for f in files for k, v in load_file(f).items()}
    files = sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise BuildError(f"{src} holds no *.safetensors or pytorch_model*.bin weights")
    return {k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}


def convert_moe_llava(src: str | Path, vision: str | Path | None, out: str | Path,
                      tokenizer: str | Path | None = None, force: bool = False) -> Path:
    """Convert a released MoE-LLaVA directory ``src`` to ``out``.

    ``vision``: the CLIP tower's directory or hub id; None takes the config's ``mm_image_tower``.
    """
    from transformers import (
        AutoTokenizer,
        CLIPVisionModel,
        LlavaImageProcessorPil,
        LlavaProcessor,
    )

    from llavakit.checkpoints.atomic import atomic_directory
    from llavakit.checkpoints.build import _add_special_tokens, _load_vision
    from llavakit.checkpoints.resolve import resolve_source
    from llavakit.data.chat_templates import IMAGE_TOKEN
    from llavakit.models.moe_llava import (
        MoeLlavaConfig,
        MoeLlavaForConditionalGeneration,
    )

    out = Path(out)
    if out.exists() and not force:
        raise BuildError(f"output directory {out} already exists; pass --force to replace it")
    src = resolve_source(src, "MoE-LLaVA checkpoint")
    ref = json.loads((src / "config.json").read_text())
    variant = variant_of(ref)
    check_multimodal(ref)
    vision = vision or ref.get("mm_image_tower")
    if not vision:
        raise BuildError(f"{src}/config.json names no mm_image_tower; pass the CLIP tower with --vision")
    vision_dir = resolve_source(vision, "vision tower")
    tower, strategy, extra = _load_vision(vision_dir)
    if not isinstance(tower, CLIPVisionModel):
        raise BuildError(f"MoE-LLaVA uses a CLIP tower ({ref.get('mm_image_tower')}); {vision_dir} is not CLIP")
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or src)
    except (OSError, ValueError) as exc:
        raise BuildError(f"no tokenizer transformers can load in {tokenizer or src} ({exc}); pass --tokenizer "
                         "with the LM's tokenizer in HF format") from exc
    _add_special_tokens(tok)
    text = text_config_from_reference(ref)
    config = MoeLlavaConfig(
        vision_config=tower.config.to_dict(), text_config=text, moe=moe_from_reference(ref),
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy, vision_feature_layer=int(ref.get("mm_vision_select_layer", -2)),
        image_seq_length=(tower.config.image_size // tower.config.patch_size) ** 2,
        tie_word_embeddings=text["tie_word_embeddings"], lm_head_bias=variant == "phi")
    state = convert_state_dict(read_state_dict(src), variant)
    state.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()
                  if f"model.vision_tower.{k}" not in state})  # a stored tower wins over --vision
    with torch.device("meta"):
        model = MoeLlavaForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if config.tie_word_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
    if missing or unexpected:
        raise BuildError(f"checkpoint does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=True)
    model.config.text_config.pad_token_id = tok.pad_token_id
    processor = LlavaProcessor(
        image_processor=_pad_processor(vision_dir, LlavaImageProcessorPil), tokenizer=tok,
        patch_size=tower.config.patch_size, vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra, chat_template=moe_llava_template())
    tok.chat_template = processor.chat_template
    record = {"converted_by": "llavakit", "source": str(src), "variant": variant, "vision": str(vision),
              "mm_image_tower": ref.get("mm_image_tower"), "image_aspect_ratio": ref.get("image_aspect_ratio")}
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "llavakit_convert.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def moe_llava_template() -> str:
    """The reference's phi/stablelm/qwen conversation: LLaVA's vicuna format with 'user' for 'human'."""
    from llavakit.data.chat_templates import VICUNA_TEMPLATE

    return VICUNA_TEMPLATE.replace("curious human", "curious user").replace("the human's", "the user's")


def _pad_processor(vision_dir: Path, cls):
    """CLIP's resize/crop/normalise settings with LLaVA's pad-to-square in front (``image_aspect_ratio: pad``)."""
    from transformers import AutoImageProcessor

    clip = AutoImageProcessor.from_pretrained(vision_dir).to_dict()
    keep = ("size", "crop_size", "do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize",
            "image_mean", "image_std", "do_convert_rgb", "resample")
    return cls(**{k: clip[k] for k in keep if k in clip}, do_pad=True)
