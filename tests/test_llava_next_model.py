"""LLaVA-NeXT end to end on tiny models: build, load (legacy + current key layouts), parity, export, engines.

Reference everywhere: transformers' ``LlavaNextForConditionalGeneration`` and
``LlavaNextProcessor``. The model is 2-layer CLIP (32 px, 8-px patches) + 2-layer
Llama, so a tile gives 4x4 features and grids go up to 3 tiles.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import openvino as ov
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

from llavakit import Pipeline
from llavakit.cli import app
from llavakit.export.parts import VisionEmbeddings
from llavakit.runtime.anyres import AnyResProcessor, pack_features
from llavakit.runtime.image_processing import load_processor_config
from llavakit.runtime.prompt import user_content

SIZES = [(40, 30), (100, 5), (5, 100), (64, 64), (33, 65)]  # (width, height)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def next_dir(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("next") / "tiny-next"
    result = CliRunner().invoke(app, ["build", "--arch", "llava-next", "--vision", str(parts("vision", "clip")),
                                      "--lm", str(parts("lm", "llama")), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def hf(next_dir):
    model = AutoModelForImageTextToText.from_pretrained(next_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(next_dir)


@pytest.fixture(scope="module")
def next_export(next_dir, tmp_path_factory):
    from llavakit.export.compress import CompressionOptions
    from llavakit.export.exporter import export_openvino

    options = CompressionOptions(weights="fp32", vision="fp32", text_embeddings="fp32")
    return export_openvino(next_dir, tmp_path_factory.mktemp("next-ov") / "ov", options, show_progress=False)


@pytest.fixture(scope="module")
def ov_next(next_export):
    return Pipeline(next_export, precise=True)


def _prompt(processor, n_images: int, question: str = "What is it?") -> str:
    messages = [{"role": "user", "content": user_content(question, n_images)}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _hf_logits(hf, images, question="What is it?") -> torch.Tensor:
    model, processor = hf
    inputs = processor(text=_prompt(processor, len(images), question), images=images, return_tensors="pt",
                       add_special_tokens=False)
    with torch.no_grad():
        return model(**inputs).logits[0]  # (T, V)


def test_cli_build_makes_a_transformers_llava_next(next_dir, hf):
    model, processor = hf
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "LlavaNextImageProcessorPil"
    assert model.config.image_grid_pinpoints == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    assert model.model.image_newline.shape == (model.config.text_config.hidden_size,)
    assert json.loads((next_dir / "llavakit_build.json").read_text())["arch"] == "llava-next"


def test_cli_build_refuses_bad_pinpoints(parts, tmp_path):
    args = ["build", "--arch", "llava-next", "--vision", str(parts("vision", "clip")), "--lm",
            str(parts("lm", "llama")), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(app, args + ["--grid-pinpoints", "[[32, 50]]"])
    message = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "not positive multiples of the tower's image size 32" in message
    result = CliRunner().invoke(app, args + ["--grid-pinpoints", "[[32"])
    assert result.exit_code == 2 and "is not JSON" in " ".join(result.output.split())
    custom = CliRunner().invoke(app, args + ["--grid-pinpoints", "[[32, 64], [64, 64]]"])
    assert custom.exit_code == 0, custom.output
    assert json.loads((tmp_path / "x" / "config.json").read_text())["image_grid_pinpoints"] == [[32, 64], [64, 64]]


def test_loads_llava_hf_legacy_and_current_key_layouts(next_dir, hf, tmp_path):
    """llava-hf checkpoints keep the pre-5.0 names (``language_model.model.*``, bare ``image_newline``)."""
    with safe_open(next_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "image_newline" in keys and any(k.startswith("language_model.model.") for k in keys)  # legacy layout
    model, _ = hf
    current = tmp_path / "current"
    model.save_pretrained(current, save_original_format=False)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (next_dir / name).is_file():
            shutil.copy(next_dir / name, current / name)
    with safe_open(current / "model.safetensors", "pt") as f:
        assert "model.image_newline" in set(f.keys())
    image = _image(40, 30)
    results = [Pipeline(d, backend="torch").generate("Hi", images=[image], max_new_tokens=6).token_ids
               for d in (next_dir, current)]
    assert results[0] == results[1]


@pytest.mark.parametrize("width,height", SIZES)
def test_numpy_tiles_and_packing_equal_transformers_features(width, height, next_dir, hf):
    model, processor = hf
    image = _image(width, height, seed=width + height)
    anyres = AnyResProcessor.from_config(load_processor_config(next_dir), patch_size=8, extra_tokens=1)
    tiles = anyres(image)  # (N, 3, S, S)
    with torch.no_grad():
        tile_features = VisionEmbeddings(model)(torch.from_numpy(tiles)).numpy()  # (N, P, D)
        inputs = processor.image_processor(images=[image], return_tensors="pt")
        theirs = model.model.get_image_features(**inputs).pooler_output[0].numpy()  # (T, D)
    newline = model.model.image_newline.detach().numpy()
    ours = pack_features(tile_features, height, width, anyres.grid(height, width), newline)
    assert ours.shape == theirs.shape == (anyres.num_image_tokens(height, width), theirs.shape[1])
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_torch_backend_prefill_equals_transformers_with_several_images(hf, next_dir):
    images = [_image(40, 30, 1), _image(5, 100, 2), _image(64, 64, 3)]
    pipe = Pipeline(next_dir, backend="torch")
    messages = [{"role": "user", "content": user_content("Compare them.", len(images))}]
    prepared = pipe.backend.prepare(messages, images)
    ours = pipe.backend.prefill(prepared)  # (V,)
    theirs = _hf_logits(hf, images, "Compare them.")[-1].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_export_layout_for_genai(next_export, hf):
    model, _ = hf
    config = json.loads((next_export / "config.json").read_text())
    assert config["model_type"] == "llava_next"
    np.testing.assert_allclose(config["image_newline"], model.model.image_newline.detach().numpy(), rtol=1e-6)
    pre = json.loads((next_export / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "LlavaNextImageProcessor"
    assert pre["image_grid_pinpoints"] == model.config.image_grid_pinpoints
    vision = ov.Core().read_model(next_export / "openvino_vision_embeddings_model.xml")
    assert vision.input("pixel_values").get_partial_shape()[0].is_dynamic  # every tile of an image in one batch


@pytest.mark.parametrize("sizes", [[(40, 30)], [(100, 5)], [(5, 100)], [(64, 64), (33, 65)]])
def test_openvino_engine_logits_and_greedy_tokens_equal_transformers(sizes, ov_next, hf, next_dir):
    images = [_image(w, h, seed=i + w) for i, (w, h) in enumerate(sizes)]
    messages = [{"role": "user", "content": user_content("What is it?", len(images))}]
    prepared = ov_next.backend.prepare(messages, images)
    ours = ov_next.backend.prefill(prepared)  # (V,)
    theirs = _hf_logits(hf, images)
    assert ov_next.backend.prompt_length(prepared) == theirs.shape[0]
    np.testing.assert_allclose(ours, theirs[-1].numpy(), atol=1e-4, rtol=1e-4)
    got = ov_next.generate("What is it?", images=images, max_new_tokens=12).token_ids
    want = Pipeline(next_dir, backend="torch").generate("What is it?", images=images, max_new_tokens=12).token_ids
    assert got == want


def test_batch_mixing_image_sizes_matches_per_image_engine_runs(hf, ov_next):
    """transformers' batched forward (tile dim padded, left-padded prompts) vs our engine one prompt at a time."""
    model, processor = hf
    images = [_image(100, 5, 7), _image(64, 64, 8)]  # 1x3 grid and 2x2 grid: different tile counts and lengths
    texts = [_prompt(processor, 1, "What is it?"), _prompt(processor, 1, "And this one?")]
    processor.tokenizer.padding_side = "left"
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
    assert batch["pixel_values"].shape[1] == 5  # padded to the larger grid
    with torch.no_grad():
        batched = model(**batch).logits[:, -1]  # (2, V)
    for row, (image, question) in enumerate(zip(images, ["What is it?", "And this one?"])):
        messages = [{"role": "user", "content": user_content(question, 1)}]
        ours = ov_next.backend.prefill(ov_next.backend.prepare(messages, [image]))
        np.testing.assert_allclose(ours, batched[row].numpy(), atol=1e-4, rtol=1e-4)


