"""NNCF compression of the three exported parts: INT4 language model, INT8 vision, INT8 text embeddings.

The defaults are those of our seed document (OpenVINO's LLaVA-NeXT notebook),
each kept for a reason:

- **Language model: INT4_SYM, group size 64, ratio 0.6, the rest INT8_ASYM,
  data-free** (``nncf.compress_weights``). Decoding one token reads every LM
  weight once, so on a CPU the LM's bytes set the speed (DESIGN.md: the decode
  floor is bytes read over memory bandwidth); 4 bit is where most of the
  win is. Weight-only compression needs no calibration data, which keeps
  ``llavakit export`` one offline command. ``ratio`` 0.6 puts about 60 % of the
  weights of the ratio-defining layers (every MatMul but the LM head) in 4 bit,
  whole layers at a time — NNCF picks the least sensitive ones — and the rest,
  plus the LM head (and embeddings), in INT8, which costs little size and saves
  much accuracy. ``group_size`` 64 gives every 64 input channels of a row their
  own scale. When a layer's input channels
  are not a multiple of the group size (tiny test models, odd widths),
  ``group_size_fallback="adjust"`` lets NNCF use the largest power of two that
  divides them (at least 32), else that layer goes to INT8; NNCF's own default
  would be an error.
- **Data-aware LM methods** (``awq``, ``scale_estimation``, ``gptq``) are off by default
  and need a dataset of LM inputs; without one we refuse and say to pass
  ``--calibration``. A dataset alone (neither method on) still helps: NNCF then
  ranks layers for the 4/8-bit split by activation variance instead of weight
  error.
- **Vision encoder: INT8 post-training quantization** of weights *and*
  activations (``nncf.quantize``, ``model_type=TRANSFORMER``) on calibration
  images. The vision tower is compute-bound (every patch through every layer),
  so INT8 activations let its MatMuls run as INT8 kernels (VNNI/AMX); weight-only compression
  would only shrink it. SmoothQuant runs first for transformers: in NNCF 3.4
  the knob is ``AdvancedQuantizationParameters(smooth_quant_alphas=
  AdvancedSmoothQuantParameters(matmul=alpha))`` (default 0.95 for MatMuls,
  off for convolutions); the seed's ``smooth_quant_alpha=0.6`` is the
  deprecated spelling of the same thing. ``smooth_quant_alpha=None`` keeps
  NNCF's default, a negative value turns SmoothQuant off.
- **Text embeddings: INT8_ASYM weight-only.** The embedding table is one big
  Gather: per-row INT8 halves it (vs FP16) with negligible error, and a
  lookup gains nothing from 4 bit's extra decode work.

``"fp16"`` is not a compression NNCF performs: every function returns the model
unchanged, and the saver writes it with ``ov.save_model(...,
compress_to_fp16=True)`` (:func:`save_as_fp16` says which parts want that;
only ``"fp32"`` parts must be saved without it — for compressed parts it only
touches the few float constants left, such as norm weights).

Stateful language models and data-aware methods (read from NNCF 3.4's
``nncf/openvino/engine.py`` and checked by the tests): NNCF compiles the model
as it is, ReadValue/Assign state included, and before *every* dataset item it
calls ``infer_request.reset_state()`` — each item is an independent prefill from
an empty KV cache. So an item is ``{"inputs_embeds" (1, T, D), "attention_mask"
(1, T) of ones, "position_ids" [[0..T-1]], "beam_idx" [0]}`` (see
:func:`prefill_inputs`). To calibrate on decode steps too, an item may carry
``nncf_reset_state: False`` (NNCF's ``NNCF_DATASET_RESET_STATE_KEY``) to keep
the state of the previous item; its attention mask then spans past + new
tokens. We check this: a mask longer than the new tokens without that key would
be silently wrong (NNCF resets the state and runs anyway), so it is an error
here. Every ReadValue needs an initializer (``stateful.py`` gives each one):
NNCF's subgraph extraction refuses one without, and the CPU plugin of
OpenVINO 2026.4 did not even compile such a model in our tests.

Every function may edit the model it is given in place (``nncf.compress_weights``
does) — use the returned model, and ``model.clone()`` first to keep the original.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from llavakit.errors import LlavakitError

WEIGHTS = ("fp32", "fp16", "int8", "int4")
LM_MODES = ("int4_sym", "int4_asym")
VISION = ("int8", "int8_weights", "fp16", "fp32")
TEXT_EMBEDDINGS = ("int8", "fp16", "fp32")
GROUP_SIZE_FALLBACKS = ("adjust", "ignore", "error")
PARTS = ("language", "vision", "text_embeddings")
#: The data-aware 4-bit methods: CompressionOptions fields named as ``nncf.compress_weights`` arguments.
DATA_AWARE = ("awq", "scale_estimation", "gptq", "lora_correction")
#: How the export report names each of them.
DATA_AWARE_NAMES = {"awq": "AWQ", "scale_estimation": "scale estimation", "gptq": "GPTQ",
                    "lora_correction": "LoRA correction"}

#: Dataset key NNCF's OpenVINO engine reads to decide whether to reset the model state before an item.
RESET_STATE_KEY = "nncf_reset_state"


class CompressionError(LlavakitError):
    """Compression options are invalid, or NNCF could not compress a part with them."""


@dataclass
class CompressionOptions:
    """What each exported part is compressed to; the defaults are the seed notebook's (module docstring).

    weights: the language model's target. "int4" = ``lm_mode`` 4-bit on ``ratio`` of the
        layers, INT8_ASYM on the rest; "int8" = INT8_ASYM weight-only, per channel, on every
        layer (group_size / ratio / lm_mode do not apply); "fp16" / "fp32" = uncompressed.
    lm_mode: "int4_sym" (no zero point, faster) or "int4_asym" (zero point, a little more accurate).
    group_size: input channels sharing one scale in 4 bit; -1 = one scale per output channel.
    ratio: share of the weights of the ratio-defining layers (every MatMul but the LM head) in 4 bit,
        the rest INT8; NNCF assigns whole layers, so small models land near it.
    all_layers: also put the LM head (and embeddings) in 4 bit.
    awq / scale_estimation / gptq: data-aware 4-bit corrections; need a dataset of LM inputs. GPTQ
        (layer-wise error feedback, NNCF's ``gptq=True``) is the slowest; on SmolLM2-135M it agreed with fp32
        less than AWQ + scale estimation did (``benchmarks/quantization.md``).
    lora_correction: NNCF's LoRA correction: a low-rank float term per 4-bit layer fitted to the
        quantization error on the calibration data (more weights and time; not with gptq).
    group_size_fallback: layers whose input channels are not a multiple of ``group_size``:
        "adjust" (largest power-of-two group >= 32 that divides them, else INT8),
        "ignore" (leave them in float), "error" (NNCF's default: refuse).
    vision: "int8" (PTQ of activations and weights on calibration images), "int8_weights"
        (INT8_ASYM weight-only, no images needed), "fp16", "fp32".
    text_embeddings: "int8" (INT8_ASYM weight-only), "fp16", "fp32".
    smooth_quant_alpha: SmoothQuant strength for the vision MatMuls; None = NNCF's default
        (0.95), negative = off.
    calibration_size: at most this many calibration items are used (vision images, LM samples).
    """

    weights: str = "int4"
    lm_mode: str = "int4_sym"
    group_size: int = 64
    ratio: float = 0.6
    all_layers: bool = False
    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    lora_correction: bool = False
    group_size_fallback: str = "adjust"
    vision: str = "int8"
    text_embeddings: str = "int8"
    smooth_quant_alpha: float | None = None
    calibration_size: int = 32

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`CompressionError` naming the first bad value and what is allowed."""
        for name, allowed in (("weights", WEIGHTS), ("lm_mode", LM_MODES), ("vision", VISION),
                              ("text_embeddings", TEXT_EMBEDDINGS), ("group_size_fallback", GROUP_SIZE_FALLBACKS)):
            value = getattr(self, name)
            if value not in allowed:
                raise CompressionError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or \
                (self.group_size != -1 and self.group_size <= 0):
            raise CompressionError(f"group_size={self.group_size!r} must be a positive integer or -1 (per channel)")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float) or not 0 <= self.ratio <= 1:
            raise CompressionError(f"ratio={self.ratio!r} must be a number from 0 to 1 (share of layers in 4 bit)")
        if self.smooth_quant_alpha is not None and (
                not isinstance(self.smooth_quant_alpha, int | float) or not self.smooth_quant_alpha <= 1):
            raise CompressionError(f"smooth_quant_alpha={self.smooth_quant_alpha!r} must be None (NNCF's default), "
                                   "a number from 0 to 1, or negative to turn SmoothQuant off")
        if isinstance(self.calibration_size, bool) or not isinstance(self.calibration_size, int) or \
                self.calibration_size < 1:
            raise CompressionError(f"calibration_size={self.calibration_size!r} must be a positive integer")
        if self.gptq and self.lora_correction:
            raise CompressionError("gptq and lora_correction cannot be combined (NNCF); pick one")
        data_aware = [name for name in DATA_AWARE if getattr(self, name)]
        if data_aware and self.weights != "int4":
            raise CompressionError(f"{' and '.join(data_aware)} tune 4-bit weights, but weights={self.weights!r}; "
                                   "use weights='int4' or turn them off")

    @property
    def data_aware(self) -> bool:
        """Whether the language model's compression needs a calibration dataset."""
        return any(getattr(self, name) for name in DATA_AWARE)

    def method_note(self) -> str:
        """The data-aware methods in use, for the export report, e.g. " + AWQ + scale estimation" ("" if none).

        The graph alone cannot show them (AWQ and scale estimation only change the values of the 4-bit weights),
        so the report would otherwise describe an AWQ export exactly like a data-free one.
        """
        return "".join(f" + {DATA_AWARE_NAMES[name]}" for name in DATA_AWARE if getattr(self, name))


def save_as_fp16(opts: CompressionOptions, part: str) -> bool:
    """The ``compress_to_fp16`` to pass to ``ov.save_model`` for ``part`` ("language", "vision", "text_embeddings").

    True unless that part was asked to stay in fp32: an "fp16" part becomes FP16 only there,
    and a compressed part keeps its integer weights and stores its few float leftovers in FP16.
    """
    if part not in PARTS:
        raise CompressionError(f"part={part!r} is not one of {', '.join(map(repr, PARTS))}")
    setting = {"language": opts.weights, "vision": opts.vision, "text_embeddings": opts.text_embeddings}[part]
    return setting != "fp32"


# ---------------------------------------------------------------------------------------------- language model


def prefill_inputs(inputs_embeds: np.ndarray) -> dict[str, np.ndarray]:
    """One calibration item for the stateful LM: a prefill of ``inputs_embeds`` (1, T, D) from an empty cache."""
    embeds = np.asarray(inputs_embeds, dtype=np.float32)
    if embeds.ndim != 3:
        raise CompressionError(f"inputs_embeds must be (B, T, D), got shape {embeds.shape}")
    batch, length, _ = embeds.shape
    return {
        "inputs_embeds": embeds,  # (B, T, D)
        "attention_mask": np.ones((batch, length), dtype=np.int64),  # (B, T)
        "position_ids": np.tile(np.arange(length, dtype=np.int64), (batch, 1)),  # (B, T)
        "beam_idx": np.arange(batch, dtype=np.int32),  # (B,)
    }


def compress_language_model(
    model: ov.Model, opts: CompressionOptions, dataset: list[dict[str, np.ndarray]] | None = None
) -> ov.Model:
    """The language model with ``opts.weights`` applied (see the module docstring); edits ``model`` in place.

    ``dataset``: LM input dicts (see :func:`prefill_inputs`); required by awq / scale_estimation,
    optional otherwise (it makes the 4/8-bit layer choice data-aware). Ignored for fp16/fp32/int8.
    """
    import nncf

    opts.validate()
    if opts.data_aware and not dataset:
        methods = " and ".join(name for name in DATA_AWARE if getattr(opts, name))
        raise CompressionError(f"{methods} need calibration data for the language model: pass --calibration "
                               "(a folder of images or a LLaVA JSON dataset), or turn them off")
    if opts.weights in ("fp32", "fp16"):
        return model  # fp16: the saver's compress_to_fp16 (save_as_fp16)
    if opts.weights == "int8":
        return _nncf(lambda: nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM), "language model")

    kwargs = {}
    if dataset:
        items = _check_lm_dataset(model, dataset)
        kwargs = {"dataset": nncf.Dataset(items), "subset_size": min(opts.calibration_size, len(items)),
                  **{name: getattr(opts, name) for name in DATA_AWARE}}
    fallback = nncf.quantization.advanced_parameters.GroupSizeFallbackMode(opts.group_size_fallback)
    mode = nncf.CompressWeightsMode.INT4_SYM if opts.lm_mode == "int4_sym" else nncf.CompressWeightsMode.INT4_ASYM
    return _nncf(lambda: nncf.compress_weights(
        model,
        mode=mode,
        group_size=opts.group_size,
        ratio=opts.ratio,
        all_layers=opts.all_layers,
        advanced_parameters=nncf.AdvancedCompressionParameters(group_size_fallback_mode=fallback),
        **kwargs,
    ), "language model")


