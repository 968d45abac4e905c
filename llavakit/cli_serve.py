"""``llavakit serve``: OpenAI-compatible HTTP API and web chatbot."""

from __future__ import annotations

from llavakit.cli import app, friendly_errors  # noqa: F401
