"""Speculative decoding on the OpenVINO engine: a small draft LM proposes, the VLM verifies.

OpenVINO GenAI refuses a draft model for VLM pipelines; this module does it for
llavakit's engine, torch-free.

One round, with ``t`` the last emitted token (in neither KV state yet):
1. The draft (text-only; it never sees image positions) catches up with the
   text so far and proposes ``d1..dk``, one cheap step each, drawing from its
   own distribution ``q`` (argmax when greedy).
2. The target runs ``[t, d1..dk]`` in ONE forward pass and returns the logits of
   all k+1 positions ``P0..Pk`` (the target's LM is recompiled with a
   ``num_logits`` input; every other call keeps 1, so prefill still computes the
   LM head for the last position only, see ``ov_backend.keep_last_logits``).
3. Greedy: ``d_i`` is accepted while it equals ``argmax P_{i-1}``; sampling:
   with probability ``min(1, p(d_i)/q(d_i))`` (Leviathan et al. / Chen et al.),
   else the token is resampled from ``norm(max(0, p - q))``. If all k are
   accepted, a bonus token comes from ``Pk``. The output distribution is the
   target's; greedy output equals non-speculative greedy output.
4. Rejected positions stay in the target's KV state as *holes* (see below); the
   draft's state is resynced lazily (trimmed to the common prefix: it is tiny).

Holes instead of a trim per round (:class:`TargetKV`). An OpenVINO stateful LM
can only append to its state; cutting rejected positions off means reading
every state tensor, slicing and writing it back (``_trim_state``, and GenAI does
the same copy). On the budget model (SmolLM2-135M target, 2-core CPU) that copy
cost 10–15 ms at 300–1000 positions against a 22 ms decode step and a 31–39 ms
verify pass: half a decode step, paid on most rounds. The exported LM honours
zeros in ``attention_mask`` for PAST positions, so rejected positions are left
in place, masked out (mask 0), and new tokens get ``position_ids`` = the number
of VALID positions before them, so RoPE positions stay contiguous over the
tokens that count. The logits equal those of a trimmed state (tested).
Measured (budget INT8 target, 96 tokens, 6 prompts, interleaved with the old
trim-per-round code in one process, 2026-11-22): random draft (every round
rejects) 1.26x (k=2) and 1.15x (k=4) the old decode tok/s; draft = the target's
own LM (nothing rejected, nothing saved) 0.94-0.95x, within this machine's noise.
- Holes are keys ``HOLE`` in the backend's ``_state_keys`` (one key per
  physical position, as before). ``prefill``'s common-prefix match stops at a
  hole, so even a state left holey is reused correctly (only up to the hole).
- The state is compacted ONCE per generation, when it ends (normal end, eos,
  stop string, an error or the consumer closing the generator): one gather of
  the valid positions, and ``_state_keys`` becomes the valid keys, so the
  engine's KV-prefix reuse in the next turn or request works unchanged.
- Holes take KV room and attention work: the state is also compacted mid-run
  when holes exceed ``TargetKV.max_holes`` (64: a copy every ~20 rounds at
  worst) or when the next verify pass would push the PHYSICAL length past the
  model's context. Position ids never exceed the valid length, which the
  token budget bounds as before.
- "Still ours" is the identity of the ``_state_keys`` list: ``prefill`` and
  ``reset`` replace it, so a generation abandoned without being closed never
  compacts (or corrupts) a later generation's state.

Both states are tracked as lists of position keys, like the engine's prefix
reuse: the target's through the backend's own ``_state_keys``, the draft's as
the text token ids it holds. Multi-turn chat therefore reuses both caches.

Design decisions:
- Composition, not a subclass: the target may be the LLaVA or the LLaVA-NeXT
  engine; we only swap its LM infer request for one with ``num_logits``. That
  costs one extra compile of the target's LM when a draft is loaded.
- The draft's vocabulary may be shorter than the target's (the VLM adds
  ``<image>``); its ids must mean the same tokens (checked from tokenizer.json),
  else a clear LlavakitError. Missing ids get q = 0, which rejection sampling
  handles exactly. A draft exported with a reduced head (``export/draft.py``,
  ``head_size``) returns logits for its ``head_ids`` only; they are scattered
  back onto the target's ids, the others get q = 0 the same way.
- The draft's processed distribution ``q`` uses the same repetition penalty,
  temperature, top-k and top-p as the target's ``p``.
- Adaptive k (optional): grow k by one after a fully accepted round, shrink by
  one after a round that accepted less than half, within [1, 2·k].
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from llavakit.errors import ContextOverflowError, LlavakitError, ModelLoadError
from llavakit.export import layout
from llavakit.runtime.generate import Generation, peak_rss_mb
from llavakit.runtime.ov_backend import (
    PRECISE,
    OpenVINOBackend,
    OwnRequest,
    head_matmul,
    keep_kv_positions,
    lm_cpu_defaults,
    pick_ov_device,
)
from llavakit.runtime.sampling import apply_repetition_penalty, filter_top_k_top_p
from llavakit.runtime.text_stream import TextStream
from llavakit.runtime.types import GenerationConfig, GenerationResult, Metrics

DRAFT_MARKER = "llavakit_draft.json"  # written by export/draft.py


def draft_marker(draft_dir: str | Path) -> dict:
    """The draft's ``llavakit_draft.json`` (a clear error when it is not a draft export)."""
    path = Path(draft_dir) / DRAFT_MARKER
    if not path.is_file():
        raise ModelLoadError(f"{draft_dir} is not a llavakit draft export (missing {DRAFT_MARKER}); "
                             "make one with `llavakit export-draft LM_DIR --out DIR`")
    return json.loads(path.read_text())