def _check_lm_dataset(model: ov.Model, dataset: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Items with every model input, cast to the input's element type; a clear error for anything else."""
    expected = {port.get_any_name(): port for port in model.inputs}
    stateful = len(model.get_sinks()) > 0
    items = []
    for index, item in enumerate(dataset):
        if not isinstance(item, dict):
            raise CompressionError(f"calibration item {index} is a {type(item).__name__}, expected a dict of inputs")
        missing = sorted(set(expected) - set(item))
        unknown = sorted(set(item) - set(expected) - {RESET_STATE_KEY})
        if missing or unknown:
            raise CompressionError(f"calibration item {index}: missing inputs {missing}, unknown keys {unknown}; "
                                   f"the language model takes {sorted(expected)} (+ optional {RESET_STATE_KEY!r})")
        cast = {name: np.asarray(item[name], dtype=port.get_element_type().to_dtype())
                for name, port in expected.items()}
        if RESET_STATE_KEY in item:
            cast[RESET_STATE_KEY] = bool(item[RESET_STATE_KEY])
        if stateful and "attention_mask" in cast and "inputs_embeds" in cast and cast.get(RESET_STATE_KEY, True):
            new, total = cast["inputs_embeds"].shape[1], cast["attention_mask"].shape[-1]
            if total != new:
                raise CompressionError(
                    f"calibration item {index}: attention_mask covers {total} tokens but inputs_embeds has {new}; "
                    f"NNCF resets the KV cache before each item, so an item is a prefill (mask length = T). "
                    f"To continue the previous item's cache, add {RESET_STATE_KEY!r}: False to the item")
        items.append(cast)
    return items


# ---------------------------------------------------------------------------------------------- other parts


def compress_text_embeddings(model: ov.Model, opts: CompressionOptions) -> ov.Model:
    """The text-embeddings model with ``opts.text_embeddings`` applied; edits ``model`` in place."""
    import nncf

    opts.validate()
    if opts.text_embeddings != "int8":
        return model  # fp16: the saver's compress_to_fp16
    return _nncf(lambda: nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM), "text embeddings")


