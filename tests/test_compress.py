"""NNCF compression of the exported parts (``llavakit.export.compress``) on tiny random models.

The language model is a tiny Llama (hidden 64 so group size 64 fits, 2 layers,
MLP 128, vocab 300) converted to a *stateful* OpenVINO model with GenAI's inputs,
the shape the exporter writes; the vision part is a tiny CLIP tower + MLP
projector; the text embeddings one embedding table. Random weights make 4-bit
noise large relative to the signal, so accuracy checks compare logits by cosine
similarity and top-1 agreement with generous margins rather than exact values.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.properties.hint as hints
import pytest
import torch
from openvino import opset13 as ops
from openvino._offline_transformations import apply_make_stateful_transformation

from llavakit.errors import LlavakitError
from llavakit.export.compress import (
    CompressionError,
    CompressionOptions,
    compress_language_model,
    compress_text_embeddings,
    describe_precision,
    prefill_inputs,
    quantize_vision,
    save_as_fp16,
    weight_bytes,
)

HIDDEN = 64
RNG = np.random.default_rng(0)


def _convert(module: torch.nn.Module, example, shapes) -> ov.Model:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ov.convert_model(module.eval(), example_input=example, input=shapes)


# ---------------------------------------------------------------------------------------------- tiny models


class _LMWithCache(torch.nn.Module):
    """Llama with the KV cache as explicit tensors: (embeds, mask, positions, k0, v0, k1, v1) → (logits, k0', ...)."""

    def __init__(self, lm) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        for i, layer in enumerate(cache.layers):
            layer.lazy_initialization(past[2 * i], past[2 * i + 1])
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=cache, use_cache=True)
        return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])


def _stateful_llama() -> tuple[torch.nn.Module, ov.Model]:
    """A tiny Llama and its stateful OpenVINO twin (GenAI inputs; KV cache in variables with initializers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=300, max_position_embeddings=256, tie_word_embeddings=False,
                         initializer_range=0.1)  # transformers' 0.02 leaves the layers ~invisible next to the residual
    lm = LlamaForCausalLM(config).eval()
    layers, kv_heads, head_dim = 2, 2, HIDDEN // 4
    example = (torch.randn(1, 3, HIDDEN), torch.ones(1, 5, dtype=torch.int64), torch.arange(2, 5)[None],
               *[torch.randn(1, kv_heads, 2, head_dim) for _ in range(2 * layers)])
    shapes = [ov.PartialShape([-1, -1, HIDDEN]), ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1])]
    shapes += [ov.PartialShape([-1, kv_heads, -1, head_dim])] * (2 * layers)
    model = _convert(_LMWithCache(lm), example, shapes)
    cache_in = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    cache_out = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    for port, name in zip(model.inputs, ["inputs_embeds", "attention_mask", "position_ids", *cache_in]):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, ["logits", *cache_out]):
        port.get_tensor().set_names({name})
    beam_idx = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    model.add_parameters([beam_idx])
    for name in cache_in:
        port = model.input(name)
        consumers = list(port.get_target_inputs())
        gathered = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    apply_make_stateful_transformation(model, dict(zip(cache_in, cache_out)))
    batch = ops.gather(ops.shape_of(model.input("inputs_embeds"), output_type="i64"), ops.constant([0]),
                       ops.constant(0))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":  # start empty: (B, H_kv, 0, d)
            dims = [batch] + [ops.constant(np.array([d], np.int64)) for d in (kv_heads, 0, head_dim)]
            op.set_arguments([ops.broadcast(ops.constant(np.float32(0)), ops.concat(dims, axis=0))])
    model.validate_nodes_and_infer_types()
    return lm, model


class _Vision(torch.nn.Module):
    """CLIP tower → penultimate layer without CLS → 2-layer MLP projector, like LLaVA's vision embeddings."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, image_size=32, patch_size=8)
        self.tower = CLIPVisionModel(config)
        self.projector = torch.nn.Sequential(torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.GELU(),
                                             torch.nn.Linear(HIDDEN, HIDDEN))

    def forward(self, pixel_values):
        hidden = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        return self.projector(hidden)  # (N, P, D)


