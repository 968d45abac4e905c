"""The wire format: OpenAI chat-completions requests and responses as pydantic models.

Only what the engine can honour is accepted; parameters that would silently change
meaning (tools, n > 1, logprobs, JSON mode, penalties we do not implement) are refused
with a 400 naming them, rather than ignored. ``top_k``, ``repetition_penalty`` and
``ignore_eos`` are llavakit extensions (the ``openai`` client sends them via
``extra_body``; ``ignore_eos`` has vLLM's meaning). ``model`` names an entry of
``/v1/models``: the base model and each LoRA adapter served with ``--adapter name=PATH``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageURL(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


#: Request fields that exist in OpenAI's API but that this server cannot honour.
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "audio", "prediction", "logit_bias",
               "top_logprobs", "web_search_options")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    logprobs: bool | None = None
    response_format: dict | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None
    # llavakit extensions
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False

    def unsupported(self) -> list[str]:
        """Names of given parameters the server refuses (the 400 message lists them)."""
        extra = self.model_extra or {}
        bad = [k for k in UNSUPPORTED if extra.get(k) not in (None, [], {})]
        if self.n not in (None, 1):
            bad.append("n (only 1)")
        if self.logprobs:
            bad.append("logprobs")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            bad.append("response_format (only text)")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                bad.append(f"{name} (use repetition_penalty)")
        return bad


class CompletionTokensDetails(BaseModel):
    """OpenAI's per-completion token details; llavakit fills the prediction counts with speculative decoding.

    ``accepted_prediction_tokens`` / ``rejected_prediction_tokens`` are the draft model's proposals the
    model accepted / rejected (OpenAI uses the same fields for its predicted outputs).
    """

    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None  # present with a draft model (serve --draft)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llavakit"
    parent: str | None = None  # a LoRA adapter's base model (as vLLM lists adapters)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