def quantize_vision(model: ov.Model, opts: CompressionOptions, pixel_values: list[np.ndarray] | None) -> ov.Model:
    """The vision-embeddings model with ``opts.vision`` applied.

    ``pixel_values``: calibration images, each (1, 3, H, W) float32 as the processor makes
    them; needed for "int8" only, of which the first ``opts.calibration_size`` are used.
    """
    import nncf

    opts.validate()
    if opts.vision in ("fp32", "fp16"):
        return model
    if opts.vision == "int8_weights":
        return _nncf(lambda: nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM), "vision encoder")

    if not pixel_values:
        raise CompressionError("vision='int8' quantizes activations and needs calibration images: pass "
                               "--calibration (a folder of images or a LLaVA JSON dataset), or use "
                               "vision='int8_weights' (weight-only, no images)")
    images = [_check_image(model, image, index) for index, image in enumerate(pixel_values[: opts.calibration_size])]
    advanced = nncf.AdvancedQuantizationParameters()
    if opts.smooth_quant_alpha is not None:
        advanced.smooth_quant_alphas = nncf.AdvancedSmoothQuantParameters(matmul=opts.smooth_quant_alpha)
    return _nncf(lambda: nncf.quantize(
        model,
        nncf.Dataset(images),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(images),
        advanced_parameters=advanced,
    ), "vision encoder")


