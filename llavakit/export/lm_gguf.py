"""The language model as a llama.cpp GGUF beside the OpenVINO IR (``llavakit export --lm-gguf q4_k_m``).

Why: on CPUs where llama.cpp's quantized kernels decode faster than OpenVINO's
INT4 (benchmarks/README.md: 2x on a 2-core AVX2 EPYC), the llama.cpp backend
(:mod:`llavakit.runtime.llamacpp_backend`) runs the LM from this file while the
vision encoder stays on OpenVINO. The file is named
``openvino_language_model.<TYPE>.gguf`` and is *extra*: the directory still holds
every IR, so it keeps loading in ``openvino_genai.VLMPipeline`` and in the
OpenVINO backend.

How: the LLaVA's language model (decoder + LM head) is written as a plain
text-only Hugging Face causal-LM directory with the LLaVA's tokenizer, converted
with llama.cpp's own ``convert_hf_to_gguf.py`` (the one in the llama-cpp-python
sdist, :mod:`llavakit.eval.llamacpp_peer`), then quantized with llama.cpp's own
quantizer. The GGUF's tokenizer is never used at run time (the backend feeds
token ids from the OpenVINO tokenizer), but the converter insists on one.

Import-light: the runtime imports the name helpers without torch.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from llavakit.errors import LlavakitError

GGUF_PREFIX = "openvino_language_model."
#: What ``--lm-gguf`` accepts: converter output types and llama.cpp quantizations of an f16 GGUF.
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_k_m", "q4_0", "q5_k_m", "q6_k")
_CONVERTER_TYPES = ("f32", "f16", "q8_0")


def gguf_name(qtype: str) -> str:
    """File name of the LM GGUF of type ``qtype`` in an export directory."""
    return f"{GGUF_PREFIX}{qtype.upper()}.gguf"


def find_ggufs(model_dir: str | Path) -> list[Path]:
    """The LM GGUFs an export directory holds, best decode candidate first (Q4_K_M, Q4_0, ..., F32)."""
    order = [t.upper() for t in ("q4_k_m", "q4_0", "q5_k_m", "q6_k", "q8_0", "f16", "f32")]
    found = sorted(Path(model_dir).glob(f"{GGUF_PREFIX}*.gguf"))
    rank = lambda p: order.index(p.name[len(GGUF_PREFIX):-5]) if p.name[len(GGUF_PREFIX):-5] in order else len(order)
    return sorted(found, key=rank)


def check_gguf_type(qtype: str) -> str:
    """Normalise ``qtype`` (case-insensitive) or refuse it, listing what is allowed."""
    name = qtype.lower()
    if not re.fullmatch(r"[a-z0-9_]+", name) or name not in GGUF_TYPES:
        raise LlavakitError(f"--lm-gguf {qtype!r} is not supported; choose one of {list(GGUF_TYPES)}")
    return name


def write_text_lm(hf_model, tokenizer, out_dir: Path) -> Path:
    """Save the LLaVA's language model as a text-only HF causal LM (what llama.cpp's converter reads)."""
    import torch
    from transformers import AutoModelForCausalLM

    text_config = hf_model.config.text_config
    with torch.device("meta"):  # no second copy of the weights: the LLaVA's tensors are assigned below
        lm = AutoModelForCausalLM.from_config(text_config)
    state = {f"model.{k}": v for k, v in hf_model.model.language_model.state_dict().items()}
    state.update({f"lm_head.{k}": v for k, v in hf_model.lm_head.state_dict().items()})
    missing, unexpected = lm.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise LlavakitError(f"cannot map the LLaVA language model to {type(lm).__name__}: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    lm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def export_lm_gguf(hf_model, tokenizer, out_dir: Path, qtype: str) -> dict:
    """Write ``out_dir/openvino_language_model.<QTYPE>.gguf``; returns a report entry (file, bytes, seconds)."""
    from llavakit.eval import llamacpp_peer as peer

    qtype = check_gguf_type(qtype)
    start = time.perf_counter()
    target = Path(out_dir) / gguf_name(qtype)
    with tempfile.TemporaryDirectory(prefix="llavakit-lm-gguf-") as work:
        hf_dir = write_text_lm(hf_model, tokenizer, Path(work) / "lm")
        if qtype in _CONVERTER_TYPES:
            peer.convert_hf_to_gguf(hf_dir, target, qtype)
        else:
            f16 = peer.convert_hf_to_gguf(hf_dir, Path(work) / "lm-f16.gguf", "f16")
            peer.quantize_gguf(f16, target, qtype.upper())
    return {"file": target.name, "precision": f"llama.cpp {qtype.upper()}", "bytes": target.stat().st_size,
            "seconds": round(time.perf_counter() - start, 2)}
