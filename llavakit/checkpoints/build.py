"""Build a LLaVA-1.5 from any CLIP/SigLIP vision tower and any causal LM ("LLaVA on a budget").

Design: the result is a plain transformers ``LlavaForConditionalGeneration``
checkpoint, so it loads with ``AutoModelForImageTextToText`` and everywhere else
without llavakit. Assembly swaps the *loaded* source modules into a LLaVA shell
created on the meta device: nothing is allocated twice (a 7B LM fits once), and
the source weights arrive bit-for-bit unchanged (only new tokenizer rows and the
fresh projector are new).

- ``<image>`` (and ``<pad>`` when the LM has no pad token) are added as special
  tokens; the embedding grows only when the tokenizer outgrows it (Qwen2-style
  LMs already have spare rows). New rows are initialised from the mean of the
  old ones (transformers' ``mean_resizing``) so they start in-distribution.
- Projector ``mlp2x_gelu`` is LLaVA-1.5's Linear-GELU-Linear. ``linear`` (LLaVA-1)
  is expressed in the same transformers module with an identity activation and
  the second matrix set to the identity, so it is exactly one linear map at
  initialisation and still loads in stock transformers.
- CLIP drops its CLS token (``vision_feature_select_strategy="default"``); SigLIP
  has none and keeps every patch ("full"). Features come from layer -2, as in LLaVA.
- The directory is written to a temporary sibling and renamed into place, so an
  interrupted build never leaves a directory that later half-loads.
- ``arch="llava-next"`` makes a transformers ``LlavaNextForConditionalGeneration``
  (LLaVA-1.6, AnyRes): the same tower/projector/LM plus an ``image_newline``
  vector (random, ``N(0, 1/D)`` like transformers' init) and a
  ``LlavaNextImageProcessor`` carrying the tower's resize/normalize settings and
  the grid pinpoints. Default pinpoints are LLaVA-1.6's published ones
  (multiples of 336) re-expressed in tiles of the tower's own image size, so a
  224-px tower gets the same 1x2/2x1/2x2/3x1/1x3 tile grids.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    SiglipVisionModel,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
from transformers.models.llava_next.modeling_llava_next import LlavaNextMultiModalProjector

from llavakit.checkpoints.atomic import atomic_directory
from llavakit.checkpoints.resolve import resolve_source
from llavakit.data.chat_templates import IMAGE_TOKEN, resolve_chat_template
from llavakit.errors import BuildError

PROJECTORS = ("mlp2x_gelu", "linear")
ARCHS = ("llava", "llava-next")
#: vision model_type in config.json -> (transformers class, feature select strategy, extra tokens)
_VISION_TYPES = {
    "clip": (CLIPVisionModel, "default", 1),
    "clip_vision_model": (CLIPVisionModel, "default", 1),
    "siglip": (SiglipVisionModel, "full", 0),
    "siglip_vision_model": (SiglipVisionModel, "full", 0),
}


def build_llava(
    vision: str | Path,
    lm: str | Path,
    out: str | Path,
    projector: str = "mlp2x_gelu",
    chat_template: str | None = None,
    vision_feature_layer: int = -2,
    dtype: str | None = None,
    force: bool = False,
    seed: int = 0,
    arch: str = "llava",
    grid_pinpoints: list[list[int]] | None = None,
) -> Path:
    """Assemble vision tower + projector + LM into a LLaVA-1.5 (or ``arch="llava-next"``) directory at ``out``.

    ``dtype`` ("float32", "bfloat16", "float16") defaults to the LM's own dtype;
    the whole model is stored in one dtype so the projector sees matching inputs.
    ``grid_pinpoints`` (LLaVA-NeXT only, ``[[height, width], ...]`` in pixels, each
    a multiple of the tower's image size) defaults to the published grid scaled to the tower.
    """
    if projector not in PROJECTORS:
        raise BuildError(f"unknown projector {projector!r}; choose one of {PROJECTORS}")
    if arch not in ARCHS:
        raise BuildError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    if grid_pinpoints is not None and arch != "llava-next":
        raise BuildError("grid pinpoints only apply to --arch llava-next")
    out = Path(out)
    if out.exists() and not force:
        raise BuildError(f"output directory {out} already exists; pass --force to replace it")
    vision_dir = resolve_source(vision, "vision encoder")
    lm_dir = resolve_source(lm, "language model")
    try:
        template = resolve_chat_template(chat_template, _lm_chat_template(lm_dir))
    except ValueError as exc:
        raise BuildError(str(exc)) from exc

    vision_model, strategy, extra_tokens = _load_vision(vision_dir)
    lm_model = _load_lm(lm_dir)
    torch_dtype = getattr(torch, dtype) if dtype else lm_model.dtype
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    _add_special_tokens(tokenizer)

    config_class = LlavaNextConfig if arch == "llava-next" else LlavaConfig
    next_fields = {}
    if arch == "llava-next":
        next_fields["image_grid_pinpoints"] = _pinpoints(grid_pinpoints, vision_model.config.image_size)
    config = config_class(
        **next_fields,
        vision_config=vision_model.config.to_dict(),
        text_config=lm_model.config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=vision_feature_layer,
        image_seq_length=(vision_model.config.image_size // vision_model.config.patch_size) ** 2,
        tie_word_embeddings=bool(getattr(lm_model.config, "tie_word_embeddings", False)),
    )
    model = _assemble(config, vision_model, lm_model, projector, seed)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.text_config.pad_token_id = tokenizer.pad_token_id  # only valid once the rows exist
    model.to(torch_dtype)
    model.generation_config = lm_model.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    image_processor = AutoImageProcessor.from_pretrained(vision_dir)
    if arch == "llava-next":
        image_processor = _next_image_processor(image_processor, vision_model.config.image_size,
                                                config.image_grid_pinpoints)
    processor_class = LlavaNextProcessor if arch == "llava-next" else LlavaProcessor
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_model.config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra_tokens,
        chat_template=template,
    )
    tokenizer.chat_template = template
    record = {"built_by": "llavakit", "arch": arch, "vision": str(vision), "lm": str(lm), "projector": projector}
    return _write(out, model, processor, record)


def _pinpoints(given: list[list[int]] | None, tile: int) -> list[list[int]]:
    """The grid pinpoints to store: the given ones checked, else the published ones in ``tile``-px tiles."""
    from llavakit.runtime.anyres import scaled_pinpoints

    if given is None:
        return scaled_pinpoints(tile)
    if not given or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in given):
        raise BuildError(f"grid pinpoints {given!r} must be a non-empty list of [height, width] pairs")
    bad = [list(p) for p in given if min(p) <= 0 or p[0] % tile or p[1] % tile]
    if bad:
        raise BuildError(f"grid pinpoints {bad} are not positive multiples of the tower's image size {tile}")
    return [[int(h), int(w)] for h, w in given]


def _next_image_processor(tower_processor, tile: int, pinpoints: list[list[int]]) -> LlavaNextImageProcessorPil:
    """A LLaVA-NeXT image processor with the tower's resize/normalize settings; every tile is ``tile`` px."""
    keep = ("do_convert_rgb", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
    settings = {k: v for k, v in tower_processor.to_dict().items() if k in keep and v is not None}
    return LlavaNextImageProcessorPil(**settings, size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                                      do_center_crop=True, image_grid_pinpoints=pinpoints)


def _lm_chat_template(lm_dir: Path) -> str | None:
    """The LM's own chat template, if its tokenizer has one."""
    return AutoTokenizer.from_pretrained(lm_dir).chat_template


def _load_vision(vision_dir: Path) -> tuple[torch.nn.Module, str, int]:
    """Load the vision half of a CLIP/SigLIP checkpoint (full dual-tower checkpoints too)."""
    model_type = AutoConfig.from_pretrained(vision_dir).model_type
    if model_type not in _VISION_TYPES:
        raise BuildError(
            f"vision encoder {vision_dir} has model_type {model_type!r}; supported: {sorted(_VISION_TYPES)}"
        )
    cls, strategy, extra_tokens = _VISION_TYPES[model_type]
    if not (vision_dir / "preprocessor_config.json").is_file():
        raise BuildError(f"vision encoder {vision_dir} has no preprocessor_config.json (its image processor)")
    return cls.from_pretrained(vision_dir, dtype="auto"), strategy, extra_tokens


def _load_lm(lm_dir: Path) -> torch.nn.Module:
    """Load a causal LM; refuse anything that is not one, naming what it is."""
    try:
        return AutoModelForCausalLM.from_pretrained(lm_dir, dtype="auto")
    except ValueError as exc:
        raise BuildError(f"language model {lm_dir} is not a causal LM transformers knows: {exc}") from exc


def _add_special_tokens(tokenizer) -> None:
    """Add ``<image>`` and, when missing, a pad token (LLaVA batches need one)."""
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})