def _check_image(model: ov.Model, image: np.ndarray, index: int) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    shape = model.inputs[0].get_partial_shape()
    if array.ndim != 4 or array.shape[0] != 1 or (shape.rank.is_static and len(shape) != 4):
        raise CompressionError(f"calibration image {index} has shape {array.shape}; expected (1, 3, H, W)")
    for axis in range(1, 4):
        if shape.rank.is_static and shape[axis].is_static and shape[axis].get_length() != array.shape[axis]:
            raise CompressionError(f"calibration image {index} has shape {array.shape}; the vision encoder takes "
                                   f"{shape}: preprocess the images with the model's processor")
    return array


def _nncf(call, what: str):
    """Run an NNCF call; its own errors (bad group size, unsupported option, ...) become CompressionError."""
    import nncf

    errors = (nncf.ValidationError, nncf.ParameterNotSupportedError, nncf.InvalidGroupSizeError,
              nncf.UnsupportedModelError, nncf.UnsupportedDatasetError)
    try:
        return call()
    except errors as exc:
        raise CompressionError(f"NNCF could not compress the {what}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- inspection

_WEIGHTED = {"MatMul": (0, 1), "Gather": (0,), "Convolution": (1,), "GroupConvolution": (1,)}
#: ops between a weight constant and its consumer: decompression (Convert, Subtract zero point,
#: Multiply scale, Reshape groups), layout, and weight FakeQuantize.
_DECOMPRESSION = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                  "FakeQuantize", "FakeConvert"}


