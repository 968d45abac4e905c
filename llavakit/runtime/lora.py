"""LoRA adapters at run time: PEFT adapter directories applied per request to one compiled model.

    pipe = Pipeline("export-with-lora-slots", adapters={"pirate": "ad/pirate", "formal": "ad/formal"})
    pipe.generate("Hi", adapter="pirate")                         # one adapter, alpha 1
    pipe.generate("Hi", adapter={"pirate": 0.5, "formal": 0.5})  # a weighted mix
    pipe.generate("Hi")                                           # the base model, bit for bit

Design decisions (the export half is ``export/lora.py``):

* **An adapter is read, never merged.** ``adapter_config.json`` + ``adapter_model.safetensors``
  as PEFT writes them (``llavakit train --lora`` included) are read with safetensors' NumPy
  reader: no torch on the OpenVINO path. Every LoRA module must match a slot of the export
  (``llavakit_lora.json``) in name and size, else a :class:`LlavakitError` names the module and
  the sizes — an adapter trained for another base model fails here, at load, not mid-answer.
* **A request's adapter is a mix** ``{name: weight}`` (one name = weight 1, a string
  ``"name:0.5"`` works too). For each slot the factors of the mix are concatenated along the
  rank, with ``weight * lora_alpha / r`` (``/ sqrt(r)`` for rsLoRA, per-module ``rank_pattern`` /
  ``alpha_pattern`` honoured) folded into B: ``ΔW = Σ w_i s_i B_i A_i`` in one branch.
  Slots the mix does not touch get rank 0 — an exact ``+ 0``.
* **A fully trained module** (PEFT ``modules_to_save``: the projector of a llavakit adapter)
  becomes ``ΔW = W' - W`` written as ``A = I, B = Σ w_i ΔW_i`` plus a bias delta, against the
  base projector weights the export saved beside the manifest.
* **Switching is a few ``set_tensor`` calls.** The factors of a mix are built once (NumPy) and
  kept (LRU), so switching back and forth costs only binding tensors to the infer request;
  the decode step then runs one extra (1, in)·(in, r)·(r, out) pair per slot.
* The KV-prefix reuse and the image-feature cache are keyed on the mix (``ov_backend``): a
  prefix computed under one adapter is never reused under another.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llavakit.errors import LlavakitError

MANIFEST = "llavakit_lora.json"  # same name as export/lora.py (which imports torch)
BASE_WEIGHTS = "llavakit_lora_base.safetensors"
PEFT_PREFIX = "base_model.model."
FACTOR_CACHE = 8

#: What a caller may pass as ``adapter=``: None (base), "name", "name:alpha", or {name: weight}.
AdapterSpec = None | str | dict[str, float]
Mix = tuple[tuple[str, float], ...]  # normalised, sorted; () = the base model


@dataclass
class PeftAdapter:
    """One PEFT LoRA adapter as NumPy: per-module factors and scale, and fully trained modules."""

    name: str
    path: Path
    lora: dict[str, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)  # A (r,in), B (out,r), s
    full: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # module -> {"weight", "bias"}


def load_peft_adapter(name: str, path: str | Path) -> PeftAdapter:
    """Read a PEFT LoRA adapter directory; a clear error for anything we cannot apply exactly."""
    from safetensors import safe_open

    path = Path(path)
    config_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not path.is_dir():
        raise LlavakitError(f"adapter {name!r}: {path} is not a directory (expected a PEFT adapter directory "
                            "with adapter_config.json and adapter_model.safetensors)")
    if not config_file.is_file() or not weights_file.is_file():
        raise LlavakitError(f"adapter {name!r}: {path} lacks adapter_config.json or adapter_model.safetensors "
                            "(a PEFT LoRA adapter as save_pretrained or `llavakit train --lora` writes it)")
    config = json.loads(config_file.read_text())
    refused = [k for k in ("use_dora", "fan_in_fan_out", "lora_bias") if config.get(k)]
    if config.get("peft_type", "LORA") != "LORA" or refused:
        raise LlavakitError(f"adapter {name!r}: only plain LoRA adapters run here; this one is "
                            f"{config.get('peft_type')} {refused or ''}".rstrip())
    tensors: dict[str, np.ndarray] = {}
    with safe_open(str(weights_file), framework="np") as f:
        for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            tensors[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
    adapter = PeftAdapter(name, path)
    for key, value in tensors.items():
        module = key.removeprefix(PEFT_PREFIX)
        if module.endswith(".lora_A.weight"):
            module = module.removesuffix(".lora_A.weight")
            b = tensors.get(f"{PEFT_PREFIX}{module}.lora_B.weight", tensors.get(f"{module}.lora_B.weight"))
            if b is None or b.shape[1] != value.shape[0]:
                raise LlavakitError(f"adapter {name!r}: {module} has lora_A {value.shape} but lora_B "
                                    f"{None if b is None else b.shape}; the ranks must agree")
            adapter.lora[module] = (value, b, _scale(config, module, value.shape[0]))
        elif ".lora_" in module:
            if not module.endswith(".lora_B.weight"):
                raise LlavakitError(f"adapter {name!r}: tensor {key} is not a LoRA Linear factor; not supported")
        else:
            owner, _, kind = module.rpartition(".")
            adapter.full.setdefault(owner, {})[kind] = value
    if not adapter.lora and not adapter.full:
        raise LlavakitError(f"adapter {name!r}: {weights_file} holds no LoRA weights")
    return adapter


def _scale(config: dict, module: str, rank: int) -> float:
    """``lora_alpha / r`` (or ``/ sqrt(r)`` with rsLoRA), with PEFT's per-module patterns."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = float(value)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


