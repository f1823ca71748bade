"""Parameter-efficient adaptation of a frozen image encoder: S-SAM's singular-value tuning and a LoRA baseline.

S-SAM (Paranjape et al., https://arxiv.org/abs/2408.06447): every adapted weight ``W = U diag(s) V^T`` becomes
``U diag(ReLU(A * s + B)) V^T`` with trainable ``A`` (init 1) and ``B`` (init 0), so the adapted encoder equals the
frozen
one at initialisation. The decomposition is computed once (buffers), never per step; ``merge_adapters`` folds the
adapted weights back into plain layers for inference.

LoRA (Hu et al., https://arxiv.org/abs/2106.09685; SAMed applies it to SAM): ``W + (alpha / r) * B A`` with ``B`` = 0 at
init, on the same layers, so the comparison is in-house.

Works on any registry encoder: SAM ViT (qkv, proj, MLP linears, patch embedding and neck convolutions) and LiteMedSAM's
TinyViT (its linears and convolutions).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRAAdapter", "SVDAdapter", "adapt_encoder", "count_parameters", "merge_adapters"]


def _conv_kwargs(layer: nn.Conv2d) -> dict:
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)


class _Adapter(nn.Module):
    """Common part: holds the frozen layer's kind, shape and bias; ``weight()`` gives the adapted weight."""

    def __init__(self, layer: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"only nn.Linear and nn.Conv2d can be adapted, got {type(layer).__name__}.")
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise ValueError("only zero-padded convolutions can be adapted.")
        self.is_conv = isinstance(layer, nn.Conv2d)
        self.conv_kwargs = _conv_kwargs(layer) if self.is_conv else {}
        self.weight_shape = tuple(layer.weight.shape)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        if self.is_conv:
            return F.conv2d(x, w, self.bias, **self.conv_kwargs)
        return F.linear(x, w, self.bias)

    def merged(self) -> nn.Module:
        """A plain ``nn.Linear``/``nn.Conv2d`` with the adapted weight (frozen), costing nothing extra at inference."""
        w = self.weight().detach()
        if self.is_conv:
            out, inp_g, kh, kw = w.shape
            layer = nn.Conv2d(
                inp_g * self.conv_kwargs["groups"], out, (kh, kw), bias=self.bias is not None, **self.conv_kwargs
            )
        else:
            layer = nn.Linear(w.shape[1], w.shape[0], bias=self.bias is not None)
        layer = layer.to(device=w.device, dtype=w.dtype)
        layer.weight.data.copy_(w)
        if self.bias is not None:
            layer.bias.data.copy_(self.bias)
        return layer.requires_grad_(False)


class SVDAdapter(_Adapter):
    """S-SAM's singular-value tuning of one frozen layer: ``U diag(ReLU(A * s + B)) V^T``.

    Args:
        layer: the frozen ``nn.Linear`` or ``nn.Conv2d`` (a convolution's weight is decomposed as ``out x (in*k*k)``).
    """

    def __init__(self, layer: nn.Linear | nn.Conv2d) -> None:
        super().__init__(layer)
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1).float()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # once; identity at init to float32 tolerance
        dtype = layer.weight.dtype
        self.register_buffer("U", u.to(dtype))
        self.register_buffer("S", s.to(dtype))
        self.register_buffer("Vh", vh.to(dtype))
        self.A = nn.Parameter(torch.ones_like(self.S))
        self.B = nn.Parameter(torch.zeros_like(self.S))

    def weight(self) -> torch.Tensor:
        s = F.relu(self.A * self.S + self.B)
        return ((self.U * s) @ self.Vh).reshape(self.weight_shape)