_FLOAT_NAMES = {"f32": "FP32", "f16": "FP16", "bf16": "BF16", "f64": "FP64", "f8e4m3": "FP8_E4M3", "f8e5m2": "FP8_E5M2"}


@dataclass
class WeightInfo:
    """One weight tensor as stored in the graph."""

    name: str
    consumer: str  # MatMul / Gather / Convolution / GroupConvolution
    element_type: str  # u4 i4 u8 i8 f16 f32 bf16 ...
    params: int
    nbytes: int
    group_size: int | None  # for integer weights: channels per scale, -1 = per channel
    order: int  # topological position of the consumer


def _as_model(model: ov.Model | str | Path) -> ov.Model:
    return model if isinstance(model, ov.Model) else ov.Core().read_model(str(model))


def weight_infos(model: ov.Model | str | Path) -> list[WeightInfo]:
    """Every weight constant feeding a MatMul/Gather/Convolution (through its decompression ops), once each."""
    model = _as_model(model)
    seen: set[int] = set()
    infos = []
    for order, op in enumerate(model.get_ordered_ops()):
        for port in _WEIGHTED.get(op.get_type_name(), ()):
            if port >= op.get_input_size():
                continue
            constant = _weight_constant(op.input_value(port).get_node())
            if constant is None or constant.get_instance_id() in seen:
                continue
            seen.add(constant.get_instance_id())
            element = constant.get_element_type()
            shape = list(constant.shape)
            group = None
            if element.is_integral_number():
                group = shape[-1] if len(shape) == 3 else -1  # (out, groups, group_size) or (out, in)
            infos.append(WeightInfo(constant.get_friendly_name(), op.get_type_name(), element.get_type_name(),
                                    math.prod(shape), constant.get_byte_size(), group, order))
    return infos


