"""How ``backend="auto"`` picks the LM backend from a bench measurement (no llama.cpp needed to test the rule)."""

from __future__ import annotations

import pytest

from llavakit.runtime import backend_choice


@pytest.mark.parametrize("openvino, llamacpp, expected", [
    # bench-1b on a 2-core AMX Xeon (2026-12-04): OpenVINO prefills faster, decodes about as fast
    ({"decode_tokens_per_s": 23.87, "ttft_cold_s": 0.484}, {"decode_tokens_per_s": 22.75, "ttft_cold_s": 0.746},
     "openvino"),
    # bench-1b on a 2-core AVX-512 EPYC without AMX (2026-12-05): llama.cpp decodes 1.68x faster, TTFT 1.33x slower
    ({"decode_tokens_per_s": 26.56, "ttft_cold_s": 0.549}, {"decode_tokens_per_s": 44.59, "ttft_cold_s": 0.731},
     "llamacpp"),
    ({"decode_tokens_per_s": 20.0, "ttft_cold_s": 0.5}, {"decode_tokens_per_s": None, "ttft_cold_s": 0.5}, "openvino"),
])
def test_backend_choice_weighs_prefill_and_decode(openvino: dict, llamacpp: dict, expected: str) -> None:
    backend, reason = backend_choice.decide(openvino, llamacpp)
    assert backend == expected, reason