@dataclass
class SpeculativeStats:
    """What the draft did in one generation: acceptance rate = accepted / drafted."""

    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    k_final: int = 0
    compactions: int = 0  # state copies that dropped holes (see TargetKV): 1 per generation with rejections

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": round(self.acceptance_rate, 4)}


# What the target compiles with when it verifies drafts, so that a k+1-token verify pass computes the same
# numbers as one-token decoding (greedy output must equal plain greedy at the same settings):
# - an f32 KV cache: with the CPU plugin's default compressed (u8) cache, a verify pass attends to its own new
#   tokens before they are quantized, while one-token decoding reads them back quantized; on budget INT8 only
#   6 of 16 greedy answers then equalled plain greedy, with f32 12 of 12 (2026-11-22);
# - no dynamic INT8 quantization of activations: the plugin picks different int8 kernels for 1 row and k+1 rows,
#   and near-tied logits flip. Budget INT8 + a 3x384 draft at k = 2 on a 2-core AVX-512 EPYC (2026-12-05):
#   5/16 answers identical with it, 16/16 without; plain decode costs 68.2 vs 72.6 tok/s (-6%) there, more on
#   AMX Xeons (45 vs 72 tok/s, 2026-12-04). Identity is the feature's promise, so it wins over the 6-37%.
# The user's properties still win (``properties=``), for whom speed matters more than bit-identity.
VERIFY_PROPERTIES = {"KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


# --- the target's multi-position logits ----------------------------------------------------------
def keep_last_n_logits(model: ov.Model) -> ov.Model:
    """Compute the LM head for the last ``num_logits`` positions (a new (1,) i64 input)."""
    from openvino import opset13 as ops

    node = head_matmul(model)
    count = ops.parameter(ov.PartialShape([1]), ov.Type.i64, name="num_logits")
    count.output(0).get_tensor().set_names({"num_logits"})
    model.add_parameters([count])
    hidden = node.input_value(0)  # (B, T, D)
    last = ops.slice(hidden, ops.negative(count), np.array([np.iinfo(np.int64).max]), np.array([1]), np.array([1]))
    node.input(0).replace_source_output(last.output(0))  # (B, n, D)
    model.validate_nodes_and_infer_types()
    return model


class MultiLogitsRequest:
    """The target LM's infer request: fills ``num_logits`` = 1 unless the caller asks for more."""

    def __init__(self, request: ov.InferRequest) -> None:
        self.request = request

    def infer(self, inputs: dict) -> Any:
        return self.request.infer({"num_logits": np.ones(1, dtype=np.int64), **inputs})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.request, name)

    def fork(self) -> MultiLogitsRequest:
        """The same compiled model through a request of its own (its own KV state), for a serving slot."""
        return MultiLogitsRequest(self.request.get_compiled_model().create_infer_request())


