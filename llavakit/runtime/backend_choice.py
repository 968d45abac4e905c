"""Which LM backend ``Pipeline(dir)`` uses on this machine: a choice recorded by measurement.

Why: neither engine wins everywhere. On a 2-core AVX2 EPYC llama.cpp decodes the
bench-1b LM ~2x faster than OpenVINO INT4; on an AVX-512/AMX server or a GPU the
answer can flip. So nothing is guessed from CPU flags: ``llavakit bench`` (with
the llama.cpp peer) measures both backends on the same export and writes
``$LLAVAKIT_CACHE/backend_choice.json``, keyed by a fingerprint of this machine
(CPU model, CPU count, instruction-set flags). ``backend="auto"`` (the default)
reads it:

- ``llamacpp`` only when the file says so *for this machine* (it answers a new image
  and prompt with a typical 128-token answer at least 5% sooner: ``decide``), the
  export has an LM GGUF and llama-cpp-python imports;
- ``openvino`` otherwise — so without llama-cpp-python, without a GGUF or
  without a measurement everything behaves exactly as before this existed.

``LLAVAKIT_BACKEND=openvino|llamacpp`` overrides the recorded choice (same checks).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from llavakit.checkpoints.demo import cache_dir

CHOICE_FILE = "backend_choice.json"
ENV = "LLAVAKIT_BACKEND"
#: The answer the choice is made for: a new image and prompt (cold TTFT), then this many tokens.
TYPICAL_NEW_TOKENS = 128
#: llama.cpp must answer that request at least this much faster to be chosen (OpenVINO stays the default).
MIN_GAIN = 1.05


def machine_fingerprint() -> str:
    """CPU model, CPU count and flags: what decides which kernels are fast."""
    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    raw = f"{model}|{os.cpu_count()}|{flags}|{platform.machine()}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def choice_path() -> Path:
    return cache_dir() / CHOICE_FILE


def answer_seconds(measured: dict, new_tokens: int = TYPICAL_NEW_TOKENS) -> float:
    """Seconds to answer a new image and prompt with ``new_tokens`` tokens: cold TTFT + the decode."""
    return measured["ttft_cold_s"] + new_tokens / measured["decode_tokens_per_s"]


def decide(openvino: dict, llamacpp: dict) -> tuple[str, str]:
    """(backend, reason) from two measurements with ``decode_tokens_per_s`` and ``ttft_cold_s``.

    Why one number: the backends trade prefill for decode (OpenVINO prefills faster with AMX; llama.cpp decodes
    faster on AVX2 / AVX-512 CPUs without it), so neither metric alone says which answers a user sooner. The
    time of a typical answer (cold TTFT + ``TYPICAL_NEW_TOKENS`` decoded) weighs both.
    """
    d_ov, d_lc = openvino.get("decode_tokens_per_s"), llamacpp.get("decode_tokens_per_s")
    t_ov, t_lc = openvino.get("ttft_cold_s"), llamacpp.get("ttft_cold_s")
    if not (d_ov and d_lc and t_ov and t_lc):
        return "openvino", "incomplete measurement"
    a_ov, a_lc = answer_seconds(openvino), answer_seconds(llamacpp)
    reason = (f"a {TYPICAL_NEW_TOKENS}-token answer in {a_lc:.2f} vs {a_ov:.2f} s: decode {d_lc:.1f} vs {d_ov:.1f} "
              f"tok/s, TTFT cold {t_lc:.3f} vs {t_ov:.3f} s (llamacpp vs openvino)")
    if a_ov >= MIN_GAIN * a_lc:
        return "llamacpp", reason
    return "openvino", reason


def record_choice(openvino: dict, llamacpp: dict, source: str) -> dict:
    """Decide from two measurements and write the choice file; returns what was written."""
    backend, reason = decide(openvino, llamacpp)
    entry = {"backend": backend, "reason": reason, "machine": machine_fingerprint(), "source": source,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "openvino": openvino, "llamacpp": llamacpp}
    path = choice_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(entry, indent=2) + "\n")
    os.replace(tmp, path)
    return entry


def recorded_choice() -> str | None:
    """The backend recorded for this machine, or None (no file, unreadable, or another machine's)."""
    try:
        entry = json.loads(choice_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("machine") != machine_fingerprint():
        return None
    return entry.get("backend") if entry.get("backend") in ("openvino", "llamacpp") else None


def auto_backend(model_dir: Path) -> str:
    """"llamacpp" when chosen for this machine (or by $LLAVAKIT_BACKEND) and usable here; else "openvino"."""
    wanted = os.environ.get(ENV) or recorded_choice()
    if wanted != "llamacpp":
        return "openvino"
    from llavakit.export.lm_gguf import find_ggufs

    if not find_ggufs(model_dir):
        return "openvino"
    from llavakit.runtime.llamacpp_backend import llama_cpp_available

    return "llamacpp" if llama_cpp_available() else "openvino"
