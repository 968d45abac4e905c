"""Label masking, token by token, with every chat template we ship, and the collator on a real LLaVA.

The expected labelled text is written out by hand per template style (answer +
end-of-turn marker); the library finds spans by rendering prefixes, so the two
are independent. Anything the library cannot locate exactly must raise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessor, LlavaProcessor

from llavakit.checkpoints.build import build_llava
from llavakit.checkpoints.random_parts import LM_FAMILIES
from llavakit.data import (
    IGNORE_INDEX,
    Collator,
    ConversationDataset,
    MaskingError,
    encode_conversation,
    read_dataset,
    validate,
)
from llavakit.data.chat_templates import IMAGE_TOKEN, NAMED_TEMPLATES, make_multimodal
from llavakit.data.shapes import ShapesConfig, generate_shapes

CONVERSATION = [
    {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    {"role": "user", "content": [{"type": "text", "text": "How many shapes are there?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "3"}]},
    {"role": "user", "content": [{"type": "text", "text": "Describe the image in one sentence."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red circle, a blue square and a green star.\n\n"
                                                                  "  - three shapes"}]},
]
ANSWERS = ["red", "3", "A red circle, a blue square and a green star.\n\n  - three shapes"]

#: case name -> (what is written before each answer, what after): the template's own answer framing.
STYLES = {"vicuna": (" ", "</s>"), "llama2": (" ", "</s>"), "chatml": ("", "<|im_end|>"),
          "vicuna-endoftext": (" ", "<|endoftext|>")}


@pytest.fixture(scope="module")
def processors(parts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path | object, str]]:
    """Every template we ship on a tiny LLaVA: named ones, each LM family's own ('keep'), and SmolLM2's."""
    root = tmp_path_factory.mktemp("masking")
    cases: dict[str, tuple[object, str]] = {}
    for name in NAMED_TEMPLATES:
        out = build_llava(parts("vision", "clip"), parts("lm", "llama"), root / f"named-{name}", chat_template=name)
        cases[f"named-{name}"] = (out, "vicuna")
    family_style = {"llama": "llama2", "mistral": "llama2", "qwen2": "chatml", "phi": "vicuna-endoftext",
                    "stablelm": "vicuna-endoftext"}
    for family in LM_FAMILIES:
        out = build_llava(parts("vision", "clip"), parts("lm", family), root / f"keep-{family}")
        cases[f"keep-{family}"] = (out, family_style[family])
    out = build_llava(parts("vision", "siglip"), parts("lm", "qwen2"), root / "next", arch="llava-next")
    cases["llava-next-chatml"] = (out, "chatml")
    return {name: (AutoProcessor.from_pretrained(path), style) for name, (path, style) in cases.items()}


def _labelled_runs(tokenizer, enc) -> list[str]:
    """Decode each maximal run of labelled tokens; also check label == input id on every labelled token."""
    runs, current = [], []
    for tok, label in zip(enc.input_ids.tolist(), enc.labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == tok
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def _check(processor, style: str) -> None:
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    enc = encode_conversation(processor, CONVERSATION, [image], sample_id="t")
    tokenizer = processor.tokenizer
    before, after = STYLES[style]
    assert _labelled_runs(tokenizer, enc) == [f"{before}{a}{after}" for a in ANSWERS]
    # unlabelled: the system prompt (where the template writes one), every question, every image token
    prompt_text = tokenizer.decode(enc.input_ids[enc.labels == IGNORE_INDEX])
    full = processor.apply_chat_template(CONVERSATION, tokenize=False)
    for question in ("Answer briefly.", "What colour is the circle?", "How many shapes", "Describe the image"):
        assert (question in prompt_text) == (question in full)
    image_positions = enc.input_ids == processor.image_token_id
    assert image_positions.sum() > 1 and (enc.labels[image_positions] == IGNORE_INDEX).all()
    # the very ids inference uses: the processor on the rendered text
    ref = processor(text=full, images=[image], add_special_tokens=False, return_tensors="pt")
    assert enc.input_ids.tolist() == ref["input_ids"][0].tolist()
    torch.testing.assert_close(enc.pixel_values, ref["pixel_values"])


def test_every_shipped_template_masks_exactly_the_answers(processors) -> None:
    assert {"named-llava", "named-vicuna", "keep-llama", "keep-qwen2", "keep-phi"} <= set(processors)
    for name, (processor, style) in processors.items():
        try:
            _check(processor, style)
        except AssertionError as exc:
            raise AssertionError(f"template case {name}: {exc}") from exc


@pytest.mark.slow  # reading the GGUF takes ~15-25 s here
def test_smollm2_template_and_tokenizer(smollm2_processor) -> None:
    _check(smollm2_processor, "chatml")
    text = smollm2_processor.tokenizer.decode(
        encode_conversation(smollm2_processor, CONVERSATION, [Image.new("RGB", (8, 8))]).input_ids)
    assert text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")


def test_text_only_and_default_system_prompt(processors, smollm2_processor) -> None:
    convo = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]}]
    processor, _ = processors["keep-qwen2"]
    enc = encode_conversation(processor, convo, [])
    assert enc.pixel_values is None and _labelled_runs(processor.tokenizer, enc) == ["Hello!<|im_end|>"]
    enc = encode_conversation(smollm2_processor, convo, [])  # SmolLM2 adds its own system prompt: not trained
    assert _labelled_runs(smollm2_processor.tokenizer, enc) == ["Hello!<|im_end|>"]


BAD_TEMPLATES = {
    "not turn by turn": "{{ messages|length }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>"
                        "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
    "no end-of-turn marker": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}assistant:{% endif %}",
    "drops the answers": "{% for m in messages if m['role'] == 'user' %}user: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}",
    "rewrites the answers": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}</s>{% endfor %}"
                            "{% if add_generation_prompt %}assistant:{% endif %}",
}


def test_a_generation_cue_unlike_past_answers_still_masks_exactly(parts, tmp_path: Path) -> None:
    """Qwen3-style: the cue adds an empty think block that past answers do not have."""
    out = build_llava(parts("vision", "clip"), parts("lm", "qwen2"), tmp_path / "m")
    processor = AutoProcessor.from_pretrained(out)
    processor.chat_template = make_multimodal(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{% endif %}")
    enc = encode_conversation(processor, CONVERSATION, [Image.new("RGB", (8, 8))])
    assert _labelled_runs(processor.tokenizer, enc) == [f"{a}<|im_end|>" for a in ANSWERS]


@pytest.mark.parametrize("why", BAD_TEMPLATES)
def test_templates_we_cannot_mask_exactly_raise(parts, tmp_path: Path, why: str) -> None:
    out = build_llava(parts("vision", "clip"), parts("lm", "llama"), tmp_path / "m", chat_template="llava")
    processor = AutoProcessor.from_pretrained(out)
    processor.chat_template = make_multimodal(BAD_TEMPLATES[why])
    with pytest.raises(MaskingError, match="sample s1"):
        encode_conversation(processor, CONVERSATION, [Image.new("RGB", (8, 8))], sample_id="s1")


def test_truncation_never_cuts_image_tokens(processors) -> None:
    processor, _ = processors["keep-llama"]
    image = Image.new("RGB", (8, 8))
    full = encode_conversation(processor, CONVERSATION, [image])
    cut = encode_conversation(processor, CONVERSATION, [image], max_length=len(full) - 5)
    assert len(cut) == len(full) - 5 and cut.labels.tolist() == full.labels[: len(full) - 5].tolist()
    with pytest.raises(MaskingError, match="max_length=10"):
        encode_conversation(processor, CONVERSATION, [image], max_length=10)
    with pytest.raises(MaskingError, match="1 <image> token"):
        encode_conversation(processor, CONVERSATION, [])


def test_dataset_and_collator_train_a_real_llava(tiny_llava: Path, tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    generate_shapes(data, ShapesConfig(train=8, val=0, test=0, seed=0, image_size=64))
    samples = validate(read_dataset(data / "train.jsonl"))
    samples.append(validate(read_dataset(_text_only(tmp_path)))[0])
    processor = AutoProcessor.from_pretrained(tiny_llava)
    dataset = ConversationDataset(samples, processor)
    examples = [dataset[i] for i in range(len(dataset))]
    for sample, enc in zip(samples, examples):  # one labelled run per answer, each ending in eos
        runs = _labelled_runs(processor.tokenizer, enc)
        answers = [sample.text_of(m) for m in sample.messages if m["role"] == "assistant"]
        assert runs == [f" {a}</s>" for a in answers]
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    batch = Collator.for_processor(processor, pad_to_multiple_of=8)(examples)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["pixel_values"].shape[0] == 8
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    # one sample alone gives the same loss as in the padded batch (padding changes nothing)
    single = Collator.for_processor(processor)([examples[0]])
    padded = Collator.for_processor(processor)([examples[0], max(examples, key=len)])
    with torch.no_grad():
        a = model(**single).logits[0]
        b = model(**{k: v[:1] for k, v in padded.items()}).logits[0, : a.shape[0]]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    packed = Collator.for_processor(processor, pack=True)(examples[:3])
    lengths = [len(e) for e in examples[:3]]
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert packed["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert (packed["labels"] != IGNORE_INDEX).sum() <= sum(int((e.labels != IGNORE_INDEX).sum()) for e in examples[:3])


def test_a_file_vanishing_after_validation_is_skipped_not_fatal(tiny_llava: Path, tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    generate_shapes(data, ShapesConfig(train=3, val=0, test=0, seed=0, image_size=64))
    samples = validate(read_dataset(data / "train.json"))
    (data / samples[0].images[0]).unlink()
    dataset = ConversationDataset(samples, AutoProcessor.from_pretrained(tiny_llava))
    with pytest.warns(UserWarning, match="train-000000"):
        enc = dataset[0]
    assert torch.equal(enc.input_ids, dataset.encode(1).input_ids) and len(dataset.failures) == 1


def _text_only(tmp_path: Path) -> Path:
    path = tmp_path / "text.jsonl"
    path.write_text('{"id": "t", "messages": [{"role": "user", "content": "Hi"}, '
                    '{"role": "assistant", "content": "Hello there."}]}\n')
    return path


def test_llava_next_batches_images_of_different_sizes(parts, tmp_path: Path) -> None:
    """AnyRes gives each image its own patch count: the collator pads patches and the model still runs."""
    out = build_llava(parts("vision", "clip"), parts("lm", "llama"), tmp_path / "next", arch="llava-next")
    processor = AutoProcessor.from_pretrained(out)
    convo = CONVERSATION[1:3]
    wide = encode_conversation(processor, convo, [Image.new("RGB", (96, 20), (200, 0, 0))])
    square = encode_conversation(processor, convo, [Image.new("RGB", (64, 64), (0, 0, 200))])
    assert wide.pixel_values.shape[1] != square.pixel_values.shape[1]
    batch = Collator.for_processor(processor)([wide, square])
    assert batch["pixel_values"].shape[:2] == (2, max(wide.pixel_values.shape[1], square.pixel_values.shape[1]))
    assert batch["image_sizes"].tolist() == [[20, 96], [64, 64]]
    model = AutoModelForImageTextToText.from_pretrained(out)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
