"""``nano``: the wholly in-house default model — a tiny ViT + a tiny Llama, trained from scratch on shapes world.

Why it exists: tests of a VLM toolkit are only meaningful if some model in them
can actually *see*. ``nano`` is small enough to live in the repository
(≈4.7 M parameters, ≈9.4 MB in fp16) and to answer in milliseconds on a CPU,
yet it was trained (``scripts/gpu/``, 15 500 steps on an H100) on shapes world,
so a test can check that an exported INT8 model gets answers *right* far above
an untrained model, not merely that it runs. (It reaches ~42% on the test
split, short of the 90% goal: see benchmarks/training.md.)

Design decisions:

* Every part is a stock transformers class — ``CLIPVisionModel`` (160-px
  images in 16-px patches: 100 image tokens, enough to read a short word),
  ``LlamaForCausalLM`` (4 layers, hidden 256, grouped-query attention, tied
  embeddings) — assembled by :func:`~llavakit.checkpoints.build.build_llava`
  like any other LLaVA, so export, runtime and training need no special case.
* Vision features come from the *last* ViT layer (``vision_feature_layer=-1``):
  LLaVA's "second to last" rule exists to skip CLIP's contrastive head, which a
  tower trained end to end with the LM does not have; using -2 would carry a
  whole layer that never influences the output.
* Its own tokenizer: byte-level BPE (the ``tokenizers`` library) trained on
  shapes-world text, ~1k tokens, so the embedding matrix stays a small share of
  the model. Byte-level means any text still encodes (no unknown token), it is
  just split finer outside the training domain.
* The prompt format is LLaVA's vicuna template (``chat_templates.VICUNA_TEMPLATE``).
* The trained model is committed as a complete HF LLaVA directory under
  ``llavakit/assets/models/nano`` (fp16 safetensors); :func:`nano_model_dir`
  returns it and the usual export-on-first-use cache takes it from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path

from llavakit.errors import ModelLoadError

NANO_NAME = "nano"
#: ViT: 160-px input (shapes world's native size), 16-px patches -> 10x10 = 100 image tokens.
NANO_VISION = {"hidden": 192, "layers": 4, "heads": 4, "intermediate": 768, "image_size": 160, "patch_size": 16}
#: Llama LM: 4 layers, hidden 256, 4 query heads / 2 KV heads, SwiGLU 512, tied embeddings.
NANO_LM = {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 512, "max_positions": 1024}
NANO_VOCAB = 1024
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<image>")


def nano_model_dir() -> Path:
    """The committed, trained nano checkpoint (a HF LLaVA directory inside the package)."""
    path = Path(str(files("llavakit") / "assets" / "models" / NANO_NAME))
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"the trained nano model is missing from this installation ({path} has no config.json); "
            "reinstall llavakit, or pass a model directory"
        )
    return path


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = NANO_VOCAB):
    """Train nano's byte-level BPE on ``texts`` and save it (with the vicuna chat template) to ``out_dir``.

    Returns the ``PreTrainedTokenizerFast``. The four special tokens get ids 0-3.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llavakit.data.chat_templates import VICUNA_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.chat_template = VICUNA_TEMPLATE
    fast.model_max_length = NANO_LM["max_positions"]
    fast.save_pretrained(out_dir)
    return fast


def corpus_from_llava_json(path: str | Path) -> list[str]:
    """All questions and answers of a LLaVA-JSON data file, plus the vicuna system prompt (tokenizer corpus)."""
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions. USER: ASSISTANT:")
    texts = [system] * 50
    for sample in json.loads(Path(path).read_text(encoding="utf-8")):
        texts.extend(turn["value"].replace("<image>\n", "") for turn in sample["conversations"])
    return texts


def make_lm(tokenizer, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a freshly initialised nano Llama (with ``tokenizer``) to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    s = NANO_LM
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], intermediate_size=s["intermediate"],
        max_position_embeddings=s["max_positions"], tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_untrained_nano(train_json: str | Path, out_dir: str | Path, work_dir: str | Path, seed: int = 0,
                         vision_dir: str | Path | None = None) -> Path:
    """Tokenizer trained on ``train_json``'s text, random LM, assembled into a LLaVA at ``out_dir``.

    The ViT is ``vision_dir`` (e.g. one pretrained by :mod:`llavakit.train.vision_pretrain`) or a random one.
    """
    from llavakit.checkpoints.build import build_llava
    from llavakit.checkpoints.random_parts import VisionShape, make_random_vision

    work = Path(work_dir)
    tokenizer = train_tokenizer(corpus_from_llava_json(train_json), work / "tokenizer")
    lm_dir = make_lm(tokenizer, work / "lm", seed=seed)
    if vision_dir is None:
        vision_dir = make_random_vision("clip", work / "vision", VisionShape(**NANO_VISION), seed=seed)
    return build_llava(vision_dir, lm_dir, out_dir, chat_template="vicuna", vision_feature_layer=-1,
                       dtype="float32", force=True, seed=seed)


def export_nano(trained_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a trained nano as the committed form: the same HF LLaVA directory with fp16 weights."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llavakit.export.declared import SHAPES, write_build_info

    model = LlavaForConditionalGeneration.from_pretrained(trained_dir, dtype=torch.float32)
    model.to(torch.float16).save_pretrained(out_dir)
    AutoProcessor.from_pretrained(trained_dir).save_pretrained(out_dir)
    # nano's image domain, so its INT8 export calibrates on shapes world, not generic scenes; trained on square
    # scenes, it sees wide pictures padded with their border colour rather than cropped (runtime/image_fit.py)
    write_build_info(out_dir, {"built_by": "llavakit", "model": "nano", "calibration": SHAPES,
                               "image_fit": "pad-border"})
    return Path(out_dir)
