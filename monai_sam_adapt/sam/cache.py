"""Cache of frozen image-encoder outputs, keyed by the exact encoder input.

A frozen encoder maps the same input to the same embedding, so an embedding computed in epoch 1 can be reused in
every later epoch. The key is a SHA-1 of the encoder input tensor's bytes (shape and dtype included) together with the
backbone's fingerprint (name, checkpoint SHA-256, architecture) and a ``tag``; it therefore changes with the image
content, the pre-processing (resize, normalisation: both change the bytes) and the backbone. Consequences:

- deterministic pre-processing: every epoch after the first is a hit;
- random augmentation before the encoder: an augmented image has new bytes, so it is a miss and is encoded afresh. A
  stale embedding can never be returned; the cache only stops helping. ``max_entries`` and ``max_bytes`` bound memory.
- a different checkpoint, backbone or size: different key, never a wrong hit.

Entries live in memory (a bounded LRU) and, if ``directory`` is set, on disk as safetensors (written atomically, so
several processes, e.g. DDP ranks, may share a folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """Memory (+ optional disk) cache of frozen-encoder outputs.

    Args:
        directory: folder for ``<key>.safetensors`` files, or ``None`` for memory only. Default ``None``.
        max_entries: in-memory entries kept (least recently used evicted). Default 4096.
        max_bytes: in-memory bytes kept, the same way; ``None``: no bound but ``max_entries``. Default 4 GiB (a
            LiteMedSAM embedding is 4 MiB in float32, so about 1000 entries: 4096 of them, 16 GiB, took a 24 GB
            machine out of memory in a training run; with ``directory`` set the rest are read back from disk).
        fingerprint: what names the encoder (e.g. ``FrozenSAM.fingerprint``); part of every key. Default ``None``.
        tag: extra text in every key (e.g. a pre-processing version). Default ``""``.
        dtype: storage dtype (``torch.float16`` halves memory and disk at a small precision cost). Default float32.

    Example::

        cache = EmbeddingCache("embedding_cache", fingerprint=sam.fingerprint)
        emb = cache(images, sam.encode)     # (B, C, h, w); only the misses go through the encoder
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        max_entries: int = 4096,
        max_bytes: int | None = 4 * 2**30,
        fingerprint: dict[str, Any] | None = None,
        tag: str = "",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}.")
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.max_entries = int(max_entries)
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}.")
        self.max_bytes = max_bytes
        self._bytes = 0
        self.dtype = dtype
        # the key text "identity" is kept so that caches written before the rename stay valid
        self._prefix = json.dumps({"identity": fingerprint, "tag": tag}, sort_keys=True, default=str).encode()
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # requests of a server may come concurrently
        self.hits = 0
        self.misses = 0

    def key(self, x: torch.Tensor) -> str:
        """Key of one encoder input (no batch dimension)."""
        t = x.detach().contiguous().cpu()
        h = hashlib.sha1(self._prefix)
        h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        return h.hexdigest()

    def _get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
        if self.directory is not None:
            path = self.directory / f"{key}.safetensors"
            if path.exists():
                from safetensors.torch import load_file

                try:
                    value = load_file(str(path))["embedding"]
                except Exception:  # noqa: BLE001 - a damaged entry is a miss, recomputed and rewritten
                    return None
                self._remember(key, value)
                return value
        return None

    def _remember(self, key: str, value: torch.Tensor) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            if key not in self._memory:
                self._bytes += value.nelement() * value.element_size()
            self._memory[key] = value
            self._memory.move_to_end(key)
            while self._memory and (
                len(self._memory) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes)
            ):
                _, old = self._memory.popitem(last=False)
                self._bytes -= old.nelement() * old.element_size()

    def _put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", self.dtype).contiguous()
        self._remember(key, value)
        if self.directory is not None:
            from safetensors.torch import save_file

            with atomic_write(self.directory / f"{key}.safetensors") as tmp:
                save_file({"embedding": value}, str(tmp))

    def __call__(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Embeddings of ``images (B, ...)``: cached ones read back, the rest encoded in one batch and stored."""
        keys = [self.key(x) for x in images]
        found = [self._get(k) for k in keys]
        miss = [i for i, f in enumerate(found) if f is None]
        with self._lock:
            self.hits += len(keys) - len(miss)
            self.misses += len(miss)
        if miss:
            with torch.no_grad():
                new = encode(images[miss])
            for j, i in enumerate(miss):
                self._put(keys[i], new[j])
                found[i] = new[j]
        out = torch.stack([f.to(images.device) for f in found])
        return out.to(torch.float32) if out.dtype != torch.float32 else out

    def clear(self, disk: bool = False) -> None:
        """Forget the in-memory entries (and the disk files if ``disk``)."""
        self._memory.clear()
        if disk and self.directory is not None:
            for p in self.directory.glob("*.safetensors"):
                p.unlink()

    def __len__(self) -> int:
        return len(self._memory)

    def __getstate__(self) -> dict:  # DataLoader workers / deepcopy: share nothing big
        d = dict(self.__dict__)
        d["_memory"] = OrderedDict()
        del d["_lock"]
        return d

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