def _weight_constant(node) -> ov.Node | None:
    """The largest constant behind ``node`` if everything behind it is constants and decompression ops."""
    constants, stack, visited = [], [node], set()
    while stack:
        current = stack.pop()
        if current.get_instance_id() in visited:
            continue
        visited.add(current.get_instance_id())
        kind = current.get_type_name()
        if kind == "Constant":
            constants.append(current)
        elif kind in _DECOMPRESSION:
            stack.extend(value.get_node() for value in current.input_values())
        else:
            return None  # an activation (Parameter, ReadValue, any computed tensor) flows in
    if not constants:
        return None
    biggest = max(constants, key=lambda c: math.prod(c.shape))
    if sum(dim > 1 for dim in biggest.shape) < 2:
        return None  # scalars and vectors (e.g. rotary inverse frequencies) are not weight matrices
    return biggest


def weight_bytes(model: ov.Model | str | Path) -> dict[str, int]:
    """Bytes of weight tensors per element type, e.g. {"i4": 18432, "u8": 56940} (scales and zero points aside)."""
    totals: Counter[str] = Counter()
    for info in weight_infos(model):
        totals[info.element_type] += info.nbytes
    return dict(totals)


def describe_precision(model: ov.Model | str | Path) -> str:
    """What the graph really holds, e.g. "INT4_SYM g64 (ratio 0.6) + INT8", "INT8 PTQ (9 FakeQuantize)", "FP16".

    4-bit: SYM for i4 weights, ASYM for u4; ``g64`` the group size (``per-channel``
    for -1); ratio = the 4-bit share of the parameters of every MatMul weight but
    an INT8 LM head (NNCF's "ratio-defining" layers). INT8 PTQ = activations quantized
    too (FakeQuantize ops). Float weights left beside integer ones are listed with
    their share of the parameters.

    ``model`` may be a saved ``.xml``: describe what was written — ``compress_to_fp16``
    happens at save time, so an in-memory model about to be saved in FP16 still says FP32.
    """
    model = _as_model(model)
    infos = weight_infos(model)
    activation_fq = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
                        and _weight_constant(op.input_value(0).get_node()) is None)
    if not infos:
        return "no weights"
    bits4 = [i for i in infos if i.element_type in ("i4", "u4")]
    bits8 = [i for i in infos if i.element_type in ("i8", "u8")]
    floats: Counter[str] = Counter()
    for info in infos:
        if info.element_type not in ("i4", "u4", "i8", "u8"):
            floats[_FLOAT_NAMES.get(info.element_type, info.element_type.upper())] += info.params
    total = sum(i.params for i in infos)

    pieces = []
    if bits4:
        mode = "INT4_SYM" if all(i.element_type == "i4" for i in bits4) else (
            "INT4_ASYM" if all(i.element_type == "u4" for i in bits4) else "INT4")
        groups = sorted({i.group_size for i in bits4}, key=lambda g: (g == -1, -g))
        group_text = "/".join("per-channel" if g == -1 else f"g{g}" for g in groups)
        matmuls = sorted((i for i in bits4 + bits8 if i.consumer == "MatMul"), key=lambda i: i.order)
        if matmuls and matmuls[-1].element_type in ("i8", "u8"):
            matmuls = matmuls[:-1]  # the LM head stays INT8 unless all_layers
        defining = sum(i.params for i in matmuls)
        share4 = sum(i.params for i in matmuls if i.element_type in ("i4", "u4")) / defining if defining else 1.0
        pieces.append(f"{mode} {group_text} (ratio {round(share4, 2):g})")
    if bits8:
        pieces.append("INT8" + (f" PTQ ({activation_fq} FakeQuantize)" if activation_fq else ""))
    if not pieces:
        return " + ".join(sorted(floats)) if floats else "no weights"
    for name, params in sorted(floats.items()):
        pieces.append(f"{name} ({100 * params / total:.0f}%)")
    return " + ".join(pieces)


__all__ = [
    "CompressionError",
    "CompressionOptions",
    "compress_language_model",
    "compress_text_embeddings",
    "describe_precision",
    "prefill_inputs",
    "quantize_vision",
    "save_as_fp16",
    "weight_bytes",
    "weight_infos",
]
