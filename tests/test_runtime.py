"""Issue 15: the frozen encoder (or a whole network) run by ONNX Runtime / OpenVINO / bf16 autocast gives the eager
results; S-SAM adapters are merged before export; new weights trigger a new export; a missing runtime names its
extra. Tiny models here; ``test_real_litemedsam_encoder_exported_equals_eager`` uses the real weights."""

from __future__ import annotations

import copy
from pathlib import Path

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
            if runtime == "openvino-int8":  # needs a calibration first: its own test below
                continue
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


# ---------------------------------------------------------------------- whole networks in one exported graph
def _tiny_networks():
    from monai_sam_adapt.networks import SSAM, AutoSAM, AutoSAMEnsemble, PromptedSAM
    from tests.tiny import TINY_ARCH

    arch = TINY_ARCH["vit_b"]
    torch.manual_seed(0)
    ssam = SSAM("vit_b", checkpoint=None, label_names=["a", "b"], text_encoder="label_index", **arch)
    auto = AutoSAM("vit_b", checkpoint=None, prompt_encoder="cnn", output="both", **arch)
    ens = AutoSAMEnsemble(
        [{"prompt_encoder": "cnn"}, {"prompt_encoder": "cnn", "input_side": 128}], "vit_b", None, **arch
    )
    for net in (ssam, auto, ens):  # "trained": g's output layer and S-SAM's singular values away from their start
        with torch.no_grad():
            for p in net.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
    box = {"boxes": torch.tensor([[[8.0, 10.0, 40.0, 50.0]], [[4.0, 4.0, 30.0, 20.0]]])}
    return {
        "ssam": (ssam, 64, {}),
        "autosam": (auto, 64, {}),
        "ensemble": (ens, 128, {}),
        "boxes": (PromptedSAM("vit_b", checkpoint=None, **arch), 64, box),
    }


@pytest.mark.parametrize("name", ["ssam", "autosam", "ensemble", "boxes"])
def test_exportable_networks_run_whole_in_one_graph_with_the_eager_logits(name, cache):
    """AutoSAM (g, decoder, h), its two-g ensemble, S-SAM (merged adapters, label prompts) and box-prompted SAM:
    one exported graph from image (and boxes) to logits; nothing of the network runs eagerly after the export."""
    from monai_sam_adapt.runtime import _WholeNetwork

    net, side, kw = _tiny_networks()[name]
    net.eval()
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        ref = net(x, **kw)
        fast = use_runtime(net, "openvino")
        assert isinstance(fast, _WholeNetwork)
        got = fast(x, **kw)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        assert len(list(cache.glob("*.onnx"))) == 1  # the whole network, not its encoder apart

        def eager(*a, **k):
            raise AssertionError("the eager network ran")

        net.forward = eager  # the exported graph alone serves the next batch
        torch.testing.assert_close(fast(x, **kw), ref, rtol=1e-4, atol=1e-4)
    assert set(fast.state_dict()) == set(net.state_dict())


def test_calls_the_graph_cannot_serve_run_eagerly_with_the_encoder_in_the_runtime(cache):
    """S-SAM asked for other label names, and AutoSAM with its cascade (boxes from its first masks), are not one
    static graph: they run the network, whose encoder still uses the runtime."""
    from monai_sam_adapt.networks import AutoSAM
    from monai_sam_adapt.runtime import RuntimeModule

    nets = _tiny_networks()
    ssam = nets["ssam"][0].eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = ssam(x, labels=["b"])
        fast = use_runtime(ssam, "openvino")
        torch.testing.assert_close(fast(x, labels=["b"]), ref, rtol=1e-4, atol=1e-4)
    assert isinstance(ssam.sam.encoder_runtime, RuntimeModule)
    cascade = AutoSAM("vit_b", checkpoint=None, prompt_encoder="cnn", cascade="box", **_arch()).eval()
    assert use_runtime(cascade, "openvino") is cascade and isinstance(cascade.sam.encoder_runtime, RuntimeModule)


def _arch():
    from tests.tiny import TINY_ARCH

    return TINY_ARCH["vit_b"]


