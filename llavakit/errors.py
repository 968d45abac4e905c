"""Errors llavakit raises for bad input.

Every user-facing failure is a subclass of :class:`LlavakitError` so the CLI and
the server can catch one type and print a one-line message instead of a
traceback. Each message names the offending value and what is allowed.
"""

from __future__ import annotations


class LlavakitError(Exception):
    """Base class: a problem with what the user gave us, explained in the message."""


class ImageError(LlavakitError):
    """An image could not be read, or is outside what we accept (size, format)."""


class PromptError(LlavakitError):
    """A prompt is malformed: wrong number of ``<image>`` tags, too long for the context, ..."""


class ContextOverflowError(PromptError):
    """The conversation does not fit the model's context window."""


class ModelLoadError(LlavakitError):
    """A model directory or hub id could not be found or does not hold a supported model."""


class BuildError(LlavakitError):
    """Parts given to ``llavakit build`` cannot be assembled into a LLaVA."""
