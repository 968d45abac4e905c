"""llama.cpp as the speed peer of llavakit's language-model decode.

Why: llama.cpp is the CPU engine users already know as "the fast one", so a claim
that llavakit decodes fast on a CPU only means something next to llama.cpp running
the *same* LM weights, quantized by llama.cpp's *own* tools to its usual formats
(Q4_K_M, Q4_0). This module is the plumbing for that comparison; the benchmark
decides what to compare.

How, with nothing but PyPI:

* **Engine.** ``llama-cpp-python`` is built from source (``pip install`` compiles
  the llama.cpp it vendors; ``CMAKE_ARGS="-DGGML_NATIVE=ON"`` for this CPU). Its
  ctypes bindings give both the model runner and ``llama_model_quantize`` (the
  function behind the ``llama-quantize`` tool, which the wheel does not ship).
* **Converter.** The wheel does not install ``convert_hf_to_gguf.py`` either. The
  sdist of the *same* llama-cpp-python version vendors the whole llama.cpp tree,
  so :func:`find_converter` ``pip download``s that sdist once and extracts the
  converter, its ``conversion/`` package, its ``gguf-py`` and ``models/templates``
  into a cache. The script must run with that vendored ``gguf-py``: it is newer
  than the ``gguf`` 0.19.0 on PyPI although both say "0.19.0" (the PyPI one lacks
  ``gguf.LazyChunkedTensor`` and the conversion dies). The script puts its own
  ``gguf-py`` first on ``sys.path`` unless ``NO_LOCAL_GGUF`` is set, so we run it
  in a subprocess with that variable removed. It also imports ``sentencepiece``
  for every Llama-family model, even one without ``tokenizer.model``.
* **Tokenizers.** For byte-level BPE tokenizers the converter hashes the
  tokenization of a fixed text to recognise the pre-tokenizer (the split regex)
  and refuses unknown ones. SmolLM2's is recognised (``smollm``). The random
  tokenizers of :mod:`llavakit.checkpoints.random_parts` are not (their hash is
  unique to the toy vocabulary), but their split is a lone ``ByteLevel`` with
  GPT-2's regex, which is exactly llama.cpp's ``gpt-2`` pre-tokenizer; with
  ``pre_tokenizer="auto"`` we give the converter that name, and only when its own
  detection failed. The benchmarks feed token ids, not text, so a GGUF's
  tokenizer never affects a timing.
* **Measuring.** :func:`bench_llamacpp` feeds the prompt as ids through
  ``Llama.eval`` (llama.cpp batches it as ``llama_decode`` calls), picks each next
  token with llama.cpp's native greedy sampler, and times prefill and decode
  separately. Decode is ``n_decode`` single-token forward passes, each followed by
  greedy sampling; it never stops early at EOS, so every run does the same work.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from llavakit.checkpoints.atomic import atomic_directory
from llavakit.errors import LlavakitError
from llavakit.runtime.llamacpp_amx import load_llama

DIST = "llama-cpp-python"
#: The version this module was written and measured against (benchmarks/LLAMACPP.md).
TESTED_VERSION = "0.3.36"
SENTENCEPIECE = "sentencepiece==0.2.3"
INSTALL_HINT = (
    f'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary {DIST} "{DIST}=={TESTED_VERSION}" "{SENTENCEPIECE}" '
    "(the llama.cpp bench peer; it compiles llama.cpp, about 20 minutes on 2 cores; see benchmarks/LLAMACPP.md)"
)
#: A llama.cpp source tree to use instead of the sdist (must hold convert_hf_to_gguf.py).
SOURCE_ENV = "LLAVAKIT_LLAMACPP_SRC"

CONVERTER = "convert_hf_to_gguf.py"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
#: What find_converter copies out of ``vendor/llama.cpp/`` in the sdist.
_WANTED_FILES = (CONVERTER, "LICENSE")
_WANTED_DIRS = ("conversion/", "gguf-py/gguf/", "models/templates/")
_MARKER = ".llavakit-source.json"

#: Runs the converter with one change: when its pre-tokenizer detection fails and we
#: were given a fallback name (argv[2]), that name is used instead of raising.
_LAUNCHER = r"""
import runpy, sys
from pathlib import Path
script, fallback = sys.argv[1], sys.argv[2]
root = str(Path(script).parent)
sys.path[:0] = [root, str(Path(root) / "gguf-py")]
import gguf
if not Path(gguf.__file__).resolve().is_relative_to(Path(root, "gguf-py").resolve()):
    sys.exit(f"llavakit: imported gguf from {gguf.__file__}, not the gguf-py vendored next to the converter")
