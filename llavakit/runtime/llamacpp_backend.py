"""The llama.cpp backend: vision on OpenVINO, the language model in llama.cpp.

Why: on some CPUs llama.cpp's quantized matmul kernels decode a 1B LM about 2x
faster than OpenVINO's INT4 path, near the memory-bandwidth floor, while
OpenVINO's INT8 vision encoder is fine (benchmarks/README.md). So this backend
keeps everything of the OpenVINO engine except the LM: tokenizer and
detokenizer (openvino-tokenizers), chat template, NumPy image preprocessing,
the vision IR and its image-feature cache all come from
:class:`~llavakit.runtime.ov_backend.OpenVINOBackend` (subclassed, so prompt
preparation is the same code), and the LM runs from the export directory's
``openvino_language_model.<TYPE>.gguf`` (``llavakit export --lm-gguf``).

How the LM is fed (llama-cpp-python's low-level C API, no ``Llama.eval``):
- A prompt is a list of position keys (token id, or ``(image digest, i)``),
  exactly as in the OpenVINO engine. Consecutive text positions go to
  ``llama_decode`` as a token batch (llama.cpp looks their embeddings up in its
  own ``token_embd``); consecutive image positions go as an ``embd`` batch of
  the projected features. A batch carries one or the other, so a prompt is a few
  batches, each at explicit positions ``start .. start+n-1``; logits are asked
  for on the prompt's last position only.
- KV-prefix reuse: the keys the cache holds are remembered; a new prompt keeps
  the shared prefix (``llama_memory_seq_rm`` trims the rest) and computes only
  the new positions, so turn 2 of a chat prefills only turn 2 and a repeated
  request costs one position. At least the last position is always recomputed
  (its logits are needed).
- The text-embeddings IR is not loaded at all (llama.cpp embeds tokens), which
  saves its memory.
- Text comes out through llama.cpp's own ``llama_detokenize`` (special tokens
  dropped, SentencePiece's leading space stripped as the HF decoder does) rather
  than the OpenVINO detokenizer: the streaming loop re-decodes the growing answer
  after every token, and one OpenVINO infer call per token cost about 1 ms, 2-3%
  of a decode step here. ``tests/test_llamacpp_backend.py`` checks both give the
  same text.

Only LLaVA (one image = a fixed number of positions) is supported; other model
types get a clear error. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from llavakit.errors import LlavakitError, ModelLoadError
from llavakit.export import layout
from llavakit.export.lm_gguf import find_ggufs, gguf_name
from llavakit.runtime.llamacpp_amx import load_llama
from llavakit.runtime.ov_backend import (
    PRECISE,
    OpenVINOBackend,
    OVPrompt,
    _common_prefix,
    pick_ov_device,
)

INSTALL_HINT = ('CMAKE_ARGS="-DGGML_NATIVE=ON" pip install "llavakit[bench]"  '
                "(builds llama-cpp-python from source, ~20 min; see benchmarks/LLAMACPP.md)")
SUPPORTED = ("llava",)


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python can be imported (the backend's only extra dependency)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or OSError from a broken native library
        return False
    return True


def _import_llama_cpp():
    try:
        import llama_cpp
    except Exception as exc:  # noqa: BLE001 - as above: any failure to load the native library
        raise LlavakitError(f"the llamacpp backend needs llama-cpp-python, which cannot be imported ({exc}); "
                            f"install it: {INSTALL_HINT}") from None
    return llama_cpp


def default_threads() -> int:
    """``$LLAVAKIT_LLAMACPP_THREADS``, else the CPUs this process may run on (llama-cpp-python's default is half).

    On a machine other jobs keep busy, fewer threads than cores can be much faster: llama.cpp's
    threads wait for each other at every op, so one descheduled thread stalls them all.
    """
    if os.environ.get("LLAVAKIT_LLAMACPP_THREADS", "").strip():
        try:
            return max(1, int(os.environ["LLAVAKIT_LLAMACPP_THREADS"]))
        except ValueError:
            raise LlavakitError(f"LLAVAKIT_LLAMACPP_THREADS must be a whole number, got "
                                f"{os.environ['LLAVAKIT_LLAMACPP_THREADS']!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pick_gguf(model_dir: Path, gguf: str | Path | None) -> Path:
    """The GGUF to load: ``gguf`` (a path, or a type such as "q4_k_m"), else the best one in ``model_dir``."""
    if gguf is not None:
        path = Path(gguf)
        if path.suffix != ".gguf":
            path = model_dir / gguf_name(str(gguf))
        if not path.is_file():
            raise ModelLoadError(f"GGUF {path} does not exist; present: {[p.name for p in find_ggufs(model_dir)]}")
        return path
    found = find_ggufs(model_dir)
    if not found:
        raise ModelLoadError(
            f"{model_dir} has no language-model GGUF ({gguf_name('<type>')}) for the llamacpp backend; "
            f"export with: llavakit export MODEL --out DIR --lm-gguf q4_k_m"
        )
    return found[0]


class _Batch:
    """A reusable ``llama_batch`` for one sequence: tokens or embeddings, ``capacity`` positions at a time."""

    def __init__(self, lib, capacity: int, n_embd: int) -> None:
        self._lib, self.capacity, self.n_embd = lib, capacity, n_embd
        self.raw = lib.llama_batch_init(capacity, n_embd, 1)
        for i in range(capacity):
            self.raw.n_seq_id[i] = 1
            self.raw.seq_id[i][0] = 0

    def fill(self, start: int, tokens: np.ndarray | None = None, embd: np.ndarray | None = None,
             logits_last: bool = False) -> None:
        """Positions ``start..start+n-1`` with ``tokens`` (n,) int32 or ``embd`` (n, D) float32."""
        n = len(tokens) if tokens is not None else len(embd)
        if tokens is not None:
            data = np.ascontiguousarray(tokens, dtype=np.int32)  # (n,)
            ctypes.memmove(self.raw.token, data.ctypes.data, data.nbytes)
        else:
            data = np.ascontiguousarray(embd, dtype=np.float32)  # (n, D)
            ctypes.memmove(self.raw.embd, data.ctypes.data, data.nbytes)
        pos = np.arange(start, start + n, dtype=np.int32)  # (n,)
        ctypes.memmove(self.raw.pos, pos.ctypes.data, pos.nbytes)
        flags = np.zeros(n, dtype=np.int8)
        flags[-1] = 1 if logits_last else 0
        ctypes.memmove(self.raw.logits, flags.ctypes.data, flags.nbytes)
        self.raw.n_tokens = n

    def close(self) -> None:
        if self.raw is not None:
            self._lib.llama_batch_free(self.raw)
            self.raw = None


class LlamaCppBackend(OpenVINOBackend):
    """Prefill/decode over an export directory: vision IR on OpenVINO, LM GGUF in llama.cpp."""

    name = "llamacpp"

    def __init__(self, model_dir: Path, device: str | None = None, properties: dict | None = None,
                 precise: bool = False, gguf: str | Path | None = None, n_threads: int | None = None,
                 n_ctx: int | None = None) -> None:
        # Deliberately not OpenVINOBackend.__init__: it compiles the LM and text-embedding IRs,
        # which this backend never runs (memory). The attributes below are the ones its prompt,
        # text and image methods use.
        llama_cpp = _import_llama_cpp()
        model_dir = Path(model_dir)
        if not layout.is_exported(model_dir):
            raise ModelLoadError(f"{model_dir} is not a complete llavakit OpenVINO export (missing {layout.REQUIRED})")
        config = json.loads((model_dir / layout.CONFIG).read_text())
        if config.get("model_type") not in SUPPORTED:
            raise ModelLoadError(f"the llamacpp backend supports {SUPPORTED}, {model_dir} holds "
                                 f"{config.get('model_type')!r}; use backend='openvino'")
        text_config = config.get("text_config", {})
        self.gguf_path = pick_gguf(model_dir, gguf)
        core = ov.Core()
        self.device = pick_ov_device(core, device)
        props = {**(PRECISE if precise else {}), **(properties or {})}
        self._vision = core.compile_model(model_dir / layout.VISION_EMBEDDINGS, self.device, props)
        self._init_prompt_side(core, model_dir, config, max_context=n_ctx)
        self.n_threads = int(n_threads or default_threads())
        self._lib = llama_cpp
        self._llm = self._load(llama_cpp, text_config)
        self._ctx = self._llm.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self.n_vocab = int(self._llm.n_vocab())
        self.n_embd = int(llama_cpp.llama_model_n_embd(self._llm.model))
        if self.n_embd != int(text_config.get("hidden_size", self.n_embd)):
            raise ModelLoadError(f"{self.gguf_path.name} has hidden size {self.n_embd} but {model_dir} "
                                 f"says {text_config.get('hidden_size')}: the GGUF is not this model's LM")
        self.n_batch = 512
        self._tokens = _Batch(llama_cpp, self.n_batch, 0)
        self._embeds = _Batch(llama_cpp, self.n_batch, self.n_embd)

    def _load(self, llama_cpp, text_config: dict):
        try:
            return load_llama(llama_cpp, model_path=str(self.gguf_path), n_ctx=self.max_context, n_batch=512,
                              n_ubatch=512, n_threads=self.n_threads, n_threads_batch=self.n_threads,
                              flash_attn=False, use_mmap=False, verbose=False)
        except (ValueError, RuntimeError) as exc:  # llama-cpp-python: "Failed to load model from file"
            raise ModelLoadError(f"llama.cpp could not load {self.gguf_path} ({exc}); the file is missing, "
                                 f"truncated or not a GGUF — export it again with --lm-gguf") from None

    # --- model ------------------------------------------------------------------------------
    def prefill(self, prepared: OVPrompt) -> np.ndarray:
        keys = prepared.keys
        keep = self._trim_state(_common_prefix(self._state_keys, keys, limit=len(keys) - 1))
        self.cached_tokens = keep
        self.image_encode_s = 0.0
        features = self._needed_features(prepared, keep)  # digest -> (P, D)
        try:
            logits = self._feed(keys, keep, features)
        except BaseException:
            self.reset()  # a half-run prompt must not be mistaken for a cached prefix
            raise
        self._state_keys = list(keys)
        return logits

    def decode_one(self, token_id: int) -> np.ndarray:
        start = len(self._state_keys)
        self._tokens.fill(start, tokens=np.asarray([token_id]), logits_last=True)
        self._decode(self._tokens)
        self._state_keys.append(token_id)
        return self._logits()

    def _needed_features(self, prepared: OVPrompt, start: int) -> dict[str, np.ndarray]:
        """Projected features of the images that have positions at or after ``start`` (cache first)."""
        needed = {key[0] for key in prepared.keys[start:] if isinstance(key, tuple)}
        return {d: self._image_features(px, d) for px, d in zip(prepared.images, prepared.digests) if d in needed}

    def _feed(self, keys: list[Hashable], start: int, features: dict[str, np.ndarray]) -> np.ndarray:
        """Decode positions ``start:`` of ``keys`` as runs of token batches and embedding batches."""
        end = len(keys)
        pos = start
        while pos < end:
            is_image = isinstance(keys[pos], tuple)
            run_end = pos
            while run_end < end and run_end - pos < self.n_batch and isinstance(keys[run_end], tuple) == is_image:
                run_end += 1
            last = run_end == end
            if is_image:
                rows = np.stack([features[d][j] for d, j in keys[pos:run_end]])  # (n, D)
                self._embeds.fill(pos, embd=rows, logits_last=last)
                self._decode(self._embeds)
            else:
                self._tokens.fill(pos, tokens=np.asarray(keys[pos:run_end]), logits_last=last)
                self._decode(self._tokens)
            pos = run_end
        return self._logits()

    def decode_text(self, token_ids: list[int]) -> str:
        """Token ids to text with llama.cpp's vocab (special tokens removed), as the OpenVINO detokenizer would."""
        if not token_ids:
            return ""
        ids = (self._lib.llama_token * len(token_ids))(*token_ids)
        size = max(64, 8 * len(token_ids))
        for _ in range(2):  # a negative return is the size needed
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_detokenize(self._vocab, ids, len(token_ids), buf, size, True, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n + 1
        raise LlavakitError(f"llama.cpp could not detokenize {len(token_ids)} tokens")

    def _decode(self, batch: _Batch) -> None:
        rc = self._lib.llama_decode(self._ctx, batch.raw)
        if rc != 0:
            raise LlavakitError(f"llama.cpp llama_decode failed (returned {rc}) at {len(self._state_keys)} cached "
                                f"positions of {self.max_context}")

    def _logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()  # (V,)

    def _trim_state(self, keep: int) -> int:
        """Cut the KV cache to its first ``keep`` positions; returns how many it kept (0 if it had to clear)."""
        if keep == len(self._state_keys):
            return keep
        if keep == 0 or not self._lib.llama_memory_seq_rm(self._memory, 0, keep, -1):
            self._lib.llama_memory_clear(self._memory, True)  # some caches cannot drop a suffix: start over
            keep = 0
        self._state_keys = self._state_keys[:keep]
        return keep

    def reset(self) -> None:
        """Forget the KV cache (the image feature cache stays)."""
        self._lib.llama_memory_clear(self._memory, True)
        self._state_keys = []

    def close(self) -> None:
        """Free llama.cpp's batches, context and model now rather than at garbage collection."""
        for batch in (getattr(self, "_tokens", None), getattr(self, "_embeds", None)):
            if batch is not None:
                batch.close()
        if getattr(self, "_llm", None) is not None:
            self._llm.close()
            self._llm = None

    def describe(self) -> dict[str, Any]:
        """What runs where (for logs and the bench report)."""
        return {"backend": self.name, "gguf": self.gguf_path.name, "n_threads": self.n_threads,
                "vision_device": self.device, "n_ctx": self.max_context}