def enable_verification(target: OpenVINOBackend, model_dir: Path, properties: dict, features: bool = False) -> None:
    """Swap the target's LM request for one that can return several positions' logits; with ``features``,
    also every row's last hidden state (an EAGLE draft reads them, ``runtime/eagle.py``)."""
    if not isinstance(getattr(target, "_lm", None), ov.InferRequest):
        raise LlavakitError("speculative decoding needs the OpenVINO backend (--backend openvino)")
    core = ov.Core()
    model = core.read_model(model_dir / layout.LANGUAGE_MODEL)
    if features:
        from llavakit.runtime.eagle import FeatureRequest, add_hidden_output

        model = add_hidden_output(model)
    request = core.compile_model(keep_last_n_logits(model), target.device, properties).create_infer_request()
    target._lm = FeatureRequest(request) if features else MultiLogitsRequest(request)


# --- the draft ----------------------------------------------------------------------------------
class DraftModel:
    """A stateful text-only draft LM whose KV state is tracked as the token ids it holds."""

    def __init__(self, draft_dir: str | Path, device: str | None = None, properties: dict | None = None,
                 precise: bool = False) -> None:
        self.dir = Path(draft_dir)
        marker = draft_marker(self.dir)
        core = ov.Core()
        props = {**(PRECISE if precise else {}), **(properties or {})}
        device = pick_ov_device(core, device)
        lm_props = {**lm_cpu_defaults(core, device), **props}  # like the target's LM (ov_backend)
        self._lm = core.compile_model(self.dir / layout.LANGUAGE_MODEL, device, lm_props).create_infer_request()
        self._text = OwnRequest(core.compile_model(self.dir / layout.TEXT_EMBEDDINGS, device, props))  # see own_requests
        config = json.loads((self.dir / layout.CONFIG).read_text())
        self.vocab_size = int(config["vocab_size"])
        head = marker.get("head_ids")
        self.head_ids = None if head is None else np.asarray(head, dtype=np.int64)  # (N,) id of each logit
        self.max_context = int(config.get("max_position_embeddings", 4096))
        self.keys: list[int] = []

    def fork(self) -> DraftModel:
        """A twin sharing the compiled draft (weights once in memory) with its own KV state and keys."""
        twin = copy.copy(self)
        twin._lm = self._lm.get_compiled_model().create_infer_request()
        twin._text = OwnRequest(self._text)
        twin.keys = []
        return twin

    def sync(self, tokens: list[int]) -> np.ndarray:
        """Make the state hold ``tokens`` (keeping the common prefix), return the next-token logits (V_d,)
        (``(N,)`` for the ids ``head_ids`` when the draft has a reduced head)."""
        keep = 0
        limit = len(tokens) - 1  # at least one token is run, to get logits
        for a, b in zip(self.keys, tokens):
            if keep >= limit or a != b:
                break
            keep += 1
        if keep == 0:
            self._lm.reset_state()
        elif keep < len(self.keys):
            keep_kv_positions(self._lm, slice(0, keep))
        new = tokens[keep:]
        embeds = self._text(np.asarray([new], dtype=np.int64))[0]  # (1, T_new, D)
        self._lm.infer({
            "inputs_embeds": embeds,
            "attention_mask": np.ones((1, len(tokens)), dtype=np.int64),
            "position_ids": np.arange(keep, len(tokens), dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        })
        self.keys = list(tokens)
        return self._lm.get_tensor("logits").data[0, -1].copy()  # (V_d,)


def _tokenizer_ids(model_dir: Path) -> dict[int, str]:
    """id → token string from the HF ``tokenizer.json`` (vocab plus added tokens)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} has no tokenizer.json; the draft check compares tokenizers")
    data = json.loads(path.read_text())
    vocab = data.get("model", {}).get("vocab", {})
    ids = {int(i): tok for tok, i in vocab.items()} if isinstance(vocab, dict) else \
        {i: entry[0] for i, entry in enumerate(vocab)}  # unigram: [[token, score], ...]
    ids.update({int(t["id"]): t["content"] for t in data.get("added_tokens", [])})
    return ids


def check_same_tokenizer(target_dir: Path, draft_dir: Path) -> None:
    """Refuse a draft whose ids mean other tokens than the target's (a draft may lack the target's extras)."""
    target, draft = _tokenizer_ids(target_dir), _tokenizer_ids(draft_dir)
    wrong = [i for i, tok in draft.items() if target.get(i) != tok]
    if wrong:
        i = wrong[0]
        raise LlavakitError(
            f"the draft at {draft_dir} has a different tokenizer from the model at {target_dir}: "
            f"{len(wrong)} of its {len(draft)} ids differ (id {i} is {draft[i]!r} in the draft, "
            f"{target.get(i)!r} in the model); a draft must use the main model's tokenizer")


class _Hole:
    """The key of a rejected (masked) position in the target's ``_state_keys``; equal to nothing else."""

    def __repr__(self) -> str:
        return "HOLE"


