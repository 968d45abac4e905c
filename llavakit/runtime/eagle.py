"""Feature-level speculative drafts (EAGLE-style): the draft reads the target's last hidden state.

Why: budget's target LM is small (SmolLM2-135M, 30 layers), so a useful draft must be far smaller still,
and independent small drafts (2-4 layers, from scratch or cut from budget) agree with budget on only
0.45-0.6 of the tokens of prompts they never saw (``benchmarks/speculative.md``): not enough for 1.5x.
An EAGLE draft (Li et al. 2024) instead extrapolates the TARGET's post-norm last hidden state f, which
already holds what the target knows about the context, the image included; the draft itself is one
decoder layer (about 1/30 of the target's per-token work plus a reduced LM head).

Per position j the draft's input row is ``fc([embed(token_j) ; f_{j-1}])`` and its output is the
predicted feature f^_j, whose head logits guess token_{j+1} (``scripts/gpu/train_eagle.py`` trains it).
The fc runs here in numpy (``x = e @ We + f @ Wf + b``: two (H, H) products per row) so that the draft IR
is a plain stateful LM on ``inputs_embeds`` exported with the same converter as every other LM
(``export/eagle.py``); its extra ``hidden_states`` output is f^.

One round, with ``t`` the last emitted token at position ``p`` (in neither KV state):
1. The draft runs, in ONE call, the rows it still owes (accepted tokens of the last round, with the
   target's true features) and ``(t, f_{p-1})``; its last output f^_p gives d1.
2. Steps 2..k feed ``(d_{i-1}, f^)``: the draft's own feature, one row each.
3. The target verifies ``[t, d1..dk]`` (``speculative.TargetKV``) and returns the hidden state of each row
   as well as its logits (the LM is recompiled with a ``hidden_states`` output next to ``num_logits``).
4. The draft's state is cut back to its rows with TRUE features (up to ``t``); the accepted drafts and
   their true features become the rows it owes for the next round.

The prompt: the target's prefill is recorded (inputs_embeds, hidden states, positions of each chunk it
ran), and the draft starts each generation from those rows only. With the engine's KV-prefix reuse the
draft therefore sees the new part of the prompt (a new turn, the image and question of a new request),
not earlier turns: the features carry those. Its position ids are the target's (valid positions), so
RoPE distances agree with the target's.

Greedy output equals plain greedy output whatever the draft says (the target decides every token); the
draft's q for rejection sampling comes from its reduced head as for ``speculative.DraftModel``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from llavakit.errors import ModelLoadError
from llavakit.export import layout
from llavakit.runtime.ov_backend import PRECISE, head_matmul, keep_kv_positions, lm_cpu_defaults, pick_ov_device
from llavakit.runtime.speculative import MultiLogitsRequest

EAGLE_FC = "eagle_fc.npz"  # fc of the draft: we (H, H), wf (H, H), bias (H,), x = e @ we + f @ wf + bias
HIDDEN = "hidden_states"


def add_hidden_output(model: ov.Model) -> ov.Model:
    """Add the LM head's input (the post-norm last hidden state, (B, T, H)) as an output ``hidden_states``.

    Call before ``keep_last_n_logits``/``keep_last_logits``: the output stays on the unsliced tensor, so a
    prefill returns every row's feature while the head still runs on the last rows only.
    """
    if any(HIDDEN in out.get_names() for out in model.outputs):
        return model
    port = head_matmul(model).input_value(0)  # (B, T, H)
    port.get_tensor().add_names({HIDDEN})
    model.add_outputs([port])
    return model


class EagleDraft:
    """The exported feature-level draft: a stateful one-layer LM + the fc applied here."""

    def __init__(self, draft_dir: Path, marker: dict, device: str | None = None, properties: dict | None = None,
                 precise: bool = False) -> None:
        self.dir = Path(draft_dir)
        fc_path = self.dir / EAGLE_FC
        if not fc_path.is_file():
            raise ModelLoadError(f"{self.dir} is marked as an EAGLE draft but has no {EAGLE_FC}; re-export it "
                                 "with `llavakit export-draft EAGLE_DIR --target MODEL --out DIR`")
        core = ov.Core()
        device = pick_ov_device(core, device)
        props = {**(PRECISE if precise else {}), **(properties or {})}
        model = add_hidden_output(core.read_model(self.dir / layout.LANGUAGE_MODEL))
        self._lm = core.compile_model(model, device, {**lm_cpu_defaults(core, device), **props}).create_infer_request()
        with np.load(fc_path) as fc:
            self.we, self.wf, self.bias = (fc[k].astype(np.float32) for k in ("we", "wf", "bias"))  # (H,H) (H,H) (H,)
        config = json.loads((self.dir / layout.CONFIG).read_text())
        head = marker.get("head_ids")
        self.head_ids = None if head is None else np.asarray(head, dtype=np.int64)  # (N,) id of each logit
        self.max_context = int(config.get("max_position_embeddings", 4096))
        self.length = 0  # rows in the draft's KV state

    def fork(self) -> EagleDraft:
        """A twin sharing the compiled draft, with its own KV state."""
        twin = copy.copy(self)
        twin._lm = self._lm.get_compiled_model().create_infer_request()
        twin.length = 0
        return twin

    def reset(self) -> None:
        self._lm.reset_state()
        self.length = 0

    def cut(self, keep: int) -> None:
        """Keep the first ``keep`` rows of the state (one small copy: one layer)."""
        if keep < self.length:
            if keep == 0:
                self._lm.reset_state()
            else:
                keep_kv_positions(self._lm, slice(0, keep))
            self.length = keep

    def run(self, embeds: np.ndarray, prev: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append rows; return the last row's logits (N,) and predicted feature (H,).

        ``embeds``, ``prev``: (T, H) token embeddings and the feature before each row; ``positions``: (T,).
        """
        rows = embeds.astype(np.float32) @ self.we + prev.astype(np.float32) @ self.wf + self.bias  # (T, H)
        n = rows.shape[0]
        self._lm.infer({
            "inputs_embeds": rows[None],  # (1, T, H)
            "attention_mask": np.ones((1, self.length + n), dtype=np.int64),
            "position_ids": np.asarray(positions, dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        })
        self.length += n
        logits = self._lm.get_tensor("logits").data[0, -1].copy()  # (N,)
        feature = self._lm.get_tensor(HIDDEN).data[0, -1].copy()  # (H,)
        return logits, feature


class FeatureRequest(MultiLogitsRequest):
    """The target LM's verifying request that also keeps what its last infer ran: ``last`` = (inputs_embeds
    (T, H), hidden states (T, H)); while ``recording`` is a list, each infer also appends (inputs_embeds,
    hidden states, positions (T,)) to it (the prefill's chunks, for the draft)."""

    def __init__(self, request: ov.InferRequest) -> None:
        super().__init__(request)
        self.recording: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def infer(self, inputs: dict) -> Any:
        result = super().infer(inputs)
        embeds = np.array(inputs["inputs_embeds"][0], dtype=np.float32)  # (T, H): a copy, the caller reuses its buffer
        self.last = (embeds, self.request.get_tensor(HIDDEN).data[0].copy())  # (T, H) each
        if self.recording is not None:
            self.recording.append((*self.last, np.array(inputs["position_ids"][0], dtype=np.int64)))
        return result

    def fork(self) -> FeatureRequest:
        return FeatureRequest(self.request.get_compiled_model().create_infer_request())


class EagleState:
    """What the draft owes and knows during one generation (see the module docstring's round)."""

    def __init__(self, draft: EagleDraft, embed) -> None:
        self.draft = draft
        self.embed = embed  # token ids (n,) -> embeddings (n, H): the target's text embeddings
        h = draft.we.shape[0]
        self.owed_embeds = np.zeros((0, h), dtype=np.float32)  # (m, H) rows not yet in the draft's state
        self.owed_prev = np.zeros((0, h), dtype=np.float32)  # (m, H) the true feature before each
        self.owed_pos = np.zeros(0, dtype=np.int64)  # (m,)
        self.feature = np.zeros(h, dtype=np.float32)  # (H,) true feature of the position before ``t``
        self.committed = 0  # draft rows built on true features

    def start(self, recorded: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """A new generation: the draft forgets everything and owes the prompt rows the target just ran."""
        self.draft.reset()
        self.committed = 0
        embeds = np.concatenate([r[0] for r in recorded])  # (T, H)
        hidden = np.concatenate([r[1] for r in recorded])  # (T, H)
        self.owed_embeds = embeds
        self.owed_prev = np.concatenate([np.zeros_like(hidden[:1]), hidden[:-1]])  # f_{j-1}; unknown before the chunk
        self.owed_pos = np.concatenate([r[2] for r in recorded])
        self.feature = hidden[-1]

    def propose(self, last: int, position: int, k: int, pick) -> list[int]:
        """k drafts after ``last`` (at ``position``); ``pick(logits (N,), drafts so far) -> token`` chooses each.

        One draft call runs the owed rows and ``last`` together (their true features); steps 2..k feed the
        draft's own predicted feature, one row each."""
        draft = self.draft
        embeds = np.concatenate([self.owed_embeds, self.embed([last])])  # (m + 1, H)
        prev = np.concatenate([self.owed_prev, self.feature[None]])
        positions = np.concatenate([self.owed_pos, [position]])
        logits, feature = draft.run(embeds, prev, positions)
        self.committed = draft.length
        proposals: list[int] = []
        for i in range(k):
            token = pick(logits, proposals)
            proposals.append(token)
            if i + 1 < k:
                logits, feature = draft.run(self.embed([token]), feature[None], np.array([position + 1 + i]))
        return proposals

    def accepted(self, tokens: list[int], embeds: np.ndarray, hidden: np.ndarray, position: int) -> None:
        """After verification: ``tokens`` = the accepted drafts d1..d_ok; ``embeds`` and ``hidden`` (k+1, H) =
        the verify pass's input embeddings and the target's features of [t, d1..dk]; ``position`` = t's. The
        draft drops its rows built on guessed features (after ``t``'s) and owes the accepted drafts with their
        true features; hidden[ok] chose the next token."""
        self.draft.cut(self.committed)
        n = len(tokens)
        self.owed_embeds = embeds[1:1 + n]  # (n, H): d1..d_ok, as the verify pass embedded them
        self.owed_prev = hidden[:n]  # feature of t, d1, ..., d_{n-1}
        self.owed_pos = np.arange(position + 1, position + 1 + n, dtype=np.int64)
        self.feature = hidden[n]  # the feature that chose the next t
