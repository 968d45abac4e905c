"""HTTP errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Status codes: 400 bad request (image, tags, context, settings), 401 API key, 404 unknown
model or route, 413 body or image too large, 429 queue full (a client should retry: the
server is healthy, just busy, so this is not a 5xx), 500 a bug, 504 timeout.
"""

from __future__ import annotations

from llavakit.errors import ContextOverflowError, ImageError, LlavakitError, PromptError


class APIError(Exception):
    """An error response: status, OpenAI error type/code, a message that says what to change."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ImageTooLargeError(ImageError):
    """An image over the server's byte or pixel limit (413, not 400)."""


class QueueFullError(LlavakitError):
    """Every slot is busy and the wait queue is full."""


class RequestTimeoutError(LlavakitError):
    """The request ran past the server's timeout (queue wait included)."""


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception to the response a client gets; unknown ones are 500 with no internals."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), "rate_limit_error", "queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, RequestTimeoutError):
        return APIError(504, str(exc), "timeout", "timeout")
    if isinstance(exc, ImageTooLargeError):
        return APIError(413, str(exc), code="image_too_large", param="messages")
    if isinstance(exc, ImageError):
        return APIError(400, str(exc), code="invalid_image", param="messages")
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, PromptError):
        return APIError(400, str(exc), code="invalid_prompt", param="messages")
    if isinstance(exc, LlavakitError):
        return APIError(400, str(exc))
    return APIError(500, f"internal server error ({type(exc).__name__}); the server keeps serving", "server_error")
