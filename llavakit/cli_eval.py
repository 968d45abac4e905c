"""``llavakit eval``: accuracy per question family, side by side across precisions."""

from __future__ import annotations

from llavakit.cli import app, friendly_errors  # noqa: F401
