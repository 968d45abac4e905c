"""Loading a GGUF with llama.cpp without its AMX path, which crashes on AMX CPUs.

Why this exists: llama-cpp-python 0.3.36 built with ``GGML_NATIVE=ON`` on a CPU with AMX
(Intel Sapphire Rapids and later) moves quantized weights into an "AMX" buffer at load time and
then segfaults in ``ggml_backend_amx_mul_mat`` on the first ``llama_decode`` — a known, unfixed
llama.cpp bug (ggml-org/llama.cpp#20824). Seen here on 2026-12-04 with the bench-1b Q4_K_M GGUF,
a 4-token prompt, through both ``llama_cpp.Llama.eval`` and our backend. A segfault kills the
process (a server with it), so there is nothing to catch afterwards: the crash has to be avoided
before loading.

How: when the build reports ``AMX_INT8 = 1`` (a compile-time flag of the build, not a CPU probe),
the model is loaded with ``use_extra_bufts = False`` — llama.cpp's switch for the AMX and repacked
weight buffers — and a warning says so once, with the rebuild that keeps the fast repacked kernels
and drops only AMX (:data:`NO_AMX_BUILD`). ``LLAVAKIT_LLAMACPP_AMX=1`` loads as llama.cpp would
(for a llama.cpp where the bug is fixed). llama-cpp-python's ``Llama`` has no argument for the
switch, so the default model parameters are patched for the duration of one load.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

#: A native build without the AMX kernels (GCC / Clang flags); AVX-512, VNNI and repacking stay.
NO_AMX_BUILD = ('CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8" '
                'pip install --force-reinstall --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36')
_warned = False


def amx_build(llama_cpp: Any) -> bool:
    """Whether this llama.cpp was compiled with its AMX int8 kernels (the crashing path)."""
    info = llama_cpp.llama_print_system_info()
    return b"AMX_INT8 = 1" in (info if isinstance(info, bytes) else str(info).encode())


def load_llama(llama_cpp: Any, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(**kwargs)``, without AMX/extra weight buffers on an AMX build (module docstring)."""
    global _warned
    if os.environ.get("LLAVAKIT_LLAMACPP_AMX", "").strip() == "1" or not amx_build(llama_cpp):
        return llama_cpp.Llama(**kwargs)
    if not _warned:
        warnings.warn("this llama.cpp build has AMX kernels, which crash on the first decode "
                      "(ggml-org/llama.cpp#20824): loading without them and without repacked weights, which is "
                      f"slower. For full speed rebuild without AMX: {NO_AMX_BUILD}", RuntimeWarning, stacklevel=2)
        _warned = True
    module = llama_cpp.llama_cpp  # where Llama.__init__ looks the defaults up
    original = module.llama_model_default_params

    def defaults_without_extra_buffers():
        params = original()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = defaults_without_extra_buffers
    try:
        return llama_cpp.Llama(**kwargs)
    finally:
        module.llama_model_default_params = original
