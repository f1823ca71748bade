from __future__ import annotations

import pytest
import torch

from monai_sam_adapt.errors import CheckpointError
from monai_sam_adapt.losses import AutoSAMLoss
from monai_sam_adapt.networks import AutoSAM, autosam_lite_medsam
from monai_sam_adapt.sam import EmbeddingCache
from tests.tiny import TINY_ARCH, tiny_backbone

ARCH = TINY_ARCH["vit_b"]


def tiny(num_classes=1, prompt_encoder="head", output="sam", **kw):
    torch.manual_seed(0)
    return AutoSAM(
        "vit_b",
        checkpoint=None,
        num_classes=num_classes,
        prompt_encoder=prompt_encoder,
        output=output,
        **{**ARCH, **kw},
    )


@pytest.mark.parametrize("prompt_encoder", ["head", "cnn"])
@pytest.mark.parametrize("num_classes,output,channels", [(1, "sam", 1), (3, "sam", 3), (2, "h", 2), (2, "both", 4)])
def test_shapes_eval_mode(prompt_encoder, num_classes, output, channels):
    net = tiny(num_classes, prompt_encoder, output).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, channels, 64, 64)


def test_starts_from_sams_no_prompt_embedding():
    net = tiny(2)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        dense = net.dense_prompts(x, net.sam.encode(x))
    expected = net.sam.prompt_encoder.no_mask_embed.weight[0][None, :, None, None].expand(2, -1, 4, 4)
    torch.testing.assert_close(dense[0], expected)


@pytest.mark.parametrize("prompt_encoder", ["head", "cnn"])
def test_gradients_reach_g_only_and_h_is_detached(prompt_encoder):
    net = tiny(2, prompt_encoder, "both").train()
    y = net(torch.rand(2, 3, 64, 64))
    target = (torch.rand(2, 2, 64, 64) > 0.5).float()
    AutoSAMLoss(2)(y, target).backward()
    assert all(p.grad is None for p in net.sam.parameters()), "frozen SAM must receive no gradient"
    assert all(p.grad is not None for p in net.image_prompt_encoder.parameters())
    assert (
        net.image_prompt_encoder.out.weight.grad.abs().sum() > 0
    )  # zero-initialised output: the inner layers follow from step 2
    assert all(p.grad is not None for p in net.surrogate_decoder.parameters())
    # h's loss alone must not move g
    net.zero_grad(set_to_none=True)
    y = net(torch.rand(2, 3, 64, 64))
    AutoSAMLoss(2)(y[:, 2:], target).backward()
    assert all(p.grad is None or not p.grad.any() for p in net.image_prompt_encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.surrogate_decoder.parameters())
    assert not any(m.training for m in net.sam.modules() if m is not net.sam)


def test_illegal_arguments():
    for kw, msg in [
        (dict(num_classes=0), "num_classes"),
        (dict(prompt_encoder="hardnet"), "prompt_encoder"),
        (dict(output="mask"), "output"),
        (dict(output="h", surrogate=False), "surrogate"),
    ]:
        with pytest.raises(ValueError, match=msg):
            AutoSAM("vit_b", checkpoint=None, **{**ARCH, **kw})
    with pytest.raises(ValueError, match="channels"):
        AutoSAMLoss(2)(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))


def test_weights_saved_under_the_old_names_g_h_still_load():
    """Committed AutoSAM weights name g and h ``g.*`` / ``h.*``; they load into ``image_prompt_encoder`` /
    ``surrogate_decoder``."""
    net = tiny(1, output="both")
    torch.nn.init.normal_(net.image_prompt_encoder.out.weight)
    old = {
        k.replace("image_prompt_encoder.", "g.", 1).replace("surrogate_decoder.", "h.", 1): v
        for k, v in net.state_dict().items()
    }
    assert any(k.startswith("g.") for k in old) and any(k.startswith("h.") for k in old)
    other = tiny(1, output="both")
    assert not other.load_state_dict(old).unexpected_keys
    torch.testing.assert_close(other.image_prompt_encoder.out.weight, net.image_prompt_encoder.out.weight)
    for a, b in zip(other.surrogate_decoder.parameters(), net.surrogate_decoder.parameters()):
        torch.testing.assert_close(a, b)


