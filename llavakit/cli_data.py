"""``llavakit data ...``: dataset tools (synthetic shapes-world generator, validation)."""

from __future__ import annotations

from llavakit.cli import app, friendly_errors  # noqa: F401
