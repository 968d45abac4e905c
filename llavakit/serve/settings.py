"""Every limit and switch of the server in one typed dataclass (the CLI fills it from options)."""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass
class ServeSettings:
    """What the server accepts and how much work it takes on.

    Defaults are sized for a CPU box: a few slots, a short queue (past it clients get 429
    and retry, instead of everyone slowing to a crawl), requests bounded in bytes, images,
    pixels and tokens so one client cannot exhaust memory.
    """

    model_name: str = "llavakit"  # the id /v1/models lists and requests name
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    slots: int = 2  # requests generating at once (one KV state each)
    max_queue: int = 8  # requests waiting for a slot; more are refused with 429
    request_timeout_s: float = 300.0  # queue wait + generation; past it 504
    max_request_bytes: int = 20 * MIB  # the whole JSON body; past it 413
    max_image_bytes: int = 8 * MIB  # one encoded image; past it 413
    max_image_pixels: int = 4096 * 4096  # one decoded image; past it 413
    max_images: int = 4  # per request; past it 400
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    default_max_tokens: int = 512  # when a request gives none
    allow_remote_images: bool = False  # http(s) image URLs (only to allowed_hosts)
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    remote_timeout_s: float = 10.0
    ui: bool = False  # mount the Gradio chatbot at /ui

    def __post_init__(self) -> None:
        from llavakit.errors import LlavakitError

        for name in ("slots", "max_images", "max_tokens_limit", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise LlavakitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise LlavakitError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.allow_remote_images and not self.allowed_hosts:
            raise LlavakitError("--allow-remote-images needs at least one --allow-host HOST (an allow-list)")
        self.allowed_hosts = tuple(h.lower() for h in self.allowed_hosts)
