"""The OpenVINO engine for LLaVA-NeXT exports: AnyRes tiles, one vision batch per image, packing in NumPy.

Everything else (tokenizing, KV-prefix reuse, the feature cache, the decode
loop) is :class:`~llavakit.runtime.ov_backend.OpenVINOBackend`'s; only what
differs per image is overridden:

- ``prepare``: each image becomes ``(1 + rows*cols, 3, S, S)`` tiles
  (:class:`~llavakit.runtime.anyres.AnyResProcessor`) and takes as many prompt
  positions as transformers' ``LlavaNextProcessor`` gives it — a number that
  depends on its size, so it is counted per image instead of once per model.
- ``_image_features``: all tiles of an image go through the vision IR as one
  batch; :func:`~llavakit.runtime.anyres.pack_features` then lays out base tile,
  unpadded grid and ``image_newline`` (read from ``config.json``, where GenAI
  reads it too). Features are cached by pixels *and* original size, since the
  unpadding depends on the size.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from llavakit.errors import ModelLoadError, PromptError
from llavakit.export import layout
from llavakit.runtime.anyres import AnyResProcessor
from llavakit.runtime.image_processing import load_processor_config
from llavakit.runtime.ov_backend import IMAGE_CACHE_SIZE, OpenVINOBackend, OVPrompt


def is_llava_next_export(model_dir: Path) -> bool:
    """Whether an exported directory holds a LLaVA-NeXT (its config says so; names never decide)."""
    config = json.loads((Path(model_dir) / layout.CONFIG).read_text())
    return config.get("model_type") == "llava_next"


class LlavaNextOpenVINOBackend(OpenVINOBackend):
    """OpenVINOBackend with AnyRes images."""

    def __init__(self, model_dir: Path, device: str | None = None, properties: dict | None = None,
                 precise: bool = False) -> None:
        super().__init__(model_dir, device=device, properties=properties, precise=precise)
        config = json.loads((Path(model_dir) / layout.CONFIG).read_text())
        vision = config.get("vision_config", {})
        if "image_newline" not in config:
            raise ModelLoadError(f"{model_dir}/config.json has no image_newline: re-export it with llavakit export")
        self.newline = np.asarray(config["image_newline"], dtype=np.float32)  # (D,)
        strategy = config.get("vision_feature_select_strategy", "default")
        has_cls = vision.get("model_type", "clip_vision_model").startswith("clip")
        self.drop_cls = strategy == "default"
        self.anyres = AnyResProcessor.from_config(load_processor_config(model_dir), int(vision.get("patch_size", 14)),
                                                  extra_tokens=1 if has_cls else 0)
        self._sizes: dict[str, tuple[int, int]] = {}

    def _load_image_processor(self, model_dir: Path) -> None:
        """Tiles come from ``self.anyres`` (set up after the base class has loaded the models)."""
        return None

    def prepare(self, messages: list[dict], images: list[Image.Image]) -> OVPrompt:
        ids = self.tokenize(self.render(messages))
        n_tags = sum(1 for t in ids if t == self.image_token_id)
        if n_tags != len(images):
            raise PromptError(f"the rendered prompt has {n_tags} image token(s) but {len(images)} image(s) were given")
        pixels = [self.anyres(im) for im in images]  # each (N_tiles, 3, S, S)
        digests = []
        for im, p in zip(images, pixels):
            digest = hashlib.sha1(p.tobytes() + f"{im.height}x{im.width}".encode()).hexdigest()
            self._sizes[digest] = (im.height, im.width)
            digests.append(digest)
        prompt = OVPrompt(ids, pixels, digests)
        images_seen = 0
        for token in ids:
            if token == self.image_token_id:
                height, width = self._sizes[digests[images_seen]]
                count = self.anyres.num_image_tokens(height, width, self.drop_cls)
                prompt.keys += [(digests[images_seen], j) for j in range(count)]
                images_seen += 1
            else:
                prompt.keys.append(token)
        return prompt

    def features_per_image(self) -> int:
        """Not one number for LLaVA-NeXT: it depends on each image's size (see ``num_image_tokens``)."""
        raise NotImplementedError("LLaVA-NeXT image positions depend on the image size; use anyres.num_image_tokens")

    def _image_features(self, pixels: np.ndarray, digest: str) -> np.ndarray:
        if digest in self._features:
            self._features.move_to_end(digest)
            return self._features[digest]
        begin = time.perf_counter()
        tiles = self._vision(pixels)[0]  # (N_tiles, P, D): every tile of the image in one batch
        height, width = self._sizes[digest]
        features = pack_for(self.anyres, tiles, height, width, self.newline)  # (T_image, D)
        self.image_encode_s += time.perf_counter() - begin
        self._features[digest] = features
        if len(self._features) > IMAGE_CACHE_SIZE:
            self._features.popitem(last=False)
        return features


def pack_for(anyres: AnyResProcessor, tiles: np.ndarray, height: int, width: int, newline: np.ndarray) -> np.ndarray:
    """Pack one image's tile features (the engine's and the benchmark's shared step)."""
    from llavakit.runtime.anyres import pack_features

    return pack_features(tiles, height, width, anyres.grid(height, width), newline)
