"""``llavakit train``: the align, instruct and moe stages."""

from __future__ import annotations

from llavakit.cli import app, friendly_errors  # noqa: F401