def _assemble(
    config: LlavaConfig | LlavaNextConfig, vision_model: torch.nn.Module, lm_model: torch.nn.Module, projector: str,
    seed: int,
) -> LlavaForConditionalGeneration | LlavaNextForConditionalGeneration:
    """Put the loaded towers into a meta-device LLaVA shell and give it a real, fresh projector."""
    is_next = isinstance(config, LlavaNextConfig)
    with torch.device("meta"):
        model = (LlavaNextForConditionalGeneration if is_next else LlavaForConditionalGeneration)(config)
    model.model.vision_tower = vision_model
    model.model.language_model = lm_model.base_model
    model.lm_head = lm_model.get_output_embeddings()
    torch.manual_seed(seed)
    proj = (LlavaNextMultiModalProjector if is_next else LlavaMultiModalProjector)(config).to(lm_model.dtype)
    if projector == "linear":
        with torch.no_grad():
            proj.linear_2.weight.copy_(torch.eye(proj.linear_2.weight.shape[0]))  # (D_text, D_text)
            proj.linear_2.bias.zero_()
    model.model.multi_modal_projector = proj
    if is_next:
        hidden = config.text_config.hidden_size
        newline = torch.randn(hidden) / math.sqrt(hidden)  # (D,) transformers' own init scale
        model.model.image_newline = torch.nn.Parameter(newline.to(lm_model.dtype))
    if config.tie_word_embeddings:
        model.tie_weights()
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise BuildError(f"internal error: tensors not filled from the sources: {left_on_meta[:5]}")
    return model


def _write(out: Path, model: torch.nn.Module, processor: LlavaProcessor | LlavaNextProcessor, record: dict) -> Path:
    """Save model, processor and a record of the sources, all-or-nothing."""
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "llavakit_build.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
