"""Render chat templates with plain Jinja — no transformers, so no torch on the OpenVINO path.

It mirrors the environment transformers renders templates in (sandboxed,
``trim_blocks``/``lstrip_blocks``, loop controls, ``raise_exception``,
``strftime_now``, ``tojson``, the ``{% generation %}`` tag), so a template
renders to the same text here as in ``processor.apply_chat_template`` — a test
checks that. Special-token variables (``bos_token``, ``eos_token``, ...) come
from the exported ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llavakit.errors import PromptError

_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


class _Generation(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; here it just renders."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _raise(message: str):
    raise PromptError(f"the chat template refused the conversation: {message}")


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class ChatRenderer:
    """The model's chat template plus its special tokens, ready to render conversations."""

    def __init__(self, template: str, special_tokens: dict[str, str]) -> None:
        self.template = template
        self.special_tokens = special_tokens

    @classmethod
    def from_dir(cls, model_dir: Path) -> ChatRenderer:
        """Read ``chat_template.jinja`` (or the tokenizer config's template) and the special tokens."""
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_path = model_dir / "chat_template.jinja"
        template = template_path.read_text() if template_path.is_file() else config.get("chat_template")
        if not template:
            raise PromptError(f"{model_dir} has no chat template (chat_template.jinja or tokenizer_config.json)")
        tokens = {k: _token_text(config.get(k)) for k in _TOKEN_KEYS}
        return cls(template, {k: v for k, v in tokens.items() if v is not None})

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages``; ends with the assistant cue when asked."""
        try:
            return _compile(self.template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                  **self.special_tokens)
        except jinja2.TemplateError as exc:
            raise PromptError(f"could not render the chat template: {exc}") from exc


def _token_text(value) -> str | None:
    """Special tokens are saved as strings or as AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        return value.get("content")
    return value
