"""A small load generator for the server: N clients in threads for a bounded time.

Used by the load test (no 5xx, bounded memory) and the benchmark
(``python -m llavakit.serve.loadgen --url http://127.0.0.1:8000 --clients 1 2 4``, which
reports total generated tokens/s per client count, side by side in one run).
Every client loops: POST a chat completion, record status and usage, repeat until the
time is up; a 429 waits ``backoff_s`` before retrying. Only loopback servers make sense here.
"""

from __future__ import annotations

import argparse
import base64
import io
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadResult:
    clients: int
    seconds: float
    statuses: Counter = field(default_factory=Counter)
    completion_tokens: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def red_image_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def default_body(model: str, max_tokens: int, image: bool = True) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": red_image_url()}}] if image else []
    return {"model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": parts + [{"type": "text", "text": "Describe the image."}]}]}


def run_load(url: str, body: dict, clients: int, seconds: float, api_key: str | None = None,
             backoff_s: float = 0.05, request_timeout_s: float = 120.0) -> LoadResult:
    """Hammer ``url``'s chat completions with ``clients`` threads for ``seconds`` (requests then in flight finish)."""
    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=request_timeout_s) as http:
            while time.monotonic() < stop_at:
                began = time.monotonic()
                try:
                    response = http.post("/v1/chat/completions", json={**body, "seed": index})
                    status = response.status_code
                    tokens = response.json().get("usage", {}).get("completion_tokens", 0) if status == 200 else 0
                except httpx.HTTPError as exc:
                    status, tokens = type(exc).__name__, 0
                with lock:
                    result.statuses[status] += 1
                    result.completion_tokens += tokens
                    if status == 200:
                        result.latencies_s.append(time.monotonic() - began)
                if status == 429:
                    time.sleep(backoff_s)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - began
    return result


def main() -> None:  # pragma: no cover - benchmark entry point
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole sweep (interleaved rounds)")
    parser.add_argument("--api-key")
    args = parser.parse_args()
    body = default_body(args.model, args.max_tokens)
    run_load(args.url, body, 1, 3.0, args.api_key)  # warm-up: compile caches, first prefill
    print("| round | clients | total tokens/s | ratio vs 1 client | requests | statuses | median latency s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for round_ in range(args.rounds):
        base = None
        for n in args.clients:
            r = run_load(args.url, body, n, args.seconds, args.api_key)
            base = base or r.tokens_per_s
            lat = sorted(r.latencies_s)[len(r.latencies_s) // 2] if r.latencies_s else float("nan")
            print(f"| {round_ + 1} | {n} | {r.tokens_per_s:.1f} | {r.tokens_per_s / base:.2f} | "
                  f"{sum(r.statuses.values())} | {dict(r.statuses)} | {lat:.2f} |", flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