if fallback:
    import conversion.base as base
    detect = base.TextModel.get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer):
        try:
            return detect(self, tokenizer)
        except NotImplementedError:
            base.logger.warning("llavakit: pre-tokenizer not recognised; using %r as asked", fallback)
            return fallback
    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


def default_cache_dir() -> Path:
    """``$LLAVAKIT_CACHE/llama.cpp`` (default ``~/.cache/llavakit/llama.cpp``).

    Same root as :func:`llavakit.checkpoints.demo.cache_dir`, spelled out here so this
    module imports neither torch nor transformers.
    """
    root = Path(os.environ.get("LLAVAKIT_CACHE", Path.home() / ".cache" / "llavakit")).expanduser()
    return root / "llama.cpp"


# --------------------------------------------------------------------------- converter


def installed_version() -> str:
    """The installed llama-cpp-python version, or a LlavakitError saying how to install it."""
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise LlavakitError(f"{DIST} is not installed; install the bench peer: {INSTALL_HINT}") from None


def _is_converter_tree(root: Path) -> bool:
    return (root / CONVERTER).is_file() and (root / "conversion" / "__init__.py").is_file() and (
        root / "gguf-py" / "gguf" / "__init__.py"
    ).is_file()


def _find_sdist(cache_dir: Path, version: str) -> Path | None:
    for name in (f"llama_cpp_python-{version}.tar.gz", f"llama-cpp-python-{version}.tar.gz"):
        if (cache_dir / name).is_file():
            return cache_dir / name
    return None


def _pip_error(stderr: str) -> str:
    """pip's ERROR lines (or its last line), each cut short: pip can print every version it knows."""
    all_lines = stderr.strip().splitlines()
    lines = [line for line in all_lines if line.startswith("ERROR")] or all_lines[-1:]
    return " | ".join(line[:300] for line in lines) or "no output"


def _download_sdist(cache_dir: Path, version: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet",
           "--dest", str(cache_dir), f"{DIST}=={version}"]  # fmt: skip
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LlavakitError(f"could not run {' '.join(cmd)}: {exc}") from None
    sdist = _find_sdist(cache_dir, version)
    if proc.returncode != 0 or sdist is None:
        raise LlavakitError(
            f"llama.cpp's {CONVERTER} comes from the {DIST}=={version} sdist, and `{' '.join(cmd)}` failed "
            f"(exit {proc.returncode}): {_pip_error(proc.stderr)}\n"
            f"Put the sdist in {cache_dir} by hand, or point ${SOURCE_ENV} at a llama.cpp checkout."
        )
    return sdist


def _wanted(rel: PurePosixPath) -> bool:
    text = rel.as_posix()
    return text in _WANTED_FILES or any(text.startswith(prefix) for prefix in _WANTED_DIRS)


def _extract_converter(sdist: Path, out_dir: Path, version: str) -> None:
    """Copy the converter's files from ``<top>/vendor/llama.cpp/`` in ``sdist`` into ``out_dir``."""
    n = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or not member.isfile():
                continue
            rel = PurePosixPath(*parts[3:])
            if ".." in rel.parts or rel.is_absolute() or not _wanted(rel):
                continue
            target = out_dir.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as sink:
                sink.write(source.read())
            n += 1
    if not _is_converter_tree(out_dir):
        raise LlavakitError(f"{sdist} has no vendor/llama.cpp/{CONVERTER} with conversion/ and gguf-py/ next to it")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    (out_dir / _MARKER).write_text(json.dumps({"dist": DIST, "version": version, "sdist": sdist.name,
                                               "sha256": digest, "files": n}, indent=1))  # fmt: skip