class LoRAAdapter(_Adapter):
    """LoRA on one frozen layer: ``W + (alpha / rank) * B A`` (``B`` = 0 at init).

    Args:
        layer: the frozen ``nn.Linear`` or ``nn.Conv2d``.
        rank: rank of the update. Default 4.
        alpha: scale numerator. Default ``rank`` (scale 1).
    """

    def __init__(self, layer: nn.Linear | nn.Conv2d, rank: int = 4, alpha: float | None = None) -> None:
        super().__init__(layer)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}.")
        self.register_buffer("W", layer.weight.detach().clone())
        out, inp = self.weight_shape[0], int(math.prod(self.weight_shape[1:]))
        self.lora_A = nn.Parameter(torch.empty(rank, inp, dtype=layer.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out, rank, dtype=layer.weight.dtype))
        self.scale = (alpha if alpha is not None else rank) / rank

    def weight(self) -> torch.Tensor:
        return self.W + self.scale * (self.lora_B @ self.lora_A).reshape(self.weight_shape)


def _norm_like(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)) or type(m).__name__ == "LayerNorm2d"


def adapt_encoder(
    encoder: nn.Module,
    method: str = "svd",
    rank: int = 4,
    select: Callable[[str, nn.Module], bool] | None = None,
    train_norms: bool = True,
    train_pos_embed: bool = True,
) -> list[str]:
    """Replace the encoder's ``nn.Linear``/``nn.Conv2d`` layers by adapters, in place; freeze everything else except
    norm layers' affine parameters and the positional embedding (S-SAM trains those too).

    Args:
        encoder: a frozen image encoder (``FrozenSAM.image_encoder``).
        method: ``"svd"`` (S-SAM) or ``"lora"``. Default ``"svd"``.
        rank: LoRA rank. Default 4.
        select: ``(name, layer) -> bool`` choosing layers; default every Linear and Conv2d.
        train_norms: train norm layers' weights and biases (running statistics stay frozen). Default ``True``.
        train_pos_embed: train the absolute positional embedding (SAM ViT's ``pos_embed``) or, for TinyViT, which
            has none, its attention biases. SAM ViT's relative position tables stay frozen: with them a SAM ViT-B
            S-SAM with a CLIP Text Affine Layer would train 0.53% of SAM instead of 0.49%. Default ``True``.

    Returns the names of the adapted layers.
    """
    if method not in ("svd", "lora"):
        raise ValueError(f"method must be 'svd' or 'lora', got {method!r}.")
    encoder.requires_grad_(False)
    chosen = [
        (n, m)
        for n, m in encoder.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and (select is None or select(n, m))
    ]
    if not chosen:
        raise ValueError("no nn.Linear / nn.Conv2d layer selected for adaptation.")
    for name, layer in chosen:
        parent = encoder.get_submodule(name.rsplit(".", 1)[0]) if "." in name else encoder
        adapter = SVDAdapter(layer) if method == "svd" else LoRAAdapter(layer, rank)
        setattr(parent, name.rsplit(".", 1)[-1], adapter.to(layer.weight.device))
    if train_norms:
        for m in encoder.modules():
            if _norm_like(m):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)
    if train_pos_embed:
        for n, p in encoder.named_parameters():
            if n.split(".")[-1] in ("pos_embed", "attention_biases"):
                p.requires_grad_(True)
    return [n for n, _ in chosen]


def merge_adapters(module: nn.Module) -> int:
    """Fold every adapter below ``module`` into a plain frozen layer, in place; returns how many were merged."""
    names = [n for n, m in module.named_modules() if isinstance(m, _Adapter)]
    for name in names:
        parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        setattr(parent, name.rsplit(".", 1)[-1], module.get_submodule(name).merged())
    return len(names)


def count_parameters(module: nn.Module, reference: nn.Module | None = None) -> dict[str, float]:
    """Trainable and total parameters (adapter buffers U, S, V count as the frozen weights they replace), and the
    trainable share of ``reference`` (e.g. the whole SAM) in percent."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    ref = reference if reference is not None else module
    adapters = [m for m in ref.modules() if isinstance(m, _Adapter)]
    adapter_params = {id(p) for m in adapters for p in m.parameters()}
    total = sum(p.numel() for p in ref.parameters() if id(p) not in adapter_params)
    total += sum(int(math.prod(m.weight_shape)) + (0 if m.bias is None else m.bias.numel()) for m in adapters)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}
