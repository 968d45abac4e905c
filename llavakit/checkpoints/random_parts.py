"""Random-weight parts: vision towers, causal LMs and tokenizers of any shape.

Why this exists in the library and not only in the tests: there is no model hub
on the machines llavakit is developed on, and speed does not depend on weight
values. So the tests build tiny checkpoints (2 layers, hidden 32, 32-px images)
with transformers' own config classes, ``save_pretrained`` them, and load them
back through the real loading code; the benchmarks build the "bench-1b" shape
(CLIP ViT-B/32 + TinyLlama-1.1B) the same way. Every part is written in the
plain Hugging Face layout, exactly like a checkpoint downloaded from the hub.

The tokenizer is a byte-level BPE trained in a fraction of a second on a small
built-in corpus, so every byte string round-trips and the LM families can be
given the special tokens and chat templates their real tokenizers carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    MistralConfig,
    PhiConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
    StableLmConfig,
)

LM_FAMILIES = ("llama", "mistral", "qwen2", "phi", "stablelm")
VISION_KINDS = ("clip", "siglip")

_CORPUS = """
The quick brown fox jumps over the lazy dog. A red circle is left of a blue square.
What colour is the triangle? The triangle is green. How many shapes are there? Three.
Is there a yellow star in the image? No. Describe the picture in one sentence.
USER: ASSISTANT: system user assistant image picture photo describe answer question
0 1 2 3 4 5 6 7 8 9 10 100 3.14 left right above below purple orange red green blue
def main(): return 42  # code, punctuation: ,.;:!?()[]{}<>'"-_=+*/\\|@#$%^&~`
Ünïcödé çàfé naïve 北京 東京 😀 🚀 — “quotes” …
""" * 4

#: special tokens per family, in the order they get the first ids (like real tokenizers).
_FAMILY_SPECIALS: dict[str, dict[str, str]] = {
    "llama": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "qwen2": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "phi": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
    "stablelm": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
}

#: chat templates the real families ship (abridged); None means the LM has none.
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_LLAMA2 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
_FAMILY_TEMPLATES: dict[str, str | None] = {
    "llama": _LLAMA2,
    "mistral": _LLAMA2,
    "qwen2": _CHATML,
    "phi": None,
    "stablelm": None,
}


@dataclass(frozen=True)
class LMShape:
    """Shape of a decoder-only LM; the defaults are the tiny test shape."""

    hidden: int = 32
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 64
    vocab: int | None = None  # None: the tokenizer's size
    max_positions: int = 2048


@dataclass(frozen=True)
class VisionShape:
    """Shape of a ViT vision tower; the defaults are the tiny test shape."""

    hidden: int = 32
    layers: int = 2
    heads: int = 4
    intermediate: int = 64
    image_size: int = 32
    patch_size: int = 8


#: The CPU benchmark shapes named in DESIGN.md ("bench-1b").
BENCH_1B_LM = LMShape(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000)
BENCH_1B_VISION = VisionShape(hidden=768, layers=12, heads=12, intermediate=3072, image_size=224, patch_size=32)


def make_tokenizer(family: str = "llama", vocab_size: int = 400, pad_vocab_to: int | None = None
                   ) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with the special tokens (and chat template) of ``family``.

    ``pad_vocab_to`` fills the vocabulary with inert filler tokens up to that size, so
    a benchmark LM of a real vocabulary size (32000) can decode every id it samples.
    """
    specials = list(dict.fromkeys(_FAMILY_SPECIALS[family].values()))
    if family == "qwen2":
        specials.insert(0, "<|im_start|>")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    if pad_vocab_to and pad_vocab_to > tok.get_vocab_size():
        tok = _pad_vocabulary(tok, pad_vocab_to)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **_FAMILY_SPECIALS[family])
    if family == "qwen2":
        fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = _FAMILY_TEMPLATES[family]
    return fast


def _pad_vocabulary(tok: Tokenizer, size: int) -> Tokenizer:
    """Rebuild the BPE with filler entries ``fill{i}`` appended (never produced by encoding)."""
    import json

    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    for i in range(size - len(vocab)):
        vocab[f"fill{i}"] = len(vocab)
    return Tokenizer.from_str(json.dumps(state))


def _lm_config(family: str, shape: LMShape, tokenizer: PreTrainedTokenizerFast):
    """The transformers config of ``family`` at ``shape``, with the tokenizer's special ids."""
    vocab = shape.vocab or len(tokenizer)
    common = dict(
        vocab_size=vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    if family == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if family == "phi":
        return PhiConfig(**common, partial_rotary_factor=0.5, tie_word_embeddings=False)
    if family == "stablelm":
        return StableLmConfig(**common, partial_rotary_factor=0.25, tie_word_embeddings=False)
    raise ValueError(f"unknown LM family {family!r}; choose one of {LM_FAMILIES}")


def make_random_lm(
    family: str, out_dir: str | Path, shape: LMShape = LMShape(), seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random causal LM of ``family`` (model + tokenizer) to ``out_dir`` in HF format."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(family, pad_vocab_to=shape.vocab)
    config = _lm_config(family, shape, tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_random_vision(
    kind: str, out_dir: str | Path, shape: VisionShape = VisionShape(), seed: int = 0, full_model: bool = False
) -> Path:
    """Write a random CLIP or SigLIP vision tower (plus its image processor) to ``out_dir``.

    ``full_model=True`` writes a whole CLIP (vision + text towers), the layout of
    ``openai/clip-vit-base-patch32`` on the hub, so the builder's extraction of the
    vision half is tested too.
    """
    torch.manual_seed(seed)
    common = dict(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
    )
    size = shape.image_size
    if kind == "clip":
        vision_config = CLIPVisionConfig(**common, projection_dim=shape.hidden)
        if full_model:
            text = CLIPTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=99, projection_dim=shape.hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
            model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision_config.to_dict()))
        else:
            model = CLIPVisionModel(vision_config)
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    elif kind == "siglip":
        if full_model:
            raise ValueError("full_model is only implemented for CLIP")
        model = SiglipVisionModel(SiglipVisionConfig(**common))
        processor = SiglipImageProcessor(size={"height": size, "width": size})
    else:
        raise ValueError(f"unknown vision kind {kind!r}; choose one of {VISION_KINDS}")
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_random_eagle(target_dir: str | Path, out_dir: str | Path, layers: int = 1, seed: int = 0) -> Path:
    """Write a random EAGLE feature draft for the LLaVA at ``target_dir`` in the format
    ``scripts/gpu/train_eagle.py`` writes (body config + weights, ``eagle_fc.safetensors``, tokenizer)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    text = AutoConfig.from_pretrained(target_dir).get_text_config()
    config = text.__class__.from_dict(text.to_dict())
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:layers]
    torch.manual_seed(seed)
    body = AutoModel.from_config(config)
    hidden = config.hidden_size
    fc = torch.nn.Linear(2 * hidden, hidden)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in body.state_dict().items() if not k.startswith("embed_tokens.")},
              str(out / "model.safetensors"))
    save_file({"weight": fc.weight.detach().contiguous(), "bias": fc.bias.detach().contiguous()},
              str(out / "eagle_fc.safetensors"))
    AutoTokenizer.from_pretrained(target_dir).save_pretrained(out)
    return out