class AdapterWeightError(LlavakitError):
    """An adapter weight that is not a finite number (the server answers 400, not 404, for it)."""


def parse_spec(spec: AdapterSpec, known: list[str]) -> Mix:
    """Normalise ``adapter=`` into a sorted ``((name, weight), ...)``; unknown names are an error.

    A string is a name, ``"name:alpha"``, or a mix ``"a:0.5+b:0.5"`` (how the server's model ids carry one).
    """
    if spec is None or spec == "" or spec == {}:
        return ()
    if isinstance(spec, str):
        spec = _parse_text(spec, known)
    if not isinstance(spec, dict):
        raise LlavakitError(f"adapter must be a name, 'name:alpha' or {{name: weight}}, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise LlavakitError(f"unknown adapter(s) {unknown}; loaded: {known or 'none (pass adapters= to Pipeline)'}")
    for name, weight in spec.items():
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise AdapterWeightError(f"adapter {name!r}: weight must be a finite number, got {weight!r}")
    return tuple(sorted((n, float(w)) for n, w in spec.items() if w != 0))


def _parse_text(text: str, known: list[str]) -> dict[str, float]:
    """``"a"``, ``"a:0.5"`` or ``"a:0.5+b:0.5"`` → {name: weight}; a name may itself hold ':' or '+'."""
    if text in known:
        return {text: 1.0}
    mix: dict[str, float] = {}
    for part in text.split("+"):
        name, sep, alpha = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        if name in mix:
            raise LlavakitError(f"adapter {name!r} appears twice in {text!r}")
        try:
            mix[name] = float(alpha) if sep else 1.0
        except ValueError:
            raise LlavakitError(f"adapter {part!r}: the alpha after ':' must be a number") from None
    return mix


def parse_adapter_arg(text: str) -> tuple[str, float]:
    """CLI ``PATH[:alpha]`` → (path, alpha)."""
    path, sep, alpha = text.rpartition(":")
    if sep and not Path(text).exists():
        try:
            return path, float(alpha)
        except ValueError:
            pass
    return text, 1.0


@dataclass
class Factors:
    """What one mix binds to the infer requests: input name → tensor."""

    lm: dict[str, np.ndarray]
    vision: dict[str, np.ndarray]
    wrapped: dict[str, dict] = field(default_factory=dict)  # the same as ov.Tensors, made once (ov_backend)


class AdapterSet:
    """The adapters loaded for one export, checked against its slots; builds a mix's factors."""

    def __init__(self, model_dir: Path, adapters: dict[str, str | Path]) -> None:
        manifest = model_dir / MANIFEST
        if not manifest.is_file():
            raise LlavakitError(f"{model_dir} was exported without LoRA slots, so adapters cannot be applied at run "
                                "time: re-export with `llavakit export MODEL --out DIR --lora-slots`")
        body = json.loads(manifest.read_text())
        self.lm_slots = {s["module"]: s for s in body["language_model"]}
        self.vision_slots = {s["module"]: s for s in body.get("vision_embeddings", [])}
        self._base = _read_base(model_dir / BASE_WEIGHTS) if self.vision_slots else {}
        self.adapters = {name: self._check(load_peft_adapter(name, path)) for name, path in adapters.items()}
        self._cache: OrderedDict[Mix, Factors] = OrderedDict()
        self._lock = threading.Lock()  # server slots (forks) share this set from several threads

    @property
    def names(self) -> list[str]:
        return list(self.adapters)

    def _check(self, adapter: PeftAdapter) -> PeftAdapter:
        return check_adapter(adapter, self.lm_slots, self.vision_slots)

    def factors(self, mix: Mix) -> Factors:
        """The input tensors for ``mix`` (cached: switching back to a mix costs no NumPy work)."""
        with self._lock:
            if mix in self._cache:
                self._cache.move_to_end(mix)
                return self._cache[mix]
        factors = self._build(mix)
        with self._lock:
            self._cache[mix] = factors
            if len(self._cache) > FACTOR_CACHE:
                self._cache.popitem(last=False)
        return factors

    def _build(self, mix: Mix) -> Factors:
        lm = {}
        for module, slot in self.lm_slots.items():
            parts = [(self.adapters[n].lora[module], w) for n, w in mix if module in self.adapters[n].lora]
            a = np.concatenate([p[0] for p, _ in parts], axis=0) if parts else np.zeros((0, slot["in_features"]))
            b = (np.concatenate([p[1] * (w * p[2]) for p, w in parts], axis=1) if parts
                 else np.zeros((slot["out_features"], 0)))
            lm[f"lora.A.{module}"] = np.ascontiguousarray(a, dtype=np.float32)  # (R, in)
            lm[f"lora.B.{module}"] = np.ascontiguousarray(b, dtype=np.float32)  # (out, R)
        vision = {}
        for module, slot in self.vision_slots.items():
            users = [(self.adapters[n].full[module], w) for n, w in mix if module in self.adapters[n].full]
            base = self._base.get(module, {})
            if users:
                delta_w = sum(w * (full["weight"] - base["weight"]) for full, w in users)  # (out, in)
                delta_b = sum(w * (full.get("bias", base.get("bias")) - base["bias"]) for full, w in users
                              ) if "bias" in base else np.zeros(slot["out_features"])
                a, b = np.eye(slot["in_features"]), delta_w  # A = I (in, in): an exact full-rank delta
            else:
                a, b = np.zeros((0, slot["in_features"])), np.zeros((slot["out_features"], 0))
                delta_b = np.zeros(slot["out_features"])
            vision[f"lora.A.{module}"] = np.ascontiguousarray(a, dtype=np.float32)
            vision[f"lora.B.{module}"] = np.ascontiguousarray(b, dtype=np.float32)
            vision[f"lora.bias.{module}"] = np.ascontiguousarray(delta_b, dtype=np.float32)  # (out,)
        return Factors(lm, vision)

    def projector_key(self, mix: Mix) -> Mix:
        """The part of ``mix`` that changes image features (adapters with a trained projector)."""
        return tuple((n, w) for n, w in mix if self.adapters[n].full)


def check_adapter(adapter: PeftAdapter, lm_slots: dict, vision_slots: dict) -> PeftAdapter:
    """Map module names onto slots (a plain-LM adapter's ``model.layers.*`` too) and check sizes."""
    mapped = {}
    for module, (a, b, scale) in adapter.lora.items():
        slot_name = _to_slot(module, lm_slots)
        if slot_name is None:
            raise LlavakitError(f"adapter {adapter.name!r} adapts {module}, which has no LoRA slot in this "
                                f"model (slots: {_summary(lm_slots)}); export with --lora-slots "
                                "(and --lora-targets covering it)")
        slot = lm_slots[slot_name]
        if a.shape[1] != slot["in_features"] or b.shape[0] != slot["out_features"]:
            raise LlavakitError(
                f"adapter {adapter.name!r} does not fit this model: {module} has A {a.shape} and B {b.shape} "
                f"but the layer is {slot['in_features']} → {slot['out_features']} features "
                "(an adapter trained for a different base model?)")
        mapped[slot_name] = (a, b, scale)
    adapter.lora = mapped
    for module, weights in adapter.full.items():
        slot = vision_slots.get(module)
        expected = (slot["out_features"], slot["in_features"]) if slot else None
        if slot is None or weights.get("weight") is None or weights["weight"].shape != expected:
            raise LlavakitError(
                f"adapter {adapter.name!r} fully replaces {module} "
                f"({None if weights.get('weight') is None else weights['weight'].shape}); this model can "
                f"take only the projector's Linears in full ({_summary(vision_slots) or 'none'})")
    return adapter


def _to_slot(module: str, slots: dict) -> str | None:
    if module in slots:
        return module
    if module.startswith("model.layers."):  # an adapter made on the plain LM (LlamaForCausalLM & co.)
        candidate = "model.language_model." + module.removeprefix("model.")
        return candidate if candidate in slots else None
    return None


def _summary(slots: dict) -> str:
    kinds = sorted({m.rsplit(".", 1)[-1] for m in slots})
    return f"{len(slots)} Linears named {kinds}" if slots else ""


def _read_base(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Base weights of the fully replaceable modules, saved at export (``export/lora.py``)."""
    from safetensors import safe_open

    out: dict[str, dict[str, np.ndarray]] = {}
    with safe_open(str(path), framework="np") as f:
        for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            owner, _, kind = key.rpartition(".")
            out.setdefault(owner, {})[kind] = np.asarray(f.get_tensor(key), dtype=np.float32)
    return out


class TorchAdapters:
    """The same adapters on the transformers model through PEFT's multi-adapter support (torch backend).

    Each adapter is loaded under its name (``model.load_adapter``); a mix activates several at once
    (``set_adapter([...])``) with each layer's ``scaling`` multiplied by the mix weight, so the
    output is ``W x + Σ w_i s_i B_i A_i x`` — the OpenVINO engine's formula, computed by PEFT.
    The projector (PEFT ``modules_to_save``) is written as ``W + Σ w_i (W_i - W)`` in place.
    """

    def __init__(self, model, adapters: dict[str, str | Path]) -> None:  # model: a transformers LLaVA
        import torch
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        from llavakit.train.lora import lm_linear_targets

        self.model = model
        modules = dict(model.named_modules())

        def sizes(names: list[str]) -> dict[str, dict[str, int]]:
            return {n: {"in_features": modules[n].in_features, "out_features": modules[n].out_features} for n in names}

        lm_slots = sizes(lm_linear_targets(model))
        vision_slots = sizes([n for n, m in modules.items() if n.startswith("model.multi_modal_projector.")
                              and isinstance(m, torch.nn.Linear)])
        self.full: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for name, path in adapters.items():
            adapter = check_adapter(load_peft_adapter(name, path), lm_slots, vision_slots)
            config = LoraConfig.from_pretrained(str(path))
            config.modules_to_save, config.inference_mode = None, True
            config.target_modules = sorted(adapter.lora)
            state = {f"{PEFT_PREFIX}{m}.lora_{ab}.weight": torch.from_numpy(t)
                     for m, (a, b, _) in adapter.lora.items() for ab, t in (("A", a), ("B", b))}
            with _quiet():  # transformers reports every base weight as "missing" from an adapter-only state
                model.load_adapter(adapter_name=name, peft_config=config, adapter_state_dict=state)
            self.full[name] = {m: {k: torch.from_numpy(v) for k, v in w.items()} for m, w in adapter.full.items()}
        self.names = list(adapters)
        self._layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        self._scaling = [dict(layer.scaling) for layer in self._layers]
        touched = {m for full in self.full.values() for m in full}
        self._base = {m: {k: t.detach().clone() for k, t in modules[m].named_parameters()} for m in touched}
        self._modules = modules
        self.activate(())

    def activate(self, mix: Mix) -> None:
        """Make ``mix`` the model's adapter state (``()`` = the base model)."""
        import torch

        if not mix:
            self.model.disable_adapters()
        else:
            self.model.enable_adapters()
            self.model.set_adapter([n for n, _ in mix])
            for layer, base in zip(self._layers, self._scaling, strict=True):
                for name, weight in mix:
                    if name in base:
                        layer.scaling[name] = base[name] * weight
        with torch.no_grad():
            for module, base in self._base.items():
                for kind, value in base.items():
                    delta = sum((w * (self.full[n][module][kind] - value) for n, w in mix
                                 if module in self.full[n]), torch.zeros_like(value))
                    getattr(self._modules[module], kind).copy_(value + delta)


class _quiet:
    """Silence transformers' load report and PEFT's "several adapters" warning (both expected here)."""

    def __enter__(self) -> None:
        import warnings

        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        self._warnings.__exit__(*exc)
        hf_logging.set_verbosity(self._level)
