"""File names of an exported model directory (the OpenVINO GenAI VLM layout).

Import-light on purpose: the runtime reads these names without importing
torch, the exporter writes them. Changing a name here changes both sides.
"""

from __future__ import annotations

from pathlib import Path

LANGUAGE_MODEL = "openvino_language_model.xml"
VISION_EMBEDDINGS = "openvino_vision_embeddings_model.xml"
TEXT_EMBEDDINGS = "openvino_text_embeddings_model.xml"
TOKENIZER = "openvino_tokenizer.xml"
DETOKENIZER = "openvino_detokenizer.xml"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
#: llavakit's own record: precision per part, sizes, times, the options used.
EXPORT_REPORT = "llavakit_export.json"

REQUIRED = (LANGUAGE_MODEL, VISION_EMBEDDINGS, TEXT_EMBEDDINGS, TOKENIZER, DETOKENIZER, CONFIG, EXPORT_REPORT)


def is_exported(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds a complete llavakit/OpenVINO export."""
    return all((Path(model_dir) / name).is_file() for name in REQUIRED)
