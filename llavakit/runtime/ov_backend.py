"""The OpenVINO engine: runs an exported directory with no torch and no transformers.

Pieces: openvino-tokenizers models for text ↔ ids, :mod:`chat_render` for the
chat template, :mod:`image_processing` (NumPy) for pixels, and the three IR
models. The language model is stateful: its KV cache lives in the infer
request, so a decode step feeds one token's embedding.

Reuse, the feature that makes chat fast:
- The engine remembers what the KV state holds as a list of position keys
  (a token id, or ``(image digest, i)`` for the i-th feature of an image). A
  new prompt is compared with it; the shared prefix stays in the cache (trimmed
  to that length if the rest differs) and only the new positions are computed.
  Turn 2 of a chat therefore prefills only turn 2, and asking the same thing
  about the same image again costs one token.
- Image features are cached by the digest of the preprocessed pixels, so an
  image sent again is not re-encoded.

The result must equal a from-scratch run: tests compare turn 2 with reuse
against the same conversation prefilled from nothing.

LoRA (``runtime/lora.py``): an export with LoRA slots takes each request's adapter
mix as input tensors bound to the infer requests; the KV prefix is reused only
under the same mix, and image features are cached per projector-changing mix.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable

import numpy as np
import openvino as ov
import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops with OpenVINO)
from PIL import Image

from llavakit.errors import LlavakitError, ModelLoadError, PromptError
from llavakit.export import layout
from llavakit.runtime.chat_render import ChatRenderer
from llavakit.runtime.image_processing import ImageProcessor
from llavakit.runtime.lora import MANIFEST as LORA_MANIFEST
from llavakit.runtime.lora import AdapterSet, Mix
from llavakit.runtime.moe_usage import ExpertUsage
from llavakit.runtime.types import union_of_ids

#: OpenVINO settings that make CPU results match transformers' fp32 (tests, parity checks). On CPUs with
#: AVX-512 VNNI / AMX the plugin also quantizes activations to INT8 on the fly for weight-compressed
#: MatMuls (dynamic quantization, on by default there): group size 0 turns that off.
PRECISE = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
IMAGE_CACHE_SIZE = 32
#: Prefill at most this many rows per LM call on a CPU (``prefill_chunks``); 0 = one call.
PREFILL_CHUNK = 64


def prefill_chunks(rows: int, limit: int) -> list[int]:
    """Balanced chunk sizes of at most ``limit`` rows that add up to ``rows`` (one chunk if ``limit`` <= 0).

    Why: the OpenVINO CPU plugin's weight-compressed MatMuls get dearer per row past 64 rows (2-core AVX-512
    EPYC, OpenVINO 2026.4, 2026-12-06: a bench-1b INT4 prefill of 72 rows took 489 ms in one call and 380 ms
    as 36 + 36; 200 rows 1300 vs 1019 ms as 4 x 50; budget INT8: equal at 72 rows, 334 vs 274 ms at 200). No
    measured size got slower. Equal chunks beat 64 + remainder (benchmarks/README.md, chunked prefill).
    """
    if limit <= 0 or rows <= limit:
        return [rows]
    count = -(-rows // limit)
    return [rows // count + (1 if i < rows % count else 0) for i in range(count)]


def lm_cpu_defaults(core: ov.Core, device: str) -> dict:
    """Settings for the language model on a CPU whose plugin defaults to bf16 (AMX / AVX512-BF16 Xeons): f32.

    Why: on those CPUs the plugin's default inference precision is bf16, and then its one-token decode of
    weight-compressed MatMuls runs without the dynamic INT8 activation quantization it uses at f32.
    Measured on a 2-core AMX Xeon (2026-12-04): bench-1b INT4 decodes 24.7 tok/s at f32 vs 15.8 at the
    default bf16 (1.56x; llama.cpp Q4_K_M: 24.4), budget INT8 72 vs 53 tok/s; the cost is prefill, which
    AMX-bf16 does faster (bench-1b cold time to first token 0.47 s vs 0.35 s). Compiling both and handing
    the KV state over would keep both, but the second compiled LM costs ~850 MB of RSS. Only the LM: the
    vision encoder is all prefill. A user's own ``INFERENCE_PRECISION_HINT`` wins; other CPUs (default f32)
    are unchanged.
    """
    if device.split(".")[0].split(":")[0] != "CPU":
        return {}
    try:
        default = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
    except RuntimeError:  # an OpenVINO without the property: keep its defaults
        return {}
    return {"INFERENCE_PRECISION_HINT": "f32"} if default == ov.Type.bf16 else {}


@dataclass
class OVPrompt:
    """A rendered, tokenized conversation: position keys and what to compute for each."""

    token_ids: list[int]  # (T_text,) with one image token per image
    images: list[np.ndarray]  # each (1, 3, H, W), in order
    digests: list[str]
    keys: list[Hashable] = field(default_factory=list)  # (T,) one per LM position, images expanded
    adapter: Mix = ()  # the LoRA mix to run under (runtime/lora.py); () = the base model


def pick_ov_device(core: ov.Core, device: str | None) -> str:
    """OpenVINO device name; a missing one is an error that lists the devices present."""
    name = (device or "CPU").upper()
    available = core.available_devices
    base = name.split(".")[0].split(":")[0]
    if base in ("AUTO", "HETERO", "MULTI") or base in available or name in available:
        return name
    raise LlavakitError(f"device {device!r} is not available to OpenVINO; available: {available + ['AUTO']}")


def keep_kv_positions(request: ov.InferRequest, positions: slice | np.ndarray) -> None:
    """Keep only ``positions`` (sequence axis) of every KV state of ``request``.

    A stateful OpenVINO LM can only append to its state, so cutting (prefix reuse, a draft's resync) or
    gathering (speculative decoding's holes) is one read and one write of each state tensor.
    """
    for state in request.query_state():
        data = state.state.data  # (B, H_kv, L, d)
        state.state = ov.Tensor(np.ascontiguousarray(data[:, :, positions]))  # (B, H_kv, L_kept, d)


class OpenVINOBackend:
    """Prefill/decode over an exported LLaVA directory."""

    name = "openvino"
    _experts: ExpertUsage | None = None  # MoE exports: router outputs counted per generation (moe_usage.py)

    def __init__(self, model_dir: Path, device: str | None = None, properties: dict | None = None,
                 precise: bool = False) -> None:
        if not layout.is_exported(model_dir):
            raise ModelLoadError(f"{model_dir} is not a complete llavakit OpenVINO export (missing {layout.REQUIRED})")
        core = ov.Core()
        self.device = pick_ov_device(core, device)
        self.model_dir = Path(model_dir)
        props = {**(PRECISE if precise else {}), **(properties or {})}
        compile_ = lambda name, extra=None: core.compile_model(model_dir / name, self.device, {**props, **(extra or {})})  # noqa: E731
        language_model = keep_last_logits(core.read_model(model_dir / layout.LANGUAGE_MODEL))
        self._experts = ExpertUsage.attach(language_model, model_dir)  # MoE: router outputs for usage stats
        self.lm_properties = {**lm_cpu_defaults(core, self.device), **props}  # what the LM is compiled with
        self.prefill_chunk = PREFILL_CHUNK if self.device.startswith("CPU") else 0  # set 0 for one call
        self._lm = core.compile_model(language_model, self.device, self.lm_properties).create_infer_request()
        self._vision = compile_(layout.VISION_EMBEDDINGS)
        self._text = compile_(layout.TEXT_EMBEDDINGS)
        config = json.loads((model_dir / layout.CONFIG).read_text())
        self._init_prompt_side(core, model_dir, config)
        own_requests(self)
        self.lora = AdapterSet(model_dir, {}) if (model_dir / LORA_MANIFEST).is_file() else None
        self._feature_caches: dict[Mix, OrderedDict[str, np.ndarray]] = {(): self._features}
        self._bound: tuple[Mix, Mix] | None = None  # (mix, projector mix) bound to the requests
        self._state_mix: Mix = ()  # the mix the KV state was computed under
        if self.lora is not None:
            self.bind_adapter(())  # the vision request (an OwnRequest) holds the projector's factors

    # --- LoRA -------------------------------------------------------------------------------
    def load_adapters(self, adapters: dict[str, str | Path]) -> None:
        """Load PEFT adapters (name → directory) for per-request use; needs an export with LoRA slots."""
        self.lora = AdapterSet(self.model_dir, adapters)  # raises for an export without LoRA slots
        self._feature_caches, self._bound = {(): self._features}, None
        self.bind_adapter(())

    def adapter_names(self) -> list[str]:
        return self.lora.names if getattr(self, "lora", None) else []

    def bind_adapter(self, mix: Mix) -> None:
        """Bind ``mix``'s factors to the LM (and, if it changes the projector, the vision) request."""
        if self.lora is None:
            if mix:
                raise LlavakitError("this model has no adapters loaded (pass adapters= to Pipeline)")
            return
        projector = self.lora.projector_key(mix)
        if self._bound is not None and self._bound[0] == mix:
            return
        factors = self.lora.factors(mix)
        if self._bound is None:  # ports by name, once per request: a name lookup per tensor costs ~4x more
            self._lm_ports = _ports(self._lm, factors.lm)
            self._vision_ports = _ports(self._vision._request, factors.vision) if factors.vision else {}
        _bind(self._lm, self._lm_ports, _wrapped(factors, "lm"))
        self._lm_factors = factors  # keeps the shared-memory arrays alive while bound, even if evicted
        if factors.vision and (self._bound is None or self._bound[1] != projector):
            _bind(self._vision._request, self._vision_ports, _wrapped(factors, "vision"))
            self._vision_factors = factors
        self._features = self._feature_caches.setdefault(projector, OrderedDict())
        self._bound = (mix, projector)

    def _init_prompt_side(self, core: ov.Core, model_dir: Path, config: dict, max_context: int | None = None) -> None:
        """What every backend of an export shares whatever runs its LM: tokenizers, chat template, image
        processing, and the empty prompt state (the llama.cpp backend calls this, not ``__init__``)."""
        text_config = config.get("text_config", {})
        self._tokenizer = core.compile_model(model_dir / layout.TOKENIZER, "CPU")
        self._detokenizer = core.compile_model(model_dir / layout.DETOKENIZER, "CPU")
        self.image_token_id = int(config.get("image_token_id", config.get("image_token_index")))
        self.max_context = int(max_context or text_config.get("max_position_embeddings", 4096))
        self.eos_token_ids = _eos_ids(model_dir, text_config)
        self.renderer = ChatRenderer.from_dir(model_dir)
        self.image_processor = self._load_image_processor(model_dir)
        self._added_prefix, self._added_suffix = self._auto_special_tokens()
        self._state_keys: list[Hashable] = []
        self._features: OrderedDict[str, np.ndarray] = OrderedDict()
        self.image_encode_s = 0.0
        self.cached_tokens = 0
        self._per_image: int | None = None

    def _load_image_processor(self, model_dir: Path) -> ImageProcessor | None:
        """The pixels-for-one-image step; subclasses with their own (LLaVA-NeXT tiles) return None."""
        return ImageProcessor.from_pretrained(model_dir)

    # --- text -------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        ids = self._tokenizer([text])["input_ids"][0].tolist()
        return ids

    def _auto_special_tokens(self) -> tuple[list[int], list[int]]:
        """Tokens the tokenizer adds by itself (e.g. BOS); templates write their own, so we strip these."""
        empty, probe = self._encode(""), self._encode("a")
        prefix = 0
        while prefix < len(empty) and prefix < len(probe) and empty[prefix] == probe[prefix]:
            prefix += 1
        return empty[:prefix], empty[prefix:]

    def tokenize(self, text: str) -> list[int]:
        ids = self._encode(text)
        if self._added_prefix and ids[: len(self._added_prefix)] == self._added_prefix:
            ids = ids[len(self._added_prefix):]
        if self._added_suffix and ids[-len(self._added_suffix):] == self._added_suffix:
            ids = ids[: -len(self._added_suffix)]
        return ids

    def decode_text(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        return str(self._detokenizer(np.asarray([token_ids], dtype=np.int64))[0][0])

    def render(self, messages: list[dict]) -> str:
        return self.renderer.render(messages, add_generation_prompt=True)

    # --- prompt -----------------------------------------------------------------------------
    def prepare(self, messages: list[dict], images: list[Image.Image]) -> OVPrompt:
        ids = self.tokenize(self.render(messages))
        n_tags = sum(1 for t in ids if t == self.image_token_id)
        if n_tags != len(images):
            raise PromptError(f"the rendered prompt has {n_tags} image token(s) but {len(images)} image(s) were given")
        pixels = [self.image_processor([im]) for im in images]  # each (1, 3, H, W)
        digests = [hashlib.sha1(p.tobytes()).hexdigest() for p in pixels]
        prompt = OVPrompt(ids, pixels, digests)
        per_image = self.features_per_image()
        images_seen = 0
        for token in ids:
            if token == self.image_token_id:
                prompt.keys += [(digests[images_seen], j) for j in range(per_image)]
                images_seen += 1
            else:
                prompt.keys.append(token)
        return prompt

    def features_per_image(self) -> int:
        """Image positions per image (the vision model's output length), measured once."""
        if self._per_image is None:
            probe = self.image_processor([Image.new("RGB", (8, 8))])  # (1, 3, H, W)
            self._per_image = int(self._vision(probe)[0].shape[1])
        return self._per_image

    def prompt_length(self, prepared: OVPrompt) -> int:
        return len(prepared.keys)

    # --- model ------------------------------------------------------------------------------
    def prefill(self, prepared: OVPrompt) -> np.ndarray:
        keys = prepared.keys
        self.bind_adapter(prepared.adapter)
        keep = _common_prefix(self._state_keys, keys, limit=len(keys) - 1)
        if prepared.adapter != self._state_mix:  # a prefix computed under another adapter is not ours
            keep = 0
            self._state_mix = prepared.adapter
        self._trim_state(keep)
        self.cached_tokens = keep
        if self._experts is not None:
            self._experts.reset()  # expert usage is counted per generation
        embeds = self._embed(prepared, keep)  # (1, T_new, D)
        done = 0
        for rows in prefill_chunks(embeds.shape[1], self.prefill_chunk):  # each chunk attends to the state so far
            logits = self._run(embeds[:, done:done + rows], start=keep + done)  # the last chunk's logits are the answer
            done += rows
        self._state_keys = list(keys)
        return logits

    def decode_one(self, token_id: int) -> np.ndarray:
        embeds = self._text(np.asarray([[token_id]], dtype=np.int64))[0]  # (1, 1, D)
        logits = self._run(embeds, start=len(self._state_keys))
        self._state_keys.append(token_id)
        return logits

    def _run(self, embeds: np.ndarray, start: int) -> np.ndarray:
        length = embeds.shape[1]
        self._lm.infer({
            "inputs_embeds": embeds,
            "attention_mask": np.ones((1, start + length), dtype=np.int64),
            "position_ids": np.arange(start, start + length, dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        })
        if self._experts is not None:
            self._experts.collect(self._lm)
        return self._lm.get_tensor("logits").data[0, -1].copy()  # (V,)

    def expert_usage(self) -> dict[int, list[int]] | None:
        """MoE exports: layer → how many token assignments each expert got in the last generation."""
        return self._experts.counts() if self._experts is not None else None

    def _embed(self, prepared: OVPrompt, start: int) -> np.ndarray:
        """Embeddings of positions ``start:`` — text via the embedding model, images via cached features."""
        text = self._text(np.asarray([prepared.token_ids], dtype=np.int64))[0][0]  # (T_text, D)
        self.image_encode_s = 0.0
        rows, image_index = [], 0
        for i, token in enumerate(prepared.token_ids):
            if token == self.image_token_id:
                rows.append(self._image_features(prepared.images[image_index], prepared.digests[image_index]))
                image_index += 1
            else:
                rows.append(text[i][None])
        merged = np.concatenate(rows, axis=0)  # (T, D)
        return np.ascontiguousarray(merged[start:][None])  # (1, T_new, D)

    def _image_features(self, pixels: np.ndarray, digest: str) -> np.ndarray:
        if digest in self._features:
            self._features.move_to_end(digest)
            return self._features[digest]
        begin = time.perf_counter()
        features = self._vision(pixels)[0][0]  # (P, D)
        self.image_encode_s += time.perf_counter() - begin
        self._features[digest] = features
        if len(self._features) > IMAGE_CACHE_SIZE:
            self._features.popitem(last=False)
        return features

    def _trim_state(self, keep: int) -> None:
        """Cut the KV state to its first ``keep`` positions (reset when nothing is kept)."""
        if keep == len(self._state_keys):
            return
        if keep == 0:
            self._lm.reset_state()
        else:
            keep_kv_positions(self._lm, slice(0, keep))
        self._state_keys = self._state_keys[:keep]

    def reset(self) -> None:
        """Forget the KV state (the image feature cache stays)."""
        self._lm.reset_state()
        self._state_keys = []

    def fork(self) -> OpenVINOBackend:
        """A twin sharing this backend's compiled models (weights stay in memory once) with its own
        infer requests, so its own KV state, prefix-reuse keys and image-feature cache.

        Twins may run at the same time in different threads (OpenVINO releases the GIL while it
        infers): the server decodes N requests interleaved on N twins. Every compiled model held
        as an attribute gets its own request (``CompiledModel.__call__`` shares one per model,
        which threads would race on), so subclasses that add IR models are covered.
        """
        if self.name != "openvino":
            raise LlavakitError(f"the {self.name} backend cannot fork independent sessions; serve it with one slot")
        twin = copy.copy(self)
        for attr, value in vars(self).items():
            if isinstance(value, ov.InferRequest):
                setattr(twin, attr, value.get_compiled_model().create_infer_request())
            elif isinstance(value, (ov.CompiledModel, OwnRequest)):
                setattr(twin, attr, OwnRequest(value))
        twin._state_keys, twin._features = [], OrderedDict()
        twin.cached_tokens, twin.image_encode_s = 0, 0.0
        twin._experts = self._experts.fresh() if self._experts is not None else None
        twin._feature_caches, twin._bound, twin._state_mix = {(): twin._features}, None, ()
        twin.bind_adapter(())  # the twin's new requests need their own factors
        return twin


def own_requests(backend: object) -> None:
    """Every ``ov.CompiledModel`` attribute of ``backend`` becomes an :class:`OwnRequest`, in the original too.

    Why: ``CompiledModel.__call__`` runs one implicit request per compiled model with its inputs shared
    zero-copy; run in one thread while a twin's own request of the same compiled model ran in another, the
    process died (segfault or "free(): corrupted unsorted chunks") in 4 of 4 runs of 15 concurrent
    generations — the server's load test lost its server this way about once in 14 runs, since slot 0 was
    the original pipeline. With every caller on a request of its own: 0 crashes in 6 runs (2026-12-06).
    """
    for attr, value in list(vars(backend).items()):
        if isinstance(value, ov.CompiledModel):
            setattr(backend, attr, OwnRequest(value))


class OwnRequest:
    """A compiled model called like one, through an infer request of its own (see ``fork``)."""

    def __init__(self, model: ov.CompiledModel | OwnRequest) -> None:
        self.compiled = model.compiled if isinstance(model, OwnRequest) else model
        self._request = self.compiled.create_infer_request()

    def __call__(self, inputs: object) -> ov.utils.data_helpers.OVDict:
        if isinstance(inputs, np.ndarray) and len(self.compiled.inputs) > 1:  # other inputs (LoRA) are bound
            inputs = {self.compiled.inputs[0].get_any_name(): inputs}
        return self._request.infer(inputs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.compiled, name)


def _wrapped(factors, part: str) -> dict[str, ov.Tensor]:  # factors: runtime.lora.Factors
    """A mix's factors as ov.Tensors sharing the NumPy memory, made once per mix."""
    if part not in factors.wrapped:
        factors.wrapped[part] = {k: ov.Tensor(v, shared_memory=True) for k, v in getattr(factors, part).items()}
    return factors.wrapped[part]


def _ports(request: ov.InferRequest, names: dict) -> dict[str, ov.ConstOutput]:
    return {port.get_any_name(): port for port in request.model_inputs if port.get_any_name() in names}


def _bind(request: ov.InferRequest, ports: dict[str, ov.ConstOutput], tensors: dict[str, ov.Tensor]) -> None:
    """Set input tensors by port (hundreds of LoRA inputs: by name costs ~4x more)."""
    for name, tensor in tensors.items():
        request.set_tensor(ports[name], tensor)


def head_matmul(model: ov.Model) -> ov.Node:
    """The LM head's MatMul (walking up from ``logits`` past any post-processing); its input 0 is the
    post-norm last hidden state (B, T, D)."""
    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() != "MatMul":
        node = node.input_value(0).get_node()
    return node


def keep_last_logits(model: ov.Model) -> ov.Model:
    """Compute the LM head for the last position only.

    A prefill of T tokens otherwise multiplies (T, D) by the (D, V) head and
    throws away all but one row: for a 1B LM and a 600-token image prompt that is
    tens of GFLOPs of the time to first token. The slice goes in front of the
    head's MatMul, so ``logits`` becomes (B, 1, V).
    """
    from openvino import opset13 as ops

    node = head_matmul(model)
    hidden = node.input_value(0)  # (B, T, D)
    last = ops.slice(hidden, np.array([-1]), np.array([np.iinfo(np.int64).max]), np.array([1]), np.array([1]))
    node.input(0).replace_source_output(last.output(0))  # (B, 1, D)
    model.validate_nodes_and_infer_types()
    return model


def _common_prefix(a: list, b: list, limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if n >= limit or x != y:
            break
        n += 1
    return n


def _eos_ids(model_dir: Path, text_config: dict) -> set[int]:
    """eos ids from generation_config.json and the text config."""
    path = model_dir / layout.GENERATION_CONFIG
    generation = json.loads(path.read_text()) if path.is_file() else {}
    return union_of_ids(text_config.get("eos_token_id"), generation.get("eos_token_id"))
