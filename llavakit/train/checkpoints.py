"""Training checkpoints that are complete or absent, and finding the one to resume from.

transformers' Trainer writes ``checkpoint-N/`` in place (model, optimizer,
scheduler, RNG states, trainer state, one file after another), so a run killed
while saving leaves a directory that *looks* like a checkpoint but is not one.
Design decisions:

* A checkpoint counts only once it is **committed**: after the Trainer has
  written everything, the main process writes ``llavakit_commit.json`` (via a
  temporary file and an atomic rename, fsynced). Resuming takes the committed
  checkpoint with the highest step and deletes uncommitted ones; a crash at any
  instant leaves either the new checkpoint or the previous one usable.
* Rotation (keep the last ``save_total_limit``) is done here, after the commit,
  not by the Trainer (which rotates before we could commit), so the previous
  good checkpoint is never deleted before the new one is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

COMMIT_FILE = "llavakit_commit.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` directory under ``root``, by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def is_committed(path: Path) -> bool:
    return (path / COMMIT_FILE).is_file()


def commit(path: Path, step: int) -> None:
    """Mark ``path`` as a complete checkpoint (atomic: the marker appears whole or not at all)."""
    tmp = path / (COMMIT_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump({"step": step, "time": time.time()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / COMMIT_FILE)


def last_committed(root: str | Path) -> Path | None:
    """The committed checkpoint with the highest step, or None."""
    done = [p for _, p in checkpoint_dirs(root) if is_committed(p)]
    return done[-1] if done else None


def remove_uncommitted(root: str | Path) -> list[Path]:
    """Delete checkpoint directories a killed run left half-written; return what was removed."""
    removed = []
    for _, path in checkpoint_dirs(root):
        if not is_committed(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def rotate(root: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` committed checkpoints (never touches uncommitted ones: one may be in progress)."""
    if keep <= 0:
        return
    done = [p for _, p in checkpoint_dirs(root) if is_committed(p)]
    for path in done[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_model_weights(model, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into ``model`` (a transformers ``PreTrainedModel``), names converted.

    Why this exists: transformers 5 saves LLaVA weights under their original hub names
    (``language_model.model.layers...``; ``save_pretrained`` reverts its key renaming) while
    the Trainer's resume loads the file with a plain ``load_state_dict(strict=False)``, which
    then matches nothing and silently resumes from the *initial* weights. We map each saved
    name to the model's own name through transformers' own ``revert_weight_conversion``
    and refuse to go on if any weight is left unloaded (tied weights count once: nano's embedding
    is its LM head, and a resume refused it until 2026-12-05).
    """
    import json as _json

    from safetensors.torch import load_file
    from transformers.core_model_loading import revert_weight_conversion

    from llavakit.errors import LlavakitError

    checkpoint = Path(checkpoint)
    index = checkpoint / "model.safetensors.index.json"
    files = sorted(set(_json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    own = model.state_dict()
    by_storage = {(t.data_ptr(), tuple(t.shape)): name for name, t in own.items()}
    saved_names = revert_weight_conversion(model, dict(own))
    to_own = {saved: by_storage.get((t.data_ptr(), tuple(t.shape)), saved) for saved, t in saved_names.items()}
    loaded: dict = {}
    for name in files:
        for key, tensor in load_file(str(checkpoint / name), device="cpu").items():
            loaded[to_own.get(key, key)] = tensor
    result = model.load_state_dict(loaded, strict=False)
    # Tied weights (embedding = LM head) share one storage: the file holds one name, the storage map may
    # resolve it to the other, and either way both are loaded. Count a weight loaded by its storage.
    loaded_storage = {own[k].data_ptr() for k in loaded if k in own}
    missing = [k for k in result.missing_keys if k not in loaded and own[k].data_ptr() not in loaded_storage]
    if result.unexpected_keys or missing:
        raise LlavakitError(f"checkpoint {checkpoint} does not match the model: unexpected "
                            f"{result.unexpected_keys[:5]}, missing {missing[:5]}")
