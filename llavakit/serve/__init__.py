"""OpenAI-compatible HTTP API and Gradio web chatbot over the llavakit engine.

    from llavakit import Pipeline
    from llavakit.serve import ServeSettings, create_app
    app = create_app(Pipeline("model-dir"), ServeSettings(slots=2))   # any ASGI server runs it

Layers: ``schemas`` (the wire format) → ``api`` (HTTP: auth, limits, SSE, errors) and
``ui`` (Gradio) → ``engine`` (requests → generation jobs) → ``scheduler`` (bounded queue,
one worker thread per slot, each slot a :meth:`Pipeline.fork`).
"""

from llavakit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(pipeline_or_engine, settings: ServeSettings | None = None):  # noqa: ANN001, ANN201
    """Build the FastAPI app (imported lazily so ``import llavakit.serve`` stays light)."""
    from llavakit.serve.api import create_app as _create

    return _create(pipeline_or_engine, settings)
