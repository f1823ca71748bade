"""Issue 15: the frozen encoder (or a whole network) run by ONNX Runtime / OpenVINO / bf16 autocast gives the eager
results; S-SAM adapters are merged before export; new weights trigger a new export; a missing runtime names its
extra. Tiny models here; ``test_real_litemedsam_encoder_exported_equals_eager`` uses the real weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from monai_sam_adapt.errors import InputError
from monai_sam_adapt.runtime import RUNTIMES, RuntimeModule, export_onnx, use_runtime
from tests.tiny import tiny_backbone

EXACT = ("onnxruntime", "openvino")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_SAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.mark.parametrize("backbone", ["vit_b", "lite_medsam"])
def test_every_runtime_gives_the_eager_embedding(backbone):
    sam = tiny_backbone(backbone)
    x = torch.rand(2, 3, sam.image_size, sam.image_size)
    with torch.no_grad():
        ref = sam.encode(x)
        for runtime in RUNTIMES:
            use_runtime(sam, runtime)
            got = sam.encode(x)
            assert got.shape == ref.shape and got.dtype == torch.float32
            tol = 1e-4 if runtime in EXACT or runtime == "torch" else 0.1
            assert float((got - ref).abs().max()) <= tol * float(ref.abs().max()), runtime
    use_runtime(sam, "torch")
    assert sam.encoder_runtime is None


def test_a_collated_batch_of_images_keeps_its_metadata_through_an_exported_encoder():
    """A DataLoader batch (MetaTensor with per-image metadata) through OpenVINO, as AutoSAM training without a cache
    sends it: the output carries the batch's metadata like an eager module's (was a crash on batches over 1)."""
    from monai.data import MetaTensor, list_data_collate

    sam = tiny_backbone("vit_b")
    s = sam.image_size
    items = [{"image": MetaTensor(torch.rand(3, s, s), meta={"filename_or_obj": f"img{i}.png"})} for i in range(3)]
    batch = list_data_collate(items)["image"]
    with torch.no_grad():
        ref = sam.encode(batch)
        use_runtime(sam, "openvino")
        got = sam.encode(batch)
    assert isinstance(got, MetaTensor) and got.is_batch and got.meta["filename_or_obj"] == ref.meta["filename_or_obj"]
    torch.testing.assert_close(got.as_tensor(), ref.as_tensor(), atol=1e-4, rtol=1e-4)


def test_gradients_still_flow_in_training_whatever_the_runtime():
    sam = tiny_backbone("vit_b")
    use_runtime(sam, "openvino")
    sam.image_encoder.requires_grad_(True)
    x = torch.rand(1, 3, sam.image_size, sam.image_size)
    sam.encode(x).sum().backward()  # grad enabled: the eager encoder, not the exported graph
    assert sam.image_encoder.patch_embed.proj.weight.grad is not None


def test_ssam_adapters_are_merged_and_new_weights_are_exported_again(cache):
    from monai_sam_adapt.networks import SSAM
    from tests.tiny import TINY_ARCH

    net = SSAM(
        "vit_b", checkpoint=None, label_names=["a", "b"], text_encoder="label_index", **TINY_ARCH["vit_b"]
    ).eval()
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n.endswith((".A", ".B")):
                p.add_(torch.randn_like(p) * 0.1)  # "trained" singular values
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        use_runtime(net, "onnxruntime")
        got = net(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert len(list(cache.glob("*.onnx"))) == 1
    with torch.no_grad():  # load other weights into the network: the runtime must not serve the old ones
        net.load_state_dict({k: v + 0.05 if k.endswith(".B") else v for k, v in net.state_dict().items()})
        use_runtime(net, "torch")
        ref2 = net(x)
        use_runtime(net, "onnxruntime")
        got2 = net(x)
    torch.testing.assert_close(got2, ref2, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ref2, ref)
    assert len(list(cache.glob("*.onnx"))) == 2


def test_a_network_without_sam_runs_whole_and_still_loads_checkpoints():
    from monai.networks.nets import UNet

    unet = UNet(2, 3, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = unet(x)
        fast = use_runtime(unet, "openvino")
        torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4)
        other = UNet(2, 3, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
        fast.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x), other(x), rtol=1e-4, atol=1e-4)
    assert set(fast.state_dict()) == set(unet.state_dict())


def test_unknown_runtime_and_missing_extra_are_named(monkeypatch):
    sam = tiny_backbone("vit_b")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'.*openvino"):
        use_runtime(sam, "tensorrt")
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    use_runtime(sam, "openvino")
    with torch.no_grad(), pytest.raises(InputError, match=r"pip install 'monai_sam_adapt\[openvino\]'"):
        sam.encode(torch.rand(1, 3, 64, 64))


def test_exported_file_is_reused_and_written_atomically(cache):
    enc = tiny_backbone("vit_b").image_encoder
    x = torch.rand(1, 3, 64, 64)
    first = export_onnx(enc, x)
    mtime = first.stat().st_mtime_ns
    assert export_onnx(copy.deepcopy(enc), x) == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary left beside it


def test_bundle_runtime_key_gives_the_same_masks(polyp_folder, tmp_path):
    from PIL import Image

    from monai_sam_adapt.data import kvasir_datalist, write_datalist
    from tests.bundles.helpers import run_workflow, tiny_network_override

    dl = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    net = tiny_network_override("monai_sam_adapt.networks.PromptedSAM", backbone="vit_b")
    common = dict(dataset_dir=str(polyp_folder), datalist=str(dl), num_workers=0, model_path=None, **net)
    masks = {}
    for runtime in ("torch", "openvino"):
        run_workflow("boxsam_kvasir", "inference.json", output_dir=str(tmp_path / runtime), runtime=runtime, **common)
        masks[runtime] = {p.name: np.asarray(Image.open(p)) for p in sorted((tmp_path / runtime).rglob("*.png"))}
    assert masks["torch"] and masks["torch"].keys() == masks["openvino"].keys()
    for name, m in masks["torch"].items():
        assert (m == masks["openvino"][name]).mean() > 0.995, name


@pytest.mark.integration
def test_real_litemedsam_encoder_exported_equals_eager():
    from monai_sam_adapt.sam import FrozenSAM
    from monai_sam_adapt.transforms import LoadMedicalImaged, SAMPreprocessd
    from tests.conftest import data_path

    image = sorted((data_path("kvasir_seg") / "images").glob("*.jpg"))[0]
    d = LoadMedicalImaged("image")({"image": str(image)})
    x = SAMPreprocessd("image", backbone="lite_medsam")(d)["image"].as_tensor()[None]
    sam = FrozenSAM()
    with torch.no_grad():
        ref = sam.encode(x)
        for runtime in EXACT:
            use_runtime(sam, runtime)
            got = sam.encode(x)
            assert float((got - ref).abs().max()) < 1e-3 * float(ref.abs().max()), runtime
            assert isinstance(sam.encoder_runtime, RuntimeModule)


@pytest.mark.integration
def test_exported_ssam_glas_encoder_equals_the_trained_adapted_encoder(tmp_path):
    """The documented export command on a bundle with trained S-SAM adapters: the ONNX file (adapters merged) gives
    the eager adapted encoder's embedding on a real GlaS image."""
    import onnxruntime as ort
    from ignite.handlers import Checkpoint

    from monai_sam_adapt.bundle import config_parser
    from monai_sam_adapt.runtime import main
    from monai_sam_adapt.sam.checkpoint import read_checkpoint
    from monai_sam_adapt.transforms import LoadMedicalImaged, SAMPreprocessd
    from tests.bundles.helpers import REPO
    from tests.conftest import data_path

    out = tmp_path / "ssam_glas_encoder.onnx"
    main([str(REPO / "bundles" / "ssam_glas"), "-o", str(out)])
    image = data_path("glas") / "testA_1.png"
    d = LoadMedicalImaged("image")({"image": str(image)})
    x = SAMPreprocessd("image", backbone="lite_medsam")(d)["image"].as_tensor()[None]
    parser = config_parser(REPO / "bundles" / "ssam_glas", "inference.json", device="$torch.device('cpu')")
    net = parser.get_parsed_content("network")
    state = read_checkpoint(REPO / "bundles" / "ssam_glas" / "models" / "model.pt")
    Checkpoint.load_objects(to_load={"model": net}, checkpoint=state)
    with torch.no_grad():
        ref = net.eval().sam.image_encoder(x)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert float((got - ref).abs().max()) < 1e-3 * float(ref.abs().max())


def test_a_network_with_a_runtime_still_saves_its_checkpoint():
    """Training checkpoints pickle the state dict (with each module's metadata): the compiled runtime must not ride
    along (it did once, through a method that shadowed nn.Module's ``_version``)."""
    import io

    sam = tiny_backbone("vit_b")
    use_runtime(sam, "openvino")
    with torch.no_grad():
        sam.encode(torch.rand(1, 3, 64, 64))
    torch.save(sam.state_dict(), io.BytesIO())
