"""`llavakit build`: every LM family and both vision towers, checked against transformers."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionModel,
    SiglipVisionModel,
)

from llavakit import Pipeline
from llavakit.checkpoints.build import build_llava
from llavakit.checkpoints.resolve import resolve_source
from llavakit.errors import BuildError, ModelLoadError

FAMILIES = ["llama", "mistral", "qwen2", "phi", "stablelm"]
CASES = [(f, "clip") for f in FAMILIES] + [("llama", "siglip"), ("qwen2", "siglip"), ("phi", "clip-full")]


def _source_vision(path, kind):
    cls = SiglipVisionModel if kind == "siglip" else CLIPVisionModel
    return cls.from_pretrained(path)


@pytest.mark.parametrize("family,vision", CASES)
def test_build_loads_in_transformers_with_source_weights_unchanged(parts, tmp_path, family, vision, red_image):
    lm_dir, vision_dir = parts("lm", family), parts("vision", vision)
    out = build_llava(vision_dir, lm_dir, tmp_path / "llava")

    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "LlavaForConditionalGeneration"

    # Vision tower: every tensor equal to the source.
    source_vision = _source_vision(vision_dir, "siglip" if vision == "siglip" else "clip").state_dict()
    for name, tensor in model.model.vision_tower.state_dict().items():
        torch.testing.assert_close(tensor, source_vision[name], rtol=0, atol=0, msg=name)
    # Language model: every tensor equal; the embedding's old rows equal, new rows appended.
    source_lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    src_state = source_lm.model.state_dict()
    for name, tensor in model.model.language_model.state_dict().items():
        src = src_state[name]
        if name == "embed_tokens.weight":
            tensor = tensor[: src.shape[0]]
        torch.testing.assert_close(tensor, src, rtol=0, atol=0, msg=name)
    head = model.lm_head.weight[: source_lm.lm_head.weight.shape[0]]
    torch.testing.assert_close(head, source_lm.lm_head.weight, rtol=0, atol=0)

    # Tokenizer: <image> is one special token, a pad token exists, embeddings cover the vocabulary.
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert tok.encode("<image>", add_special_tokens=False) == [model.config.image_token_id]
    assert tok.pad_token_id is not None
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)

    # The template puts one placeholder per image where the processor expands it.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<image>") == 1 and "What is it?" in text
    assert text.index("<image>") < text.index("What is it?")
    inputs = processor(text=text, images=[red_image], return_tensors="pt", add_special_tokens=False)
    patches = (32 // 8) ** 2  # tiny towers: 32-px images, 8-px patches; CLIP's CLS is dropped
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == patches

    # Greedy output of llavakit's torch path equals transformers' generate on the same model.
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    ours = Pipeline(out, backend="torch").generate("What is it?", images=[red_image], max_new_tokens=12)
    assert ours.token_ids == ref.tolist()[: len(ours.token_ids)]
    assert len(ours.token_ids) == 12 or ours.finish_reason == "stop"


def test_lm_chat_template_kept_and_vicuna_when_none(parts, tmp_path):
    qwen = build_llava(parts("vision", "clip"), parts("lm", "qwen2"), tmp_path / "q")
    phi = build_llava(parts("vision", "clip"), parts("lm", "phi"), tmp_path / "p")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    q = AutoProcessor.from_pretrained(qwen).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert q == "<|im_start|>user\n<image>\nhi<|im_end|>\n<|im_start|>assistant\n"
    p = AutoProcessor.from_pretrained(phi).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert p.endswith("USER: <image>\nhi ASSISTANT:") and p.startswith("<|endoftext|>A chat between")


def test_named_and_file_chat_templates(parts, tmp_path):
    llava = build_llava(parts("vision", "clip"), parts("lm", "qwen2"), tmp_path / "a", chat_template="vicuna")
    tok = AutoTokenizer.from_pretrained(llava)
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("USER: hello ASSISTANT:")
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    llava = build_llava(parts("vision", "clip"), parts("lm", "qwen2"), tmp_path / "b", chat_template=str(template))
    processor = AutoProcessor.from_pretrained(llava)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}], tokenize=False
    )
    assert text == "[user] <image>\nx\n"
    with pytest.raises(BuildError, match="unknown chat template"):
        build_llava(parts("vision", "clip"), parts("lm", "qwen2"), tmp_path / "c", chat_template="nope")


def test_linear_projector_is_one_linear_map(parts, tmp_path):
    out = build_llava(parts("vision", "clip"), parts("lm", "llama"), tmp_path / "lin", projector="linear")
    model = AutoModelForImageTextToText.from_pretrained(out)
    proj = model.model.multi_modal_projector
    x = torch.randn(3, 32)  # (N, D_vision)
    torch.testing.assert_close(proj(x), proj.linear_1(x))


def test_build_refuses_bad_parts_clearly(parts, tmp_path):
    with pytest.raises(BuildError, match="already exists"):
        out = tmp_path / "exists"
        out.mkdir()
        build_llava(parts("vision", "clip"), parts("lm", "llama"), out)
    with pytest.raises(BuildError, match="model_type 'llama'"):
        build_llava(parts("lm", "llama"), parts("lm", "llama"), tmp_path / "x")
    with pytest.raises(ModelLoadError, match="neither a local directory nor a hub id"):
        build_llava(str(tmp_path / "missing"), parts("lm", "llama"), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_build_force_replaces(parts, tmp_path):
    out = tmp_path / "f"
    build_llava(parts("vision", "clip"), parts("lm", "llama"), out)
    build_llava(parts("vision", "siglip"), parts("lm", "llama"), out, force=True)
    assert AutoModelForImageTextToText.from_pretrained(out).config.vision_config.model_type == "siglip_vision_model"


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    (tmp_path / "runs" / "align").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"runs/ has no 'alig' \(it has: align\)"):
        resolve_source("runs/alig")


def test_hub_id_without_network_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="pass its local directory"):
        resolve_source("llava-hf/llava-1.5-7b-hf")
    assert time.perf_counter() - start < 10


def test_loads_llava_hf_legacy_layout(tiny_llava, tmp_path, red_image):
    """llava-hf/llava-1.5-7b-hf stores keys as language_model.model.*, language_model.lm_head, vision_tower.*."""
    import shutil

    from safetensors.torch import save_file

    legacy = tmp_path / "llava-1.5-legacy"
    shutil.copytree(tiny_llava, legacy)
    state = load_file(legacy / "model.safetensors")
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("model.language_model."):
            key = "language_model.model." + key[len("model.language_model."):]
        elif key == "lm_head.weight":
            key = "language_model.lm_head.weight"
        elif key.startswith("model."):
            key = key[len("model."):]
        renamed[key] = tensor
    assert any(k.startswith("language_model.model.layers") for k in renamed)
    save_file(renamed, legacy / "model.safetensors", metadata={"format": "pt"})

    expected = Pipeline(tiny_llava, backend="torch").generate("Describe.", images=[red_image], max_new_tokens=8)
    got = Pipeline(legacy, backend="torch").generate("Describe.", images=[red_image], max_new_tokens=8)
    assert got.token_ids == expected.token_ids
