"""``llavakit upcycle``: MoE-LLaVA commands."""

from __future__ import annotations

from llavakit.cli import app, friendly_errors  # noqa: F401