def find_converter(cache_dir: str | Path | None = None, version: str | None = None) -> Path:
    """Path of llama.cpp's ``convert_hf_to_gguf.py``, extracted once into ``cache_dir``.

    Order: ``$LLAVAKIT_LLAMACPP_SRC`` (a llama.cpp source tree), then
    ``cache_dir/llama-cpp-python-<version>/llama.cpp`` from an earlier call, then the
    sdist of the installed llama-cpp-python version (``version`` overrides), taken from
    ``cache_dir`` or ``pip download``-ed into it. The converter and the engine then come
    from the same llama.cpp commit, so what it writes is what the engine reads.
    """
    override = os.environ.get(SOURCE_ENV)
    if override:
        root = Path(override).expanduser()
        if not _is_converter_tree(root):
            raise LlavakitError(f"${SOURCE_ENV}={override} holds no {CONVERTER} with conversion/ and gguf-py/")
        return root / CONVERTER
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    version = version or installed_version()
    root = cache / f"{DIST}-{version}" / "llama.cpp"
    if _is_converter_tree(root) and (root / _MARKER).is_file():
        return root / CONVERTER
    cache.mkdir(parents=True, exist_ok=True)
    sdist = _find_sdist(cache, version) or _download_sdist(cache, version)
    try:
        with atomic_directory(root) as tmp:
            _extract_converter(sdist, tmp, version)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise LlavakitError(f"could not read {sdist} ({exc}); delete it and try again") from None
    return root / CONVERTER


# --------------------------------------------------------------------------- convert, quantize


def gpt2_split_tokenizer(hf_dir: str | Path) -> bool:
    """Whether ``hf_dir/tokenizer.json`` splits text exactly like GPT-2 (a lone regex ``ByteLevel``).

    That is llama.cpp's ``gpt-2`` pre-tokenizer; llavakit's random test tokenizers are of this kind.
    """
    path = Path(hf_dir) / "tokenizer.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = spec.get("pre_tokenizer") or {}
    return (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and bool(pre.get("use_regex", True))
        and not pre.get("add_prefix_space", False)
    )


