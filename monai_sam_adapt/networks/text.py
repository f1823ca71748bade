"""Label names as prompts: a frozen text encoder turns each name into a feature; a trainable Text Affine Layer turns
that
feature into one sparse prompt token of the frozen SAM mask decoder (S-SAM, https://arxiv.org/abs/2408.06447).

Two text encoders:

- :class:`CLIPTextEncoder`: the text tower of an ``open_clip`` model loaded from a local checkpoint file the user names
  (``open_clip`` takes a file path as ``pretrained``; nothing is ever downloaded).
- :class:`LabelIndexEncoder`: the documented offline choice when no CLIP weights are at hand. Each label name is
  only an identifier: it gets a one-hot vector, so the Text Affine Layer learns one free prompt token per label. It
  claims no language understanding (a fixed random "text tower" would pretend to read names and generalise to
  synonyms while it only hashes them); results with it measure the segmentation path alone, and a name outside the
  training labels is an error, as with CLIP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnknownLabelError
from ..sam.checkpoint import file_sha256

__all__ = [
    "CLIPTextEncoder",
    "LabelIndexEncoder",
    "TextAffineLayer",
    "UnknownLabelError",
    "build_text_encoder",
    "check_label_names",
    "validate_label_names",
]


def validate_label_names(label_names: Any) -> list[str]:
    """The label names a model is built for, checked: a list of distinct, non-empty strings. A bare string is refused
    (``"gland"`` would otherwise become five labels, one per letter), as is an empty list."""
    if isinstance(label_names, (str, bytes)):
        raise ValueError(f"label_names must be a list of names, got the string {label_names!r}: use [{label_names!r}].")
    names = list(label_names) if isinstance(label_names, (list, tuple)) else None
    if not names:
        raise ValueError(f"label_names must name at least one label, got {label_names!r}.")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"label_names must be non-empty strings, got {bad} in {names}.")
    if len(set(names)) != len(names):
        raise ValueError(f"label_names must be distinct, got {names}.")
    return names


def check_label_names(asked: Sequence[str], known: Sequence[str]) -> list[int]:
    """Indices of ``asked`` in ``known``; an unknown name raises :class:`UnknownLabelError` listing the known ones."""
    unknown = [n for n in asked if n not in known]
    if unknown:
        raise UnknownLabelError(f"unknown label name(s) {unknown}; this model knows {list(known)}.")
    return [list(known).index(n) for n in asked]


class LabelIndexEncoder(nn.Module):
    """Offline text encoder: one-hot vectors over a fixed list of label names (see the module docstring for why).

    Args:
        label_names: the names, in label-value order.
    """

    def __init__(self, label_names: Sequence[str]) -> None:
        super().__init__()
        self.label_names = validate_label_names(label_names)
        self.output_dim = len(self.label_names)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"text_encoder": "label_index", "labels": self.label_names}

    @torch.no_grad()
    def forward(self, names: Sequence[str]) -> torch.Tensor:
        idx = torch.tensor(check_label_names(names, self.label_names))
        return torch.nn.functional.one_hot(idx, self.output_dim).float()


class CLIPTextEncoder(nn.Module):
    """The frozen text tower of an ``open_clip`` model, from a local checkpoint file.

    Args:
        checkpoint: path of the ``open_clip`` checkpoint (``.pt``/``.bin``/``.safetensors``; loaded by open_clip with
            ``weights_only=True``). Never downloaded.
        model_name: the open_clip architecture name, e.g. ``"ViT-B-32"``. Default ``"ViT-B-32"``.
        model_config: optional path of a model-config JSON (architectures open_clip does not list); its file stem
            becomes the model name.

    Features are L2-normalised, as CLIP compares them.
    """

    def __init__(
        self, checkpoint: str | os.PathLike, model_name: str = "ViT-B-32", model_config: str | os.PathLike | None = None
    ) -> None:
        super().__init__()
        import open_clip

        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(
                f"CLIP text encoder checkpoint {str(path)!r} does not exist (no weights are ever "
                "downloaded): name a local open_clip checkpoint file, or use the offline "
                "LabelIndexEncoder (text_encoder=None)."
            )
        if model_config is not None:
            cfg = Path(model_config)
            try:
                json.loads(cfg.read_text())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"open_clip model config {str(cfg)!r} is not a readable JSON file: {e}") from e
            open_clip.add_model_config(cfg)
            model_name = cfg.stem
        try:
            model = open_clip.create_model(model_name, pretrained=str(path), weights_only=True)
        except RuntimeError as e:  # state-dict mismatch
            raise CheckpointError(f"{str(path)!r} is not an open_clip {model_name!r} checkpoint: {e}") from e
        model.visual = None  # only the text tower is used
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model_name, self.checkpoint_path, self.checkpoint_sha256 = model_name, str(path), file_sha256(path)
        self.output_dim = (
            int(model.text_projection.shape[1])
            if getattr(model, "text_projection", None) is not None
            else int(model.transformer.width)
        )

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"text_encoder": "open_clip", "model_name": self.model_name, "sha256": self.checkpoint_sha256}

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        return super().train(False)  # frozen: always eval

    @torch.no_grad()
    def forward(self, names: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        feats = self.model.encode_text(self.tokenizer(list(names)).to(device))
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def build_text_encoder(
    label_names: Sequence[str], text_encoder: nn.Module | dict | str | os.PathLike | None = None
) -> nn.Module:
    """``None`` -> :class:`LabelIndexEncoder`; a path -> :class:`CLIPTextEncoder` (ViT-B-32); a dict -> its keyword
    arguments; a module is returned as it is."""
    if text_encoder is None:
        return LabelIndexEncoder(label_names)
    if isinstance(text_encoder, nn.Module):
        return text_encoder
    if isinstance(text_encoder, dict):
        return CLIPTextEncoder(**text_encoder)
    return CLIPTextEncoder(text_encoder)


class TextAffineLayer(nn.Module):
    """S-SAM's Text Affine Layer: text feature ``(K, D)`` -> one sparse prompt token per label ``(K, 1, C)``.

    Args:
        in_features: text feature size D.
        embed_dim: prompt token size C of the mask decoder.
    """

    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim)

    def forward(self, text_features: torch.Tensor) -> torch.Tensor:
        return self.proj(text_features)[:, None, :]