def test_image_features_are_cached_by_pixels_and_size(ov_next):
    image = _image(40, 30, 5)
    first = ov_next.generate("Hi", images=[image], max_new_tokens=2)
    again = ov_next.generate("Hi", images=[image], max_new_tokens=2)
    assert first.token_ids == again.token_ids
    assert ov_next.backend.image_encode_s == 0.0  # answered from the feature cache


def test_openvino_genai_vlmpipeline_loads_the_llava_next_export(next_export, ov_next):
    genai = pytest.importorskip("openvino_genai")
    pipe = genai.VLMPipeline(str(next_export), "CPU", INFERENCE_PRECISION_HINT="f32", KV_CACHE_PRECISION="f32")
    config = genai.GenerationConfig()
    config.max_new_tokens, config.do_sample = 16, False
    # Solid colours: GenAI's own bicubic and PIL's agree on them; sizes off the unpad rounding edge.
    cases = [[Image.new("RGB", (40, 30), (200, 30, 30))], [Image.new("RGB", (100, 20), (10, 200, 90))],
             [Image.new("RGB", (64, 64), (0, 0, 255))], []]
    for images in cases:
        tensors = [ov.Tensor(np.asarray(im)[None]) for im in images]
        theirs = pipe.generate("What is it?", images=tensors, generation_config=config).texts[0]
        ours = ov_next.generate("What is it?", images=images, max_new_tokens=16).text
        # GenAI keeps trailing U+FFFD of bytes cut by max_new_tokens; llavakit drops them (text == streamed pieces)
        assert ours == theirs.rstrip("\ufffd"), images


MISTRAL_LLAVA_TEMPLATE = (  # the shape of llava-hf/llava-v1.6-mistral-7b-hf's template: [INST] <image>\nQ [/INST]
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]"
    "{% else %}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
)


def test_llava_hf_style_checkpoint_made_with_transformers_classes(tmp_path):
    """Not built by llavakit: transformers' own config/model/processor classes, saved as llava-hf ships them."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )

    from llavakit.checkpoints.random_parts import make_tokenizer

    tokenizer = make_tokenizer("mistral")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<pad>"})
    torch.manual_seed(0)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                       image_size=32, patch_size=8, projection_dim=32).to_dict(),
        text_config=MistralConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, sliding_window=None,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]],
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                 image_grid_pinpoints=config.image_grid_pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=MISTRAL_LLAVA_TEMPLATE)
    source = tmp_path / "llava-v1.6-tiny-hf"
    model.save_pretrained(source)  # default: the legacy (llava-hf) key layout
    processor.save_pretrained(source)
    image = _image(70, 20, 3)
    ours = Pipeline(source, backend="torch").generate("What is shown?", images=[image], max_new_tokens=8).token_ids
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                           {"type": "text", "text": "What is shown?"}]}], add_generation_prompt=True)
    inputs = processor(text=text, images=[image], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    theirs = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    assert ours == (theirs[: theirs.index(eos)] if eos in theirs else theirs)
