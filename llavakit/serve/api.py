"""The HTTP server: OpenAI chat completions (JSON and SSE), /v1/models, /health, the UI at /ui.

Request path: size-limited body → pydantic validation (400) → model lookup (404) →
messages and image references → remote images fetched (only if allowed) → images
decoded off the event loop → a job on the scheduler (429 when full) → events from the
worker thread, delivered into this loop with ``call_soon_threadsafe``.

Streaming waits for the first event before sending headers, so an error found at
prefill (context overflow, image-tag mismatch) is a real HTTP 400, not a broken
stream. A client that goes away — noticed while waiting (polling) or when a chunk
cannot be sent — cancels its job, and the worker frees the slot after the current
token. Every error, expected or not, leaves as OpenAI's error JSON and the server
keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llavakit.runtime.pipeline import Pipeline
from llavakit.serve.engine import ChatJob, Done, Engine, Event, Failed, Piece, conversation, generation_settings
from llavakit.serve.errors import APIError, RequestTimeoutError, to_api_error
from llavakit.serve.images import decode_images, fetch_remote
from llavakit.serve.scheduler import Job
from llavakit.serve.schemas import (AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
                                    Choice, ChunkChoice, CompletionTokensDetails, Delta, ModelCard, ModelList, Usage,
                                    new_completion_id, now)
from llavakit.serve.settings import ServeSettings

log = logging.getLogger("llavakit.serve")
POLL_S = 0.25  # how often a waiting request checks whether its client is still there


class ClientGone(Exception):
    """The client closed the connection."""


def create_app(pipeline_or_engine: Pipeline | Engine, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``pipeline_or_engine`` under ``settings`` (defaults when None)."""
    if isinstance(pipeline_or_engine, Engine):
        engine = pipeline_or_engine
        settings = engine.settings
    else:
        settings = settings or ServeSettings()
        engine = Engine(pipeline_or_engine, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="llavakit", summary="OpenAI-compatible chat completions for LLaVA models", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _api_error_response(APIError(400, _describe(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _api_error_response(APIError(exc.status_code, str(exc.detail), "invalid_request_error"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _api_error_response(to_api_error(exc))

    @app.middleware("http")
    async def _auth(request: Request, call_next):  # noqa: ANN001, ANN202
        if settings.api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            token = header[7:] if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                what = "no API key given" if not token else "incorrect API key"
                return _api_error_response(APIError(401, f"{what}: send 'Authorization: Bearer <key>'",
                                                    code="invalid_api_key"))
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, **engine.scheduler.stats()}

    @app.get("/v1/models")
    async def models() -> dict:
        return ModelList(data=[ModelCard(id=m.id, created=m.created, parent=m.parent)
                               for m in engine.models]).model_dump()

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict:
        entry = engine.resolve_model(model_id)
        return ModelCard(id=entry.id, created=entry.created, parent=entry.parent).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):  # noqa: ANN202
        body = await _read_body(request, settings.max_request_bytes)
        try:
            req = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            raise APIError(400, _describe(exc.errors())) from None
        if bad := req.unsupported():
            raise APIError(400, f"unsupported parameter(s): {', '.join(bad)}")
        entry = engine.resolve_model(req.model)
        try:
            messages, refs = conversation(req.messages, settings)
            gen_settings = generation_settings(req, settings)
            await fetch_remote(refs, settings)
            images = await run_in_threadpool(decode_images, refs, settings)
        except Exception as exc:
            raise to_api_error(exc) from None
        events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        try:
            job = engine.submit(ChatJob(messages, images, gen_settings, entry),
                                lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        except Exception as exc:
            raise to_api_error(exc) from None
        completion_id, created = new_completion_id(), now()
        try:
            first = await _next_event(events, job, request)
        except ClientGone:
            engine.cancel(job)
            return JSONResponse({}, status_code=499)
        except BaseException:
            engine.cancel(job)
            raise
        if isinstance(first, Failed):
            raise to_api_error(first.error)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = _sse(engine, job, events, request, first, completion_id, created, entry.id, include_usage)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        pieces: list[str] = []
        event = first
        try:
            while not isinstance(event, Done):
                if isinstance(event, Failed):
                    raise to_api_error(event.error)
                pieces.append(event.text)
                event = await _next_event(events, job, request)
        except ClientGone:
            engine.cancel(job)
            return JSONResponse({}, status_code=499)
        finally:
            if not isinstance(event, Done):
                engine.cancel(job)
        result = event.result  # text = the streamed pieces (result.text may end in a cut-off U+FFFD)
        usage = _usage(result)
        return ChatCompletion(id=completion_id, created=created, model=entry.id, usage=usage, choices=[
            Choice(message=AssistantMessage(content="".join(pieces)), finish_reason=result.finish_reason)]).model_dump()

    if settings.ui:
        import gradio as gr

        from llavakit.serve.ui import build_ui

        auth = (lambda _user, password: hmac.compare_digest(password, settings.api_key)) if settings.api_key else None
        app = gr.mount_gradio_app(app, build_ui(engine), path="/ui", auth=auth,
                                  auth_message="Log in with any user name and the server's API key.")
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (header or streamed)."""
    declared = request.headers.get("content-length")
    too_large = APIError(413, f"request body is larger than the server's limit of {limit} bytes",
                         code="request_too_large")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _next_event(events: asyncio.Queue, job: Job, request: Request) -> Event:
    """The job's next event; raises APIError 504 past the deadline, ClientGone if the client left."""
    while True:
        remaining = job.deadline - time.monotonic()
        if remaining <= 0:
            raise to_api_error(RequestTimeoutError("the request took longer than the server's timeout "
                                                   "(queue wait included)"))
        try:
            return await asyncio.wait_for(events.get(), timeout=min(remaining, POLL_S))
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise ClientGone() from None


async def _sse(engine: Engine, job: Job, events: asyncio.Queue, request: Request, first: Event, completion_id: str,
               created: int, model: str, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: role chunk, content chunks, finish chunk, optional usage chunk, [DONE]."""

    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, choices: bool = True) -> str:
        body = ChatCompletionChunk(id=completion_id, created=created, model=model, usage=usage,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)] if choices else [])
        return f"data: {body.model_dump_json(exclude_none=False)}\n\n"

    event = first
    try:
        yield chunk(Delta(role="assistant", content=""))
        while True:
            if isinstance(event, Piece):
                yield chunk(Delta(content=event.text))
            elif isinstance(event, Done):
                yield chunk(Delta(), finish=event.result.finish_reason)
                if include_usage:
                    yield chunk(Delta(), usage=_usage(event.result), choices=False)
                yield "data: [DONE]\n\n"
                return
            else:
                yield f"data: {json.dumps(to_api_error(event.error).body())}\n\n"
                return
            try:
                event = await _next_event(events, job, request)
            except APIError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                return
            except ClientGone:
                return
    finally:
        if not isinstance(event, Done):
            engine.cancel(job)


def _usage(result) -> Usage:  # noqa: ANN001
    prompt, completion = result.metrics.prompt_tokens, result.metrics.generated_tokens
    spec = getattr(result, "speculative", None)  # SpeculativeStats, with a draft model
    details = CompletionTokensDetails(accepted_prediction_tokens=spec.accepted,
                                      rejected_prediction_tokens=spec.drafted - spec.accepted) if spec else None
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 completion_tokens_details=details)


def _api_error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _describe(errors: list) -> str:
    """Pydantic errors as one readable line: 'messages.0.role: Input should be ...'."""
    lines = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        lines.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "invalid request: " + "; ".join(lines)
