"""Groundwork for S-SAM (issue 4): singular-value adapters and the LoRA baseline on frozen encoders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_sam_adapt.networks.svd import LoRAAdapter, SVDAdapter, adapt_encoder, count_parameters, merge_adapters
from tests.tiny import tiny_backbone


@pytest.mark.parametrize("name", ["vit_b", "lite_medsam"])
@pytest.mark.parametrize("method", ["svd", "lora"])
def test_identity_at_init_train_merge(name, method):
    torch.manual_seed(0)
    sam = tiny_backbone(name)
    x = torch.rand(1, 3, sam.image_size, sam.image_size)
    with torch.no_grad():
        ref = sam.encode(x)
    adapted = adapt_encoder(sam.image_encoder, method)
    assert adapted and all(isinstance(sam.image_encoder.get_submodule(n), (SVDAdapter, LoRAAdapter)) for n in adapted)
    with torch.no_grad():
        torch.testing.assert_close(sam.encode(x), ref, atol=2e-4, rtol=1e-4)
    trainable = {n for n, p in sam.named_parameters() if p.requires_grad}
    assert trainable and all(
        (
            "A" in n.split(".")[-1]
            or "B" in n.split(".")[-1]
            or "lora" in n
            or "norm" in n
            or "neck" in n
            or "bn" in n
            or "pos" in n
            or "attention_biases" in n
        )
        for n in trainable
    )
    assert not any(p.requires_grad for p in sam.mask_decoder.parameters())
    # one step moves only the intended parameters, and merging gives the same output without adapters
    opt = torch.optim.SGD([p for p in sam.parameters() if p.requires_grad], lr=0.1)
    sam.encode(x).square().mean().backward()
    opt.step()
    with torch.no_grad():
        before = sam.encode(x)
    n = merge_adapters(sam.image_encoder)
    assert n == len(adapted) and not any(isinstance(m, (SVDAdapter, LoRAAdapter)) for m in sam.modules())
    with torch.no_grad():
        torch.testing.assert_close(sam.encode(x), before, atol=2e-4, rtol=1e-4)


def test_full_lite_medsam_share_and_illegal():
    from monai_sam_adapt.sam import FrozenSAM

    sam = FrozenSAM("lite_medsam", checkpoint=None)
    adapt_encoder(sam.image_encoder, "svd")
    report = count_parameters(sam)
    assert report["total"] == 9_791_300 and report["percent"] < 0.5
    with pytest.raises(ValueError, match="method"):
        adapt_encoder(nn.Linear(2, 2), "dora")
    with pytest.raises(TypeError):
        SVDAdapter(nn.LayerNorm(3))
    with pytest.raises(ValueError, match="rank"):
        LoRAAdapter(nn.Linear(2, 2), rank=0)
