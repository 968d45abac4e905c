"""Chat templates: the LLaVA/vicuna one we ship, and making any LM's own template multimodal.

A LLaVA prompt is a list of messages whose ``content`` is either a string or a
list of parts (``{"type": "image"}``, ``{"type": "text", "text": ...}``, the
shape transformers' processors and the OpenAI API use). Every image part must
become one ``<image>`` placeholder, which the processor later expands into the
right number of image tokens.

Most LM chat templates (chatml, Llama-2, ...) only understand string content.
Rather than rewrite each one, :func:`make_multimodal` puts a short Jinja prelude
in front of the LM's own template that rewrites ``messages`` into string
content with ``<image>\\n`` where each image part was — the same place the
llava-hf templates put it. The LM keeps the exact prompt format it was tuned
on, and the saved template still works in plain ``transformers``.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_TOKEN = "<image>"

#: LLaVA-1.5 ("vicuna_v1") format: "SYSTEM USER: <image>\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT:".
#: Plain Jinja only (no transformers-specific tags) so OpenVINO GenAI's renderer runs it too.
VICUNA_TEMPLATE = (
    "{%- set ns = namespace(system=\"A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.\") -%}"
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] in ['image', 'image_url'] -%}{{ '<image>\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = render(messages[0]['content']) -%}{%- endif -%}"
    "{{ bos_token if bos_token else '' }}{{ ns.system }}{{ ' ' if ns.system else '' }}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + render(message['content']) + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

#: Rewrites list content into strings, one "<image>\n" per image part, before the LM's template runs.
_MULTIMODAL_PRELUDE = (
    "{#- llavakit: list content -> string content with <image> placeholders -#}"
    "{%- set _lk = namespace(msgs=[]) -%}"
    "{%- for _m in messages -%}"
    "{%- set _t = namespace(text='') -%}"
    "{%- if _m['content'] is string -%}{%- set _t.text = _m['content'] -%}"
    "{%- else -%}{%- for _p in _m['content'] -%}"
    "{%- if _p['type'] in ['image', 'image_url'] -%}{%- set _t.text = _t.text ~ '<image>\\n' -%}"
    "{%- elif _p['type'] == 'text' -%}{%- set _t.text = _t.text ~ _p['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- set _lk.msgs = _lk.msgs + [{'role': _m['role'], 'content': _t.text}] -%}"
    "{%- endfor -%}"
    "{%- set messages = _lk.msgs -%}"
)

#: Template names accepted by ``llavakit build --chat-template``.
NAMED_TEMPLATES = {"llava": VICUNA_TEMPLATE, "vicuna": VICUNA_TEMPLATE}


def make_multimodal(template: str) -> str:
    """Return ``template`` preceded by the prelude that turns image parts into ``<image>`` tags."""
    if template.startswith(_MULTIMODAL_PRELUDE) or template == VICUNA_TEMPLATE:
        return template
    return _MULTIMODAL_PRELUDE + template


def resolve_chat_template(choice: str | None, lm_template: str | None) -> str:
    """Pick the template for a new LLaVA.

    ``choice`` is None/"keep" (the LM's own template, made multimodal; vicuna when
    the LM has none), a name from :data:`NAMED_TEMPLATES`, or a path to a Jinja file.
    """
    if choice in (None, "", "keep"):
        return make_multimodal(lm_template) if lm_template else VICUNA_TEMPLATE
    if choice in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[choice]
    path = Path(choice)
    if path.is_file():
        return make_multimodal(path.read_text(encoding="utf-8"))
    raise ValueError(
        f"unknown chat template {choice!r}: use 'keep', one of {sorted(NAMED_TEMPLATES)}, or a path to a .jinja file"
    )