HOLE = _Hole()


class TargetKV:
    """The target's KV state during one speculative generation: valid positions and masked holes.

    Wraps the list ``target._state_keys`` that ``prefill`` made (one key per physical
    position) and the matching attention mask (1 valid, 0 hole).
    """

    max_holes = 64  # compact mid-run past this many holes (KV room, attention work)

    def __init__(self, target: OpenVINOBackend) -> None:
        self.target = target
        self.keys = target._state_keys  # the list prefill made: its identity means "still ours"
        self.mask = np.ones(len(self.keys), dtype=np.int64)  # (L,) 1 = valid, 0 = hole
        self.holes = 0
        self.compactions = 0

    @property
    def valid(self) -> int:
        return len(self.keys) - self.holes

    def ours(self) -> bool:
        return self.target._state_keys is self.keys

    def verify(self, tokens: list[int]) -> np.ndarray:
        """Append ``tokens`` at the next valid positions in one pass; logits of every one (n, V)."""
        n, target = len(tokens), self.target
        if self.holes > self.max_holes or len(self.keys) + n > target.max_context:
            self.compact()
        start = self.valid
        embeds = target._text(np.asarray([tokens], dtype=np.int64))[0]  # (1, n, D)
        mask = np.concatenate([self.mask, np.ones(n, dtype=np.int64)])  # (L + n,)
        target._lm.infer({
            "inputs_embeds": embeds,
            "attention_mask": mask[None],  # (1, L + n): holes masked out
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None],  # contiguous over valid positions
            "beam_idx": np.zeros(1, dtype=np.int32),
            "num_logits": np.array([n], dtype=np.int64),
        })
        self.keys.extend(tokens)
        self.mask = mask
        return target._lm.get_tensor("logits").data[0].copy()  # (n, V)

    def reject(self, n: int) -> None:
        """Turn the last ``n`` positions into holes (no state copy)."""
        if n <= 0:
            return
        end = len(self.keys)
        self.keys[end - n:] = [HOLE] * n
        self.mask[end - n:] = 0
        self.holes += n

    def compact(self) -> None:
        """Gather the valid positions into a hole-free state (one copy); no-op if none or not ours."""
        if not self.holes or not self.ours():
            return
        keep_kv_positions(self.target._lm, np.flatnonzero(self.mask))  # (L_valid,) positions kept
        self.keys = [key for key in self.keys if key is not HOLE]
        self.target._state_keys = self.keys
        self.mask = np.ones(len(self.keys), dtype=np.int64)
        self.holes = 0
        self.compactions += 1

    def close(self, quiet: bool = False) -> None:
        """Compact at the end of a generation; if that fails, forget the state (the next prefill starts clean).

        ``quiet``: another exception is already on its way out; do not replace it with ours.
        """
        try:
            self.compact()
        except Exception:
            if self.ours():
                self.target.reset()
            if not quiet:
                raise