@contextlib.contextmanager
def _partial(out: Path) -> Iterator[Path]:
    """A temporary file next to ``out`` that replaces it on success and is removed on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def convert_hf_to_gguf(
    hf_lm_dir: str | Path,
    out_gguf: str | Path,
    outtype: str = "f16",
    *,
    pre_tokenizer: str = "auto",
    cache_dir: str | Path | None = None,
    timeout_s: float = 3600,
) -> Path:
    """Convert a Hugging Face causal-LM directory to GGUF with llama.cpp's own converter.

    ``outtype``: ``f16`` (the usual input for quantization) or ``f32`` (also ``bf16``,
    ``q8_0``). ``pre_tokenizer``: ``"auto"`` lets the converter recognise the tokenizer
    and, only if it cannot and the tokenizer is a plain GPT-2 byte-level split, tells
    it ``gpt-2``; ``"strict"`` never overrides; any other llama.cpp pre-tokenizer name is
    used whenever the converter's detection fails. Runs in a subprocess of this Python;
    ``out_gguf`` appears only when the conversion succeeded.
    """
    hf_dir, out = Path(hf_lm_dir), Path(out_gguf)
    if outtype not in OUTTYPES:
        raise LlavakitError(f"outtype {outtype!r} is not supported; choose one of {OUTTYPES}")
    if not (hf_dir / "config.json").is_file():
        raise LlavakitError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    if importlib.util.find_spec("sentencepiece") is None:
        raise LlavakitError(
            f"llama.cpp's {CONVERTER} imports sentencepiece for every Llama-family model: pip install {SENTENCEPIECE}"
        )
    script = find_converter(cache_dir)
    if pre_tokenizer == "auto":
        fallback = "gpt-2" if gpt2_split_tokenizer(hf_dir) else ""
    else:
        fallback = "" if pre_tokenizer == "strict" else pre_tokenizer

    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    with _partial(out) as tmp:
        cmd = [sys.executable, "-c", _LAUNCHER, str(script), fallback, str(hf_dir),
               "--outfile", str(tmp), "--outtype", outtype]  # fmt: skip
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise LlavakitError(f"{CONVERTER} on {hf_dir} took longer than {timeout_s:.0f}s") from None
        if proc.returncode != 0 or not tmp.is_file():
            log = (proc.stdout + proc.stderr).strip()
            hint = ""
            if "pre-tokenizer was not recognized" in log:
                hint = (
                    "\nllama.cpp does not know this tokenizer's pre-tokenizer; pass pre_tokenizer=<llama.cpp name> "
                    "(e.g. 'gpt-2', 'llama-bpe', 'smollm') if you know which split it uses."
                )
            raise LlavakitError(f"{CONVERTER} failed on {hf_dir} (exit {proc.returncode}):\n{log[-3000:]}{hint}")
    return out


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise LlavakitError(f"cannot import llama_cpp ({exc}); install the bench peer: {INSTALL_HINT}") from None
    return llama_cpp


@contextlib.contextmanager
def _native_stderr_to(log: Path | None) -> Iterator[None]:
    """Send file descriptor 2 (where llama.cpp's C code logs) to ``log`` for a while; None: leave it.

    ``llama_model_quantize`` prints one line per tensor straight to stderr, past
    llama-cpp-python's Python log callback, so only a descriptor swap quiets it.
    """
    if log is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def quantize_gguf(
    src_gguf: str | Path,
    out_gguf: str | Path,
    qtype: str = "Q4_K_M",
    *,
    n_threads: int | None = None,
    verbose: bool = False,
) -> Path:
    """Quantize an f16/f32 GGUF with llama.cpp's ``llama_model_quantize`` (what ``llama-quantize`` runs).

    ``qtype`` is a llama.cpp file type name: ``Q4_K_M``, ``Q4_0``, ``Q8_0``, ``Q5_K_M``, ...
    llama.cpp's own mixture applies (Q4_K_M keeps some tensors at Q6_K; tensors whose rows
    do not fit the block size fall back to another type), exactly as ``llama-quantize`` does.
    """
    src, out = Path(src_gguf), Path(out_gguf)
    if not src.is_file():
        raise LlavakitError(f"{src} does not exist")
    llama_cpp = _import_llama_cpp()
    name = qtype.upper()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}", None)
    if not isinstance(ftype, int):
        prefix = "LLAMA_FTYPE_MOSTLY_"
        known = sorted(k[len(prefix):] for k in dir(llama_cpp) if k.startswith(prefix))
        raise LlavakitError(f"unknown llama.cpp quantization type {qtype!r}; choose one of {known}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads or 0  # 0: every hardware thread
    with _partial(out) as tmp:
        log = None if verbose else tmp.with_name(tmp.name + ".log")
        try:
            with _native_stderr_to(log):
                rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            text = "" if log is None else log.read_text(errors="replace")
        finally:
            if log is not None:
                log.unlink(missing_ok=True)
        if rc != 0 or not tmp.is_file():
            tail = "\n".join(text.strip().splitlines()[-15:])
            raise LlavakitError(f"llama_model_quantize({src} -> {name}) failed (returned {rc}):\n{tail}")
    return out


# --------------------------------------------------------------------------- run


def _proc_status_kb(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in kB from /proc (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def _load(gguf_path: Path, n_ctx: int, n_threads: int, n_batch: int, flash_attn: bool):
    llama_cpp = _import_llama_cpp()
    if not gguf_path.is_file():
        raise LlavakitError(f"{gguf_path} does not exist")
    try:
        return load_llama(  # without llama.cpp's crashing AMX path on AMX builds (runtime/llamacpp_amx.py)
            llama_cpp,
            model_path=str(gguf_path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            flash_attn=flash_attn,
            verbose=False,
        )
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        raise LlavakitError(f"llama.cpp could not load {gguf_path}: {exc}") from None


def gguf_metadata(gguf_path: str | Path) -> dict[str, str]:
    """A GGUF's metadata as llama.cpp reads it (values as strings; long arrays such as the vocabulary left out).

    Loads the vocabulary only, so it takes a fraction of a second where ``gguf.GGUFReader``
    spends seconds decoding a 50k-token vocabulary in Python.
    """
    path = Path(gguf_path)
    if not path.is_file():
        raise LlavakitError(f"{path} does not exist")
    llama_cpp = _import_llama_cpp()
    try:
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except ValueError as exc:
        raise LlavakitError(f"llama.cpp could not read {path}: {exc}") from None
    try:
        return dict(llm.metadata)
    finally:
        llm.close()


def _check_ids(llm, prompt_ids: Sequence[int]) -> list[int]:
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise LlavakitError("prompt_ids is empty; llama.cpp needs at least one prompt token")
    n_vocab = llm.n_vocab()
    bad = [t for t in ids if not 0 <= t < n_vocab]
    if bad:
        raise LlavakitError(f"prompt ids {bad[:5]} are outside this model's vocabulary (0..{n_vocab - 1})")
    return ids


class _Greedy:
    """llama.cpp's native greedy sampler on the last evaluated position."""

    def __init__(self, llama_cpp, llm) -> None:
        self._lib, self._llm = llama_cpp, llm
        self._sampler = llama_cpp.llama_sampler_init_greedy()

    def __call__(self) -> int:
        return int(self._lib.llama_sampler_sample(self._sampler, self._llm.ctx, -1))

    def close(self) -> None:
        if self._sampler is not None:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None


