"""Turn what a user typed (a directory, a hub id, a reserved name) into a local directory.

Why one place: every command (build, chat, export, serve) accepts the same kinds
of model reference, and every one of them must fail the same way when the
reference is wrong — fast, with a message that says what to pass instead. The
hub is tried only for strings shaped like ``org/name``; with no network the
download fails in well under a second and we say to pass a local path.
"""

from __future__ import annotations

import re
from pathlib import Path

from llavakit.errors import ModelLoadError

#: The embedded default models: ``nano`` (committed whole), ``budget`` (assembled from committed parts + SmolLM2).
RESERVED_NAMES = ("nano", "budget")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(ref: str | Path, what: str = "model") -> Path:
    """Return a local directory holding ``ref``: the directory itself, or a hub snapshot.

    ``what`` names the role ("vision encoder", "language model", ...) for error messages.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{what} directory {path} has no config.json: expected a Hugging Face model directory")
        return path
    if path.exists():
        raise ModelLoadError(f"{what} {path} is a file: pass the directory that holds config.json")
    text = str(ref)
    if text == "demo":
        from llavakit.checkpoints.demo import ensure_demo_model  # builds on first use

        return ensure_demo_model()
    if text == "nano":
        from llavakit.checkpoints.nano import nano_model_dir

        return nano_model_dir()
    if text == "budget":
        # assembled from SmolLM2 + the committed trained parts on first use
        from llavakit.checkpoints.budget import ensure_budget_model

        return ensure_budget_model()
    if not _HUB_ID.match(text):
        raise ModelLoadError(f"{what} not found: {text!r} is neither a local directory nor a hub id like 'org/name'")
    if path.parent.is_dir():  # runs/alig: a local path with a typo, not a hub id
        near = sorted(p.name for p in path.parent.iterdir() if p.is_dir() and not p.name.startswith("."))[:8]
        raise ModelLoadError(f"{what} not found: {path.parent}/ has no {path.name!r}"
                             + (f" (it has: {', '.join(near)})" if near else "")
                             + "; a hub id like 'org/name' is tried only when no local folder 'org' exists")
    return _download(text, what)


def _download(repo_id: str, what: str) -> Path:
    """Fetch ``repo_id`` from the hub cache or the hub; say clearly when that is impossible."""
    from huggingface_hub import snapshot_download  # imported late: only hub ids need it

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]))
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise ModelLoadError(
            f"could not get {what} {repo_id!r} from the Hugging Face hub ({type(exc).__name__}); "
            f"without network access, download it elsewhere and pass its local directory instead"
        ) from exc