def test_an_export_is_named_by_the_settings_that_change_its_graph(cache):
    """Two AutoSAMs with the same weights but another ``output`` must not share an export (the cache is keyed by
    weights, input shapes and settings)."""
    from monai_sam_adapt.networks import AutoSAM

    torch.manual_seed(1)
    a = AutoSAM("vit_b", checkpoint=None, prompt_encoder="cnn", output="sam", **_arch()).eval()
    b = AutoSAM("vit_b", checkpoint=None, prompt_encoder="cnn", output="h", **_arch()).eval()
    b.load_state_dict(a.state_dict())
    b.sam.load_state_dict(a.sam.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        refs = [a(x), b(x)]
        for net, ref in zip((a, b), refs):
            torch.testing.assert_close(use_runtime(net, "openvino")(x), ref, rtol=1e-4, atol=1e-4)
    assert len(list(cache.glob("*.onnx"))) == 2


def test_int8_is_calibrated_on_recorded_inputs_and_quantizes_the_encoder_only(cache):
    """``openvino-int8``: without a quantized model it says which command makes one; inside ``calibrating`` the network
    records its inputs; ``quantize_onnx`` writes the int8 model (the encoder's layers quantized, the rest fp32), which
    the runtime then runs, close to the eager logits."""
    pytest.importorskip("nncf")
    import openvino as ov

    from monai_sam_adapt.runtime import calibrating, int8_path, quantize_onnx

    net, side, _ = _tiny_networks()["autosam"]
    net.eval()
    x = torch.rand(1, 3, side, side)
    with torch.no_grad():
        ref = net(x)
        with pytest.raises(InputError, match="python -m monai_sam_adapt.runtime quantize"):
            use_runtime(net, "openvino-int8")(x)
        with calibrating(samples=4) as recorded:
            fast = use_runtime(net, "openvino-int8")
            for _ in range(6):
                fast(torch.rand(1, 3, side, side))
        ((path, store),) = recorded.items()
        assert store.seen == 6 and len(store.items) == 4 and store.items[0][0].shape == (1, 3, side, side)
        out = quantize_onnx(path, store.items)
        assert out == int8_path(path) and out.with_suffix(".bin").is_file()
        ops = ov.Core().read_model(str(out)).get_ops()
        fq = [op.get_friendly_name() for op in ops if op.get_type_name() == "FakeQuantize"]
        assert fq and all(n.startswith("image_encoder/") for n in fq)
        got = use_runtime(net, "openvino-int8")(x)
    assert got.shape == ref.shape
    assert float(((got > 0) == (ref > 0)).float().mean()) > 0.9


def test_a_bundle_is_quantized_on_its_training_items_then_runs_in_int8(polyp_folder, tmp_path, cache):
    """``python -m monai_sam_adapt.runtime quantize``'s function on a bundle (tiny box-prompted SAM): calibration
    reads only the datalist's training items, the int8 model lands in the export cache, and the bundle's inference
    with ``--runtime openvino-int8`` then writes its masks."""
    pytest.importorskip("nncf")
    from monai_sam_adapt.data import kvasir_datalist, write_datalist
    from monai_sam_adapt.runtime import quantize_bundle
    from tests.bundles.helpers import REPO, run_workflow, tiny_network_override

    lists = kvasir_datalist(polyp_folder)
    lists["training"] = lists["training"][:2]
    dl = write_datalist(lists, tmp_path / "dl.json")
    net = tiny_network_override("monai_sam_adapt.networks.PromptedSAM", backbone="vit_b")
    read = []
    from monai_sam_adapt.transforms import LoadMedicalImaged

    real = LoadMedicalImaged.__call__

    def spy(self, data, *a, **k):
        read.append(str(data.get("image")))
        return real(self, data, *a, **k)

    LoadMedicalImaged.__call__ = spy
    try:
        written = quantize_bundle(
            REPO / "bundles" / "boxsam_kvasir", polyp_folder, dl, num_images=5, samples=4, model_path=None, **net
        )
    finally:
        LoadMedicalImaged.__call__ = real
    assert len(written) == 1 and written[0].parent == cache and written[0].suffixes == [".int8", ".xml"]
    train = {Path(polyp_folder, d["image"]).name for d in lists["training"]}
    assert read and {Path(r).name for r in read} <= train  # validation and test images are never read
    out = tmp_path / "int8"
    common = dict(dataset_dir=str(polyp_folder), datalist=str(dl), num_workers=0, model_path=None, **net)
    run_workflow("boxsam_kvasir", "inference.json", output_dir=str(out), runtime="openvino-int8", **common)
    assert len(list(out.rglob("*.png"))) == len(lists["testing"])
