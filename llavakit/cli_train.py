"""``llavakit train`` and ``llavakit eval``."""

from __future__ import annotations

from llavakit.cli import app, friendly_errors  # noqa: F401