def test_checkpoint_holds_g_and_h_and_refuses_other_backbone(tmp_path):
    net = tiny(1, output="both")
    sd = net.state_dict()
    assert not [k for k in sd if k.startswith("sam.")] and sd["_extra_state"]["backbone"] == "vit_b"
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    other = tiny(1, output="both")
    torch.nn.init.normal_(other.image_prompt_encoder.out.weight)
    other.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(other.image_prompt_encoder.out.weight, net.image_prompt_encoder.out.weight)
    different = AutoSAM("vit_b", checkpoint=None, **{**ARCH, "encoder_depth": 1})
    with pytest.raises(CheckpointError, match="trained on backbone 'vit_b'.*Differs: arch"):
        different.load_state_dict(torch.load(path, weights_only=True))
    lite = AutoSAM(tiny_backbone("lite_medsam"))
    with pytest.raises(CheckpointError, match="this model is AutoSAM on 'lite_medsam'"):
        lite.load_state_dict(torch.load(path, weights_only=True), strict=False)


def test_embedding_cache_hits_misses_and_invalidation(tmp_path):
    sam = tiny_backbone("vit_b")
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return sam.encode(x)

    cache = EmbeddingCache(tmp_path, fingerprint=sam.fingerprint)
    x = torch.rand(3, 3, 64, 64)
    first = cache(x, encode)
    again = cache(x, encode)
    torch.testing.assert_close(first, again)
    with torch.no_grad():
        torch.testing.assert_close(first, sam.encode(x))
    assert calls == [3] and (cache.hits, cache.misses) == (3, 3)
    # one new image in a batch: only it is encoded
    y = x.clone()
    y[1] += 0.01  # e.g. a random augmentation: new bytes, so a miss, never a stale hit
    cache(y, encode)
    assert calls == [3, 1]
    # a fresh process reads the disk entries
    cache2 = EmbeddingCache(tmp_path, fingerprint=sam.fingerprint)
    cache2(x, encode)
    assert calls == [3, 1] and cache2.hits == 3
    # another backbone identity (checkpoint, size) never hits
    cache3 = EmbeddingCache(tmp_path, fingerprint={**sam.fingerprint, "sha256": "other"})
    cache3(x, encode)
    assert calls == [3, 1, 3]
    # a damaged file is a miss and is rewritten
    victim = tmp_path / f"{cache.key(x[0])}.safetensors"
    victim.write_bytes(b"garbage")
    cache4 = EmbeddingCache(tmp_path, fingerprint=sam.fingerprint, max_entries=0)
    cache4(x, encode)
    assert calls[-1] == 1 and len(cache4) == 0
    with pytest.raises(ValueError):
        EmbeddingCache(max_entries=-1)


def test_autosam_uses_cache_and_gives_same_result():
    torch.manual_seed(0)
    net = tiny(1, cache=True).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a = net(x)
        b = net(x)
    assert net.cache.hits == 2 and net.cache.misses == 2
    torch.testing.assert_close(a, b)


def test_factory_parameter_counts():
    head = autosam_lite_medsam(checkpoint=None)
    cnn = autosam_lite_medsam(prompt_encoder="cnn", checkpoint=None)
    n_sam = sum(p.numel() for p in head.sam.parameters())
    for net in (head, cnn):
        g = sum(p.numel() for p in net.image_prompt_encoder.parameters())
        assert g < 1_000_000, "far fewer than the reference HarDNet-85's 41.6 M"
        assert net.trainable_parameters() == g + sum(p.numel() for p in net.surrogate_decoder.parameters())
    assert n_sam > 9_000_000