def _run_once(llm, greedy: _Greedy, ids: list[int], n_decode: int) -> tuple[float, float, list[int]]:
    """One prefill + ``n_decode`` decode steps from an empty cache; (prefill_s, decode_s, tokens)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - start
    token = greedy()
    out = [token]
    start = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([token])
        token = greedy()
        out.append(token)
    decode_s = time.perf_counter() - start
    return prefill_s, decode_s, out


def greedy_ids_llamacpp(
    gguf_path: str | Path,
    prompt_ids: Sequence[int],
    n: int,
    *,
    n_threads: int | None = None,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """The ``n`` greedy next tokens llama.cpp picks after ``prompt_ids`` (fewer if a stop id comes).

    For top-1 agreement checks against another engine. A stop id is included when produced.
    """
    if n < 1:
        raise LlavakitError(f"n must be at least 1, got {n}")
    llama_cpp = _import_llama_cpp()
    n_threads = n_threads or os.cpu_count() or 1
    llm = _load(Path(gguf_path), len(prompt_ids) + n + 1, n_threads, 512, False)
    greedy = _Greedy(llama_cpp, llm)
    try:
        ids = _check_ids(llm, prompt_ids)
        llm.eval(ids)
        out: list[int] = []
        stops = set(stop_ids)
        while True:
            token = greedy()
            out.append(token)
            if len(out) >= n or token in stops:
                return out
            llm.eval([token])
    finally:
        greedy.close()
        llm.close()


def bench_llamacpp(
    gguf_path: str | Path,
    prompt_ids: Sequence[int],
    n_decode: int,
    n_threads: int | None = None,
    *,
    repeats: int = 1,
    warmup: bool = True,
    n_batch: int = 512,
    flash_attn: bool = False,
    isolated: bool = False,
) -> dict[str, Any]:
    """Time llama.cpp on ``gguf_path``: prefill of ``prompt_ids``, then ``n_decode`` greedy decode steps.

    The prompt goes in as ids (``Llama.eval``), never as text. ``prefill_s`` is the
    evaluation of the whole prompt; ``decode_tps`` is ``n_decode`` divided by the time of
    the ``n_decode`` single-token evaluations + native greedy sampling that follow (the
    first generated token comes from the prefill). With ``repeats`` > 1 the medians are
    reported and every run is listed. ``warmup`` runs prefill and a few decode steps once
    first, so page faults on the mmap-ed weights and thread start-up are not timed.

    Memory: ``peak_rss_mb`` is this process's high-water mark (VmHWM, Linux), which also
    counts whatever else the process loaded (torch, ...). ``isolated=True`` runs the whole
    measurement in a fresh Python process so the peak is llama.cpp's own (+ ~40 MB for
    Python and numpy). ``n_threads`` (None: every CPU) is used for prefill and decode.
    """
    if isolated:
        return _bench_in_subprocess(
            dict(gguf_path=str(gguf_path), prompt_ids=[int(t) for t in prompt_ids], n_decode=n_decode,
                 n_threads=n_threads, repeats=repeats, warmup=warmup, n_batch=n_batch, flash_attn=flash_attn)
        )  # fmt: skip
    if n_decode < 1 or repeats < 1:
        raise LlavakitError(f"n_decode and repeats must be at least 1, got {n_decode} and {repeats}")
    llama_cpp = _import_llama_cpp()
    path = Path(gguf_path)
    n_threads = n_threads or os.cpu_count() or 1
    rss_before = _proc_status_kb("VmRSS")
    start = time.perf_counter()
    llm = _load(path, len(prompt_ids) + n_decode + 2, n_threads, n_batch, flash_attn)
    load_s = time.perf_counter() - start
    rss_loaded = _proc_status_kb("VmRSS")
    greedy = _Greedy(llama_cpp, llm)
    try:
        ids = _check_ids(llm, prompt_ids)
        if warmup:
            _run_once(llm, greedy, ids, min(n_decode, 4))
        runs = [_run_once(llm, greedy, ids, n_decode) for _ in range(repeats)]
        metadata = dict(llm.metadata)
    finally:
        greedy.close()
        llm.close()
    prefill = [r[0] for r in runs]
    decode = [r[1] for r in runs]
    prefill_s, decode_s = statistics.median(prefill), statistics.median(decode)
    rss_after = _proc_status_kb("VmRSS")
    return {
        "engine": "llama.cpp",
        "llama_cpp_python": importlib.metadata.version(DIST),
        "gguf": str(path),
        "gguf_bytes": path.stat().st_size,
        "file_type": metadata.get("general.file_type"),
        "n_threads": n_threads,
        "flash_attn": flash_attn,
        "n_prompt": len(ids),
        "n_decode": n_decode,
        "load_s": load_s,
        "prefill_s": prefill_s,
        "prefill_tps": len(ids) / prefill_s,
        "decode_s": decode_s,
        "decode_tps": n_decode / decode_s,
        "decode_ms_per_token": 1000 * decode_s / n_decode,
        "prefill_runs_s": prefill,
        "decode_runs_s": decode,
        "generated_ids": runs[-1][2],
        "rss_before_load_mb": _mb(rss_before),
        "rss_after_load_mb": _mb(rss_loaded),
        "rss_after_run_mb": _mb(rss_after),
        "peak_rss_mb": _mb(_proc_status_kb("VmHWM")),
        "isolated": False,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }


_MARK = "LLAVAKIT-BENCH-RESULT "
_CHILD = r"""
import json, sys
from llavakit.eval.llamacpp_peer import bench_llamacpp, _MARK
result = bench_llamacpp(**json.loads(sys.stdin.read()))
result["isolated"] = True
print(_MARK + json.dumps(result), flush=True)
"""


def _bench_in_subprocess(kwargs: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", _CHILD]
    proc = subprocess.run(cmd, check=False, input=json.dumps(kwargs), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    error = (proc.stderr or proc.stdout).strip().splitlines()
    raise LlavakitError(f"the isolated llama.cpp benchmark failed (exit {proc.returncode}): {' | '.join(error[-3:])}")
