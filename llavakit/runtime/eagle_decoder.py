"""The speculative loop with an EAGLE feature draft (``runtime/eagle.py`` explains the draft and a round).

Everything but the draft is :class:`~llavakit.runtime.speculative.SpeculativeDecoder`'s: the target's
verify pass, holes, acceptance (greedy and rejection sampling), stop handling and metrics. This class
only records the target's prefill for the draft, proposes from the draft's state, and hands the draft
the target's true features of the accepted tokens after each verify pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llavakit.runtime.eagle import EagleDraft, EagleState
from llavakit.runtime.ov_backend import OpenVINOBackend
from llavakit.runtime.speculative import SpeculativeDecoder, draft_marker
from llavakit.runtime.types import GenerationConfig


class EagleDecoder(SpeculativeDecoder):
    """Speculative decoding whose draft extrapolates the target's last hidden state."""

    features = True
    _state: EagleState | None = None  # per generation, made by _prefill

    def _load_draft(self, draft_dir: Path, device: str | None, properties: dict | None, precise: bool) -> EagleDraft:
        return EagleDraft(draft_dir, draft_marker(draft_dir), device, properties, precise)

    def fork(self, target: OpenVINOBackend) -> EagleDecoder:
        twin = super().fork(target)
        twin._state = None
        return twin

    def _embed(self, tokens: list[int]) -> np.ndarray:
        """The target's text embeddings of ``tokens``: (n, H)."""
        return self.target._text(np.asarray([tokens], dtype=np.int64))[0][0]

    def _prefill(self, prepared: Any) -> np.ndarray:
        request = self.target._lm  # a FeatureRequest (enable_verification with features)
        request.recording = []
        try:
            logits = self.target.prefill(prepared)
            recorded = request.recording
        finally:
            request.recording = None
        self._state = EagleState(self.draft, self._embed)
        self._state.start(recorded)
        return logits

    def _propose(self, text: list[int], k: int, cfg: GenerationConfig, ids: list[int],
                 rng: np.random.Generator, position: int) -> tuple[list[int], list[np.ndarray | None]]:
        rows: list[np.ndarray | None] = []
        proposals = self._state.propose(ids[-1], position, k,
                                        lambda logits, done: self._draw(logits, cfg, ids + done, rng, rows))
        return proposals, rows

    def _verified(self, accepted: list[int], position: int) -> None:
        self._state.accepted(accepted, *self.target._lm.last, position)

