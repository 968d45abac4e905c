"""``budget-eagle``: the speculative-decoding draft shipped for the default model ``budget``, by name.

Why a name: a trained draft is useless without the exact model it was trained for (an EAGLE draft reads
that model's hidden states and borrows its LM head), so the draft for budget ships with budget and is
exported the way budget is — on first use, offline, into the cache. ``llavakit chat budget --draft
budget-eagle`` (or ``Pipeline("budget", draft="budget-eagle")``) is all a user types.

What ships (``llavakit/assets/drafts/budget-eagle``, 9 MB): the trained draft as ``scripts/gpu/train_eagle.py``
writes it — one decoder layer (``config.json`` + fp16 ``model.safetensors``), the fc that joins a token's
embedding to budget's feature (``eagle_fc.safetensors``), the 8192 most frequent answer ids
(``draft_head.json``) — and ``llavakit_draft_card.json`` (how it was trained, its agreement, the number of
tokens it drafts best). The tokenizer is budget's (``export/eagle.py`` falls back to the target's).

The export (INT8 weights, the draft's LM head = budget's head cut to the 8192 ids) is cached under a key of
the draft's files and the budget build it drafts for, so retraining either gives a fresh export; the card's
``num_draft_tokens`` goes into the export's marker, where ``Pipeline`` reads it when the caller set none.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from llavakit.errors import LlavakitError, ModelLoadError

NAME = "budget-eagle"
CARD = "llavakit_draft_card.json"
HEAD_SIZE = 8192  # the head rows the draft was measured with (benchmarks/speculative.md)


def budget_draft_dir() -> Path:
    """The committed trained draft for budget."""
    path = Path(str(files("llavakit") / "assets" / "drafts" / NAME))
    if not (path / "eagle_fc.safetensors").is_file():
        raise ModelLoadError(f"this version of llavakit ships no {NAME!r} draft ({path} is empty)")
    return path


def ensure_budget_draft(weights: str = "int8", root: Path | None = None) -> Path:
    """The exported ``budget-eagle`` draft in the cache (exported on first use, about 10 s after budget is built)."""
    from llavakit.checkpoints.budget import ensure_budget_model, files_key
    from llavakit.checkpoints.demo import cache_dir
    from llavakit.export.draft import DRAFT_MARKER

    source = budget_draft_dir()
    target = ensure_budget_model(root)  # the draft is only meaningful for this exact build
    key = files_key(list(source.iterdir()), f"{target.name}|{weights}|{HEAD_SIZE}")
    out = (root or cache_dir()) / "drafts" / f"{NAME}-{weights}-{key}"
    if (out / DRAFT_MARKER).is_file():
        return out
    from llavakit.export.eagle import export_eagle_draft

    card = json.loads((source / CARD).read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    export_eagle_draft(source, target, out, weights=weights, head_size=HEAD_SIZE, force=True,
                       marker_extra={"num_draft_tokens": int(card["num_draft_tokens"]), "name": NAME})
    return out


def resolve_draft(draft: str | Path, model_dir: Path) -> Path:
    """A draft argument as a directory: ``budget-eagle`` (unless a folder of that name exists here) is the shipped
    one, exported on first use; it drafts for budget only, so another ``model_dir`` gets a clear error."""
    if str(draft) != NAME or Path(draft).exists():
        return Path(draft)
    from llavakit.export.declared import build_info

    model = build_info(model_dir).get("model")
    if model != "budget":
        raise LlavakitError(f"{NAME} is the draft trained for the model 'budget' (it reads budget's hidden states); "
                            f"{model_dir} is {repr(model) if model else 'another model'}. Pass a draft made for it "
                            "(`llavakit export-draft`), or use `llavakit chat budget --draft budget-eagle`")
    return ensure_budget_draft()