# --- the decoding loop --------------------------------------------------------------------------
def speculative_decoder(target: OpenVINOBackend, model_dir: Path, draft_dir: str | Path, *args: Any,
                        **kwargs: Any) -> SpeculativeDecoder:
    """The decoder for the draft at ``draft_dir``: an independent draft LM, or an EAGLE feature draft."""
    if draft_marker(draft_dir).get("kind") == "eagle":
        from llavakit.runtime.eagle_decoder import EagleDecoder

        return EagleDecoder(target, model_dir, draft_dir, *args, **kwargs)
    return SpeculativeDecoder(target, model_dir, draft_dir, *args, **kwargs)


class SpeculativeDecoder:
    """Drafts with ``draft``, verifies with ``target`` (an OpenVINO backend made able to verify)."""

    features = False  # whether the draft reads the target's hidden states (EagleDecoder)

    def __init__(self, target: OpenVINOBackend, model_dir: Path, draft_dir: str | Path, num_draft_tokens: int = 4,
                 adaptive: bool = False, device: str | None = None, properties: dict | None = None,
                 precise: bool = False) -> None:
        if num_draft_tokens < 1:
            raise LlavakitError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
        self.draft = self._load_draft(Path(draft_dir), device, properties, precise)
        check_same_tokenizer(Path(model_dir), Path(draft_dir))
        self.target = target
        self.k = num_draft_tokens
        self.adaptive = adaptive
        enable_verification(target, Path(model_dir), {**target.lm_properties, **VERIFY_PROPERTIES,
                                                      **(PRECISE if precise else {}), **(properties or {})},
                            features=self.features)
        logits_shape = target._lm.get_compiled_model().output("logits").get_partial_shape()  # (B, T, V)
        self.target_vocab = logits_shape[-1].get_length()
        self.last_stats = SpeculativeStats()

    def _load_draft(self, draft_dir: Path, device: str | None, properties: dict | None, precise: bool) -> Any:
        return DraftModel(draft_dir, device, properties, precise)

    def fork(self, target: OpenVINOBackend) -> SpeculativeDecoder:
        """A decoder for ``target``, a fork of this one's target (``OpenVINOBackend.fork``): the server runs
        one per slot. Compiled models are shared; infer requests (KV states) and statistics are not."""
        target._lm = self.target._lm.fork()  # the backend's fork shared this wrapper (not an InferRequest)
        twin = copy.copy(self)
        twin.target, twin.draft, twin.last_stats = target, self.draft.fork(), SpeculativeStats()
        return twin

    def _draft_text(self, prepared: Any) -> list[int]:
        """The prompt as the draft sees it: its text tokens, image placeholders dropped."""
        return [t for t in prepared.token_ids if t != self.target.image_token_id]

    # -- generation ---
    def start(self, prepared: Any, cfg: GenerationConfig) -> Generation:
        cfg.validate()
        n_prompt = self.target.prompt_length(prepared)
        if n_prompt >= self.target.max_context:
            raise ContextOverflowError(
                f"the prompt is {n_prompt} tokens (image tokens included) but the model's context is "
                f"{self.target.max_context} tokens: shorten the text, use fewer images, or start a new chat")
        generation = Generation()
        generation._pieces = self._run(prepared, cfg, n_prompt, generation)
        return generation

    def _run(self, prepared: Any, cfg: GenerationConfig, n_prompt: int, out: Generation) -> Iterator[str]:
        target, draft = self.target, self.draft
        rng = np.random.default_rng(cfg.seed)
        budget = min(cfg.max_new_tokens, target.max_context - n_prompt)
        stream = TextStream(target.decode_text, cfg.stop)
        stats = SpeculativeStats()
        k = self.k
        context = self._draft_text(prepared)
        ids: list[int] = []
        finish, done = "length", False
        start = time.perf_counter()
        logits = self._prefill(prepared)  # (V,)
        kv = TargetKV(target)
        try:
            token = self._pick(logits, cfg, ids, rng)
            first_token_at = time.perf_counter()
            pending = [token]  # tokens chosen, to be emitted in order
            while True:
                for token in pending:
                    ids.append(token)
                    if token in target.eos_token_ids and not cfg.ignore_eos:
                        finish, done = "stop", True
                        break
                    piece = stream.push(token)
                    if piece:
                        yield piece
                    if stream.stopped:
                        finish, done = "stop", True
                        break
                    if len(ids) >= budget:
                        done = True
                        break
                if done:
                    break
                last = ids[-1]
                room = min(budget - len(ids) - 1, draft.max_context - len(context) - len(ids) - 1)
                k_round = max(0, min(k, room))
                position = kv.valid  # where ``last`` goes
                proposals, q_rows = self._propose(context + ids, k_round, cfg, ids, rng, position)
                p_rows = kv.verify([last, *proposals])  # (k+1, V)
                pending = self._accept(proposals, q_rows, p_rows, cfg, ids, rng)
                n_ok = len(pending) - 1
                self._verified(proposals[:n_ok], position)
                kv.reject(len(proposals) - n_ok)
                stats.drafted += len(proposals)
                stats.accepted += n_ok
                stats.rounds += 1
                if self.adaptive and proposals:
                    k = min(2 * self.k, k + 1) if n_ok == len(proposals) else max(1, k - 1) if 2 * n_ok < len(proposals) else k
        except BaseException:  # an error, or the consumer closed the generator (GeneratorExit)
            kv.close(quiet=True)
            raise
        kv.close()  # inside the timed part: the one copy per generation is part of its cost
        tail = stream.flush()
        if tail:
            yield tail
        end = time.perf_counter()
        stats.k_final, stats.compactions = k, kv.compactions
        self.last_stats = stats
        decode_s = end - first_token_at
        result = GenerationResult(
            text=stream.text, token_ids=ids, finish_reason=finish,
            metrics=Metrics(
                prompt_tokens=n_prompt, generated_tokens=len(ids), time_to_first_token_s=first_token_at - start,
                decode_tokens_per_s=(len(ids) - 1) / decode_s if len(ids) > 1 and decode_s > 0 else 0.0,
                total_s=end - start, cached_tokens=getattr(target, "cached_tokens", 0),
                image_encode_s=getattr(target, "image_encode_s", 0.0), peak_rss_mb=peak_rss_mb()),
        )
        result.speculative = stats  # type: ignore[attr-defined]  (extra field; Metrics is shared)
        out._finish(result)

    def _prefill(self, prepared: Any) -> np.ndarray:
        """The target's prefill (a hook: an EAGLE draft records it)."""
        return self.target.prefill(prepared)

    def _verified(self, accepted: list[int], position: int) -> None:
        """After a verify pass: ``accepted`` drafts, the round's first token at ``position`` (a hook)."""

    def _propose(self, text: list[int], k: int, cfg: GenerationConfig, ids: list[int],
                 rng: np.random.Generator, position: int) -> tuple[list[int], list[np.ndarray | None]]:
        """k draft tokens after ``text`` and the draft distribution each came from (None when greedy)."""
        proposals: list[int] = []
        rows: list[np.ndarray | None] = []
        sequence = list(text)
        for _ in range(k):
            token = self._draw(self.draft.sync(sequence), cfg, ids + proposals, rng, rows)
            proposals.append(token)
            sequence.append(token)
        return proposals, rows

    def _draw(self, draft_logits: np.ndarray, cfg: GenerationConfig, previous: list[int],
              rng: np.random.Generator, rows: list) -> int:
        """One draft token from the draft's logits; its distribution q (None when greedy) goes to ``rows``."""
        logits = self._fit(draft_logits)  # (V,) on the target's ids
        if cfg.do_sample:
            q = processed_probs(logits, cfg, previous)
            rows.append(q)
            return int(rng.choice(q.shape[-1], p=q))
        rows.append(None)
        return int(np.argmax(apply_repetition_penalty(logits, previous, cfg.repetition_penalty)))

    def _fit(self, logits: np.ndarray) -> np.ndarray:
        """Draft logits on the target's vocabulary: ids the draft lacks (or its head leaves out) get -inf."""
        vocab = self.target_vocab
        head = self.draft.head_ids
        if head is not None:
            full = np.full(vocab, -np.inf, dtype=np.float32)  # (V,)
            keep = head < vocab
            full[head[keep]] = logits[keep]
            return full
        if logits.shape[-1] >= vocab:
            return logits[:vocab].astype(np.float32)
        return np.concatenate([logits, np.full(vocab - logits.shape[-1], -np.inf, dtype=logits.dtype)]).astype(np.float32)

    def _accept(self, proposals: list[int], q_rows: list, p_rows: np.ndarray, cfg: GenerationConfig,
                ids: list[int], rng: np.random.Generator) -> list[int]:
        """Accepted proposals plus one token (the correction or the bonus)."""
        accepted: list[int] = []
        for i, token in enumerate(proposals):
            previous = ids + accepted
            if not cfg.do_sample:
                best = int(np.argmax(apply_repetition_penalty(p_rows[i], previous, cfg.repetition_penalty)))
                if best != token:
                    return accepted + [best]
            else:
                p = processed_probs(p_rows[i], cfg, previous)
                fixed = rejection_step(p, q_rows[i], token, rng)
                if fixed is not None:
                    return accepted + [fixed]
            accepted.append(token)
        return accepted + [self._pick(p_rows[len(proposals)], cfg, ids + accepted, rng)]

    @staticmethod
    def _pick(logits: np.ndarray, cfg: GenerationConfig, previous: list[int], rng: np.random.Generator) -> int:
        if not cfg.do_sample:
            return int(np.argmax(apply_repetition_penalty(logits.astype(np.float32), previous, cfg.repetition_penalty)))
        p = processed_probs(logits, cfg, previous)
        return int(rng.choice(p.shape[-1], p=p))


def processed_probs(logits: np.ndarray, cfg: GenerationConfig, previous: list[int]) -> np.ndarray:
    """The sampling distribution ``sample_next`` draws from: penalty, temperature, top-k/p, softmax."""
    logits = apply_repetition_penalty(logits.astype(np.float32), previous, cfg.repetition_penalty)
    logits = filter_top_k_top_p(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    x = logits.astype(np.float64) - np.max(logits)
    e = np.exp(x)
    return e / e.sum()


def rejection_step(p: np.ndarray, q: np.ndarray, token: int, rng: np.random.Generator) -> int | None:
    """Accept ``token`` (drawn from q) with min(1, p/q): None; else a draw from norm(max(0, p - q)).

    Marginally the result (token if accepted) is distributed exactly as ``p``.
    """
    if q[token] > 0 and rng.random() < min(1.0, p[token] / q[token]):
        return None
    residual = np.maximum(p - q, 0.0)
    total = residual.sum()
    if total <= 0:  # p == q numerically: any rejection was rounding; fall back to p
        residual, total = p, p.sum()
    return int(rng.choice(residual.shape[-1], p=residual / total))