class _Embeddings(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(300, HIDDEN)

    def forward(self, input_ids):
        return self.embed(input_ids)  # (B, T, D)


@pytest.fixture(scope="module")
def llama():
    return _stateful_llama()


@pytest.fixture(scope="module")
def lm_fp32(llama) -> ov.Model:
    return llama[1]


@pytest.fixture(scope="module")
def lm_int4(lm_fp32) -> ov.Model:
    return compress_language_model(lm_fp32.clone(), CompressionOptions())


@pytest.fixture(scope="module")
def vision_fp32() -> ov.Model:
    torch.manual_seed(0)
    model = _convert(_Vision(), (torch.zeros(1, 3, 32, 32),), [ov.PartialShape([-1, 3, 32, 32])])
    model.inputs[0].get_tensor().set_names({"pixel_values"})
    return model


@pytest.fixture(scope="module")
def calibration_images() -> list[np.ndarray]:
    return [RNG.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(8)]


@pytest.fixture(scope="module")
def vision_int8(vision_fp32, calibration_images) -> ov.Model:
    return quantize_vision(vision_fp32.clone(), CompressionOptions(), calibration_images)


@pytest.fixture(scope="module")
def embeddings_fp32() -> ov.Model:
    torch.manual_seed(0)
    model = _convert(_Embeddings(), (torch.ones(1, 4, dtype=torch.int64),), [ov.PartialShape([-1, -1])])
    model.inputs[0].get_tensor().set_names({"input_ids"})
    return model


# ---------------------------------------------------------------------------------------------- helpers


def _run_lm(model: ov.Model, embeds: np.ndarray, split: int | None = None) -> np.ndarray:
    """Logits (1, T, V) of a prefill of ``embeds`` (1, T, D); with ``split``, prefill then decode the rest."""
    # the CPU plugin keeps the KV cache in u8 by default (~1e-3 off on decode steps): ask for f32
    config = {hints.kv_cache_precision: ov.Type.f32, hints.inference_precision: ov.Type.f32}
    request = ov.compile_model(model, "CPU", config).create_infer_request()
    request.reset_state()
    split = split or embeds.shape[1]
    outs = [request.infer(prefill_inputs(embeds[:, :split]))["logits"].copy()]
    for t in range(split, embeds.shape[1]):
        outs.append(request.infer({
            "inputs_embeds": embeds[:, t:t + 1],
            "attention_mask": np.ones((1, t + 1), np.int64),
            "position_ids": np.array([[t]], np.int64),
            "beam_idx": np.zeros(1, np.int32),
        })["logits"].copy())
    return np.concatenate(outs, axis=1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1), b.reshape(-1)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _bin_size(model: ov.Model, path: Path, fp16: bool = False) -> int:
    ov.save_model(model, path, compress_to_fp16=fp16)
    return path.with_suffix(".bin").stat().st_size


def _ratio(description: str) -> float:
    return float(description.split("(ratio ")[1].split(")")[0])


PROBES = [RNG.standard_normal((1, 12, HIDDEN)).astype(np.float32) for _ in range(3)]


# ---------------------------------------------------------------------------------------------- language model


def test_tiny_stateful_lm_matches_transformers(llama):
    lm, model = llama
    embeds = PROBES[0]
    with torch.no_grad():
        reference = lm(inputs_embeds=torch.from_numpy(embeds), use_cache=False).logits.numpy()
    np.testing.assert_allclose(_run_lm(model, embeds, split=8), reference, atol=1e-4)


def test_int4_default_is_int4_sym_g64_plus_int8(lm_fp32, lm_int4):
    stored = weight_bytes(lm_int4)
    assert set(stored) == {"i4", "u8"}, stored  # 4-bit weights, INT8 for the rest, no float weight left
    assert weight_bytes(lm_fp32).keys() == {"f32"}
    description = describe_precision(lm_int4)
    assert description.startswith("INT4_SYM g64 (ratio ") and description.endswith(") + INT8"), description
    # ratio 0.6 asked; NNCF assigns whole layers, so a 2-layer model lands near it, not on it
    assert 0.3 <= _ratio(description) <= 0.7
    assert describe_precision(lm_fp32) == "FP32"


def test_int4_outputs_stay_close(lm_fp32, lm_int4):
    for embeds in PROBES:
        reference, got = _run_lm(lm_fp32, embeds, split=8), _run_lm(lm_int4, embeds, split=8)
        assert _cosine(reference, got) > 0.98  # seen: 0.996
        assert (reference.argmax(-1) == got.argmax(-1)).mean() >= 0.6  # seen: 0.87 (random logits are near ties)


def test_sizes_shrink(lm_fp32, lm_int4, tmp_path):
    fp32 = _bin_size(lm_fp32, tmp_path / "fp32.xml")
    fp16 = _bin_size(lm_fp32, tmp_path / "fp16.xml", fp16=True)
    int8 = _bin_size(compress_language_model(lm_fp32.clone(), CompressionOptions(weights="int8")),
                     tmp_path / "int8.xml")
    int4 = _bin_size(lm_int4, tmp_path / "int4.xml")
    assert int4 < int8 < fp16 < fp32
    assert int4 < 0.3 * fp32


def test_int8_is_int8_asym_everywhere(lm_fp32):
    model = compress_language_model(lm_fp32.clone(), CompressionOptions(weights="int8"))
    assert weight_bytes(model).keys() == {"u8"}
    assert describe_precision(model) == "INT8"
    assert _cosine(_run_lm(lm_fp32, PROBES[0]), _run_lm(model, PROBES[0])) > 0.999


def test_int4_asym_per_channel_all_layers(lm_fp32):
    opts = CompressionOptions(lm_mode="int4_asym", group_size=-1, ratio=1.0, all_layers=True)
    model = compress_language_model(lm_fp32.clone(), opts)
    assert weight_bytes(model).keys() == {"u4"}  # the LM head too
    assert describe_precision(model) == "INT4_ASYM per-channel (ratio 1)"


def test_group_size_that_does_not_divide_the_channels(lm_fp32):
    # group 128: q/k/v/o/gate/up take 64 input channels, down_proj 128
    adjusted = compress_language_model(lm_fp32.clone(), CompressionOptions(group_size=128, ratio=1.0))
    assert describe_precision(adjusted) == "INT4_SYM g128/g64 (ratio 1) + INT8"
    ignored = compress_language_model(lm_fp32.clone(),
                                      CompressionOptions(group_size=128, ratio=1.0, group_size_fallback="ignore"))
    assert "f32" in weight_bytes(ignored) and "+ FP32 (" in describe_precision(ignored)
    with pytest.raises(CompressionError, match="group size"):
        compress_language_model(lm_fp32.clone(), CompressionOptions(group_size=128, group_size_fallback="error"))


@pytest.mark.parametrize("weights", ["fp32", "fp16"])
def test_float_weights_leave_the_model_alone(lm_fp32, weights):
    model = lm_fp32.clone()
    assert compress_language_model(model, CompressionOptions(weights=weights)) is model
    assert describe_precision(model) == "FP32"
    assert save_as_fp16(CompressionOptions(weights=weights), "language") is (weights == "fp16")


def test_data_aware_awq_and_scale_estimation_on_the_stateful_lm(lm_fp32, lm_int4):
    dataset = [prefill_inputs(RNG.standard_normal((1, 8 + i, HIDDEN)).astype(np.float32)) for i in range(6)]
    opts = CompressionOptions(awq=True, scale_estimation=True)
    model = compress_language_model(lm_fp32.clone(), opts, dataset)
    assert weight_bytes(model).keys() == {"i4", "u8"}
    assert describe_precision(model).startswith("INT4_SYM g64")
    data_free, data_aware, reference = (_run_lm(m, PROBES[0], split=8) for m in (lm_int4, model, lm_fp32))
    assert not np.allclose(data_free, data_aware)  # the dataset changed the weights
    assert _cosine(reference, data_aware) > 0.98


def test_data_aware_calibration_across_decode_steps(lm_fp32):
    """Items may continue the previous item's KV cache with NNCF's reset-state key set to False."""
    dataset = []
    for _ in range(2):
        dataset.append(prefill_inputs(RNG.standard_normal((1, 6, HIDDEN)).astype(np.float32)))
        for t in (6, 7):
            dataset.append({"inputs_embeds": RNG.standard_normal((1, 1, HIDDEN)).astype(np.float32),
                            "attention_mask": np.ones((1, t + 1), np.int64), "position_ids": np.array([[t]]),
                            "beam_idx": np.zeros(1, np.int32), "nncf_reset_state": False})
    model = compress_language_model(lm_fp32.clone(), CompressionOptions(scale_estimation=True), dataset)
    assert weight_bytes(model).keys() == {"i4", "u8"}
    # a decode step without the key would run on a freshly reset cache: refused
    bad = [{k: v for k, v in item.items() if k != "nncf_reset_state"} for item in dataset]
    with pytest.raises(CompressionError, match="nncf_reset_state"):
        compress_language_model(lm_fp32.clone(), CompressionOptions(awq=True), bad)


def test_gptq_reaches_nncf(lm_fp32, lm_int4):
    dataset = [prefill_inputs(RNG.standard_normal((1, 8 + i, HIDDEN)).astype(np.float32)) for i in range(4)]
    model = compress_language_model(lm_fp32.clone(), CompressionOptions(gptq=True), dataset)
    assert weight_bytes(model).keys() == {"i4", "u8"}
    data_free, gptq, reference = (_run_lm(m, PROBES[0], split=8) for m in (lm_int4, model, lm_fp32))
    assert not np.allclose(data_free, gptq)  # the error feedback changed the weights
    assert _cosine(reference, gptq) > 0.98


def test_lora_correction_reaches_nncf(lm_fp32, lm_int4):
    """NNCF's LoRA correction adds low-rank float MatMuls next to the 4-bit ones and moves the output."""
    dataset = [prefill_inputs(RNG.standard_normal((1, 8 + i, HIDDEN)).astype(np.float32)) for i in range(4)]
    model = compress_language_model(lm_fp32.clone(), CompressionOptions(lora_correction=True), dataset)
    matmuls = lambda m: sum(op.get_type_name() == "MatMul" for op in m.get_ops())  # noqa: E731
    assert matmuls(model) > matmuls(lm_int4)  # the adapters' A and B products
    data_free, corrected, reference = (_run_lm(m, PROBES[0], split=8) for m in (lm_int4, model, lm_fp32))
    assert not np.allclose(data_free, corrected)
    assert _cosine(reference, corrected) > 0.98


def test_dataset_items_are_checked(lm_fp32):
    item = prefill_inputs(np.zeros((1, 4, HIDDEN), np.float32))
    del item["beam_idx"]
    with pytest.raises(CompressionError, match="missing inputs \\['beam_idx'\\]"):
        compress_language_model(lm_fp32.clone(), CompressionOptions(awq=True), [item])


# ---------------------------------------------------------------------------------------------- vision, text embeddings


def test_vision_int8_ptq_quantizes_activations(vision_fp32, vision_int8, tmp_path):
    kinds = [op.get_type_name() for op in vision_int8.get_ops()]
    assert kinds.count("FakeQuantize") > 0  # activations
    assert weight_bytes(vision_int8).keys() <= {"i8", "f32"} and "i8" in weight_bytes(vision_int8)
    description = describe_precision(vision_int8)
    assert description.startswith("INT8 PTQ (") and "FakeQuantize" in description, description
    probe = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    reference, got = (ov.compile_model(m, "CPU")(probe)[0] for m in (vision_fp32, vision_int8))
    assert _cosine(reference, got) > 0.9
    assert _bin_size(vision_int8, tmp_path / "v8.xml") < 0.6 * _bin_size(vision_fp32, tmp_path / "v32.xml")


def test_vision_smooth_quant_alpha_reaches_nncf(vision_fp32, vision_int8, calibration_images):
    off = quantize_vision(vision_fp32.clone(), CompressionOptions(smooth_quant_alpha=-1), calibration_images)

    def multiplies(m):
        return sum(op.get_type_name() == "Multiply" for op in m.get_ops())

    assert multiplies(off) < multiplies(vision_int8)  # SmoothQuant's per-channel scales are Multiply ops


def test_vision_int8_weights_and_float(vision_fp32):
    model = quantize_vision(vision_fp32.clone(), CompressionOptions(vision="int8_weights"), None)
    assert "FakeQuantize" not in {op.get_type_name() for op in model.get_ops()}
    assert "u8" in weight_bytes(model) and describe_precision(model).startswith("INT8")
    same = vision_fp32.clone()
    assert quantize_vision(same, CompressionOptions(vision="fp16"), None) is same
    assert save_as_fp16(CompressionOptions(vision="fp32"), "vision") is False


def test_vision_int8_needs_images_of_the_right_shape(vision_fp32):
    with pytest.raises(CompressionError, match="--calibration"):
        quantize_vision(vision_fp32.clone(), CompressionOptions(), None)
    with pytest.raises(CompressionError, match="expected|processor"):
        quantize_vision(vision_fp32.clone(), CompressionOptions(), [np.zeros((1, 3, 64, 64), np.float32)])


def test_text_embeddings_int8(embeddings_fp32, tmp_path):
    model = compress_text_embeddings(embeddings_fp32.clone(), CompressionOptions())
    assert weight_bytes(model).keys() == {"u8"}
    assert describe_precision(model) == "INT8"
    ids = np.array([[1, 5, 299, 42]], np.int64)
    reference, got = (ov.compile_model(m, "CPU")(ids)[0] for m in (embeddings_fp32, model))
    assert np.abs(reference - got).max() < 0.05 * np.abs(reference).max()
    assert _bin_size(model, tmp_path / "e8.xml") < 0.6 * _bin_size(embeddings_fp32, tmp_path / "e16.xml", fp16=True)
    same = embeddings_fp32.clone()
    assert compress_text_embeddings(same, CompressionOptions(text_embeddings="fp16")) is same


def test_describe_a_saved_fp16_model(embeddings_fp32, tmp_path):
    ov.save_model(embeddings_fp32, tmp_path / "e.xml", compress_to_fp16=True)
    assert describe_precision(tmp_path / "e.xml") == "FP16"
    assert weight_bytes(tmp_path / "e.xml") == {"f16": 300 * HIDDEN * 2}


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": "int3"}, "weights='int3'"),
    ({"lm_mode": "nf4"}, "lm_mode"),
    ({"vision": "int4"}, "vision"),
    ({"text_embeddings": "int4"}, "text_embeddings"),
    ({"group_size": -2}, "group_size"),
    ({"ratio": 1.5}, "ratio"),
    ({"smooth_quant_alpha": 2.0}, "smooth_quant_alpha"),
    ({"calibration_size": 0}, "calibration_size"),
    ({"group_size_fallback": "shrug"}, "group_size_fallback"),
    ({"weights": "int8", "awq": True}, "awq"),
    ({"weights": "fp16", "scale_estimation": True}, "scale_estimation"),
    ({"weights": "int8", "gptq": True}, "gptq"),
    ({"weights": "int8", "lora_correction": True}, "lora_correction"),
    ({"gptq": True, "lora_correction": True}, "gptq and lora_correction"),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(CompressionError, match=match) as info:
        CompressionOptions(**kwargs)
    assert isinstance(info.value, LlavakitError)


@pytest.mark.parametrize("method", ["awq", "scale_estimation", "gptq", "lora_correction"])
def test_data_aware_without_dataset_says_pass_calibration(lm_fp32, method):
    with pytest.raises(CompressionError, match=f"{method} need calibration data.*--calibration"):
        compress_language_model(lm_fp32, CompressionOptions(**{method: True}))


def test_report_names_the_data_aware_methods():
    assert CompressionOptions().method_note() == ""
    assert CompressionOptions(awq=True, scale_estimation=True).method_note() == " + AWQ + scale estimation"
    assert CompressionOptions(lora_correction=True).method_note() == " + LoRA correction"


def test_save_as_fp16_names_parts():
    with pytest.raises(CompressionError, match="part"):
        save_as_fp16(CompressionOptions(), "projector")


# ---------------------------------------------------------------------------------------------- the exporter


@pytest.mark.slow  # about 25 s, mostly the exporter's tracing; the rest of this file takes about 30 s
def test_export_tiny_llava_hidden_32(tiny_llava, tmp_path):
    """The tiny LLaVA's LM has hidden 32: group 64 does not fit those layers, NNCF's ADJUST fallback uses 32.

    The copy declares shapes world as its image domain (as nano and budget do): INT8 vision calibrates on it.
    """
    exporter = pytest.importorskip("llavakit.export.exporter")
    import json
    import shutil

    model = shutil.copytree(tiny_llava, tmp_path / "model")
    (model / "llavakit_build.json").write_text(json.dumps({"calibration": "shapes"}))
    out = exporter.export_openvino(model, tmp_path / "ov", CompressionOptions(calibration_size=4),
                                   show_progress=False)
    lm = out / "openvino_language_model.xml"
    assert "i4" in weight_bytes(lm)
    assert describe_precision(lm).startswith("INT4_SYM g64/g32 (ratio ")  # MLP down_proj has 64 inputs
    assert describe_precision(out / "openvino_vision_embeddings_model.xml").startswith("INT8 PTQ (")
    assert describe_precision(out / "openvino_text_embeddings_model.xml") == "INT8"
    report = json.loads((out / "llavakit_export.json").read_text())
    assert report["calibration"] == "shapes"
    assert json.loads((out / "llavakit_build.json").read_text()) == {"calibration": "shapes"}  # carried along
    assert report["parts"]["language model"]["precision"].startswith("INT4_SYM g64/g32")


def test_calibration_domain_declared_by_the_model(tmp_path):
    """nano declares shapes world; a model without a declaration (or a broken one) falls back to synthetic."""
    from llavakit.checkpoints.nano import nano_model_dir
    from llavakit.export.calibration import shapes_images, synthetic_images
    from llavakit.export.declared import declared_options, default_calibration, export_recipe

    assert default_calibration(nano_model_dir()) == "shapes"
    assert default_calibration(tmp_path) is None
    (tmp_path / "llavakit_build.json").write_text("{not json")
    assert default_calibration(tmp_path) is None and declared_options(tmp_path, "int4") == {}
    (tmp_path / "llavakit_build.json").write_text('{"export": {"int4": {"group_size": 32, "awq": true}}}')
    assert declared_options(tmp_path, "int4") == {"group_size": 32, "awq": True}
    assert declared_options(tmp_path, "int8") == {}
    recipe, declared = export_recipe(tmp_path, "int4", {"awq": False, "ratio": None})  # a flag beats the model
    assert recipe == {"weights": "int4", "group_size": 32, "awq": False} and declared == {"group_size": 32}
    first, again = shapes_images(3), shapes_images(3)
    assert [im.size for im in first] == [(160, 160)] * 3
    assert [im.tobytes() for im in first] == [im.tobytes() for im in again]  # reproducible offline
    assert first[0].tobytes() != first[1].tobytes()
    assert first[0].tobytes() != synthetic_images(1, size=160)[0].tobytes()


@pytest.mark.slow  # one tiny export, about 15 s
def test_first_use_export_follows_the_models_declared_recipe(tiny_llava, tmp_path):
    """What a model declares for a precision (as budget does for int4) is what its first-use export applies."""
    import json
    import shutil

    from llavakit.export.cache import ensure_exported

    model = shutil.copytree(tiny_llava, tmp_path / "model")
    (model / "llavakit_build.json").write_text(json.dumps(
        {"calibration": "shapes", "export": {"int8": {"vision": "int8_weights", "text_embeddings": "fp32"}}}))
    report = json.loads((ensure_exported(model, "int8") / "llavakit_export.json").read_text())
    assert report["options"]["weights"] == "int8"
    assert (report["options"]["vision"], report["options"]["text_embeddings"]) == ("int8_weights", "fp32")
    assert report["calibration"] is None  # weight-only vision and a data-free LM need no images
    # `llavakit export` applies the same declaration; a flag given on the command line wins over it
    from typer.testing import CliRunner

    from llavakit.cli import app

    result = CliRunner().invoke(app, ["export", str(model), "--out", str(tmp_path / "cli"), "--weights", "int8",
                                      "--text-embeddings", "int8"])
    assert result.exit_code == 0, result.output
    assert "declared int8 recipe: vision=int8_weights" in " ".join(result.output.split())
    options = json.loads((tmp_path / "cli" / "llavakit_export.json").read_text())["options"]
    assert (options["vision"], options["text_embeddings"]) == ("int8_weights", "int8")


def test_trained_model_inherits_and_learns_its_declarations(tmp_path):
    """Fine-tuning a declared model keeps its recipe; training on shapes-world data declares shapes."""
    import json

    from llavakit.export.declared import trained_build_info

    base, shapes, plain = tmp_path / "base", tmp_path / "shapes", tmp_path / "plain"
    for d in (base, shapes, plain):
        d.mkdir()
    (base / "llavakit_build.json").write_text(json.dumps(
        {"model": "budget", "calibration": "photos/", "export": {"int4": {"group_size": 32}},
         "image_fit": "pad-border"}))
    (shapes / "dataset.json").write_text(json.dumps({"generator": "llavakit shapes", "version": 1}))
    (plain / "dataset.json").write_text("[]")  # somebody else's file of that name
    assert trained_build_info(base, plain / "train.json") == {"calibration": "photos/", "image_fit": "pad-border",
                                                              "export": {"int4": {"group_size": 32}}}
    assert trained_build_info(base, shapes / "train.json")["calibration"] == "shapes"
    assert trained_build_info(plain, shapes) == {"calibration": "shapes"}
    assert trained_build_info(plain, plain / "train.json") == {}
