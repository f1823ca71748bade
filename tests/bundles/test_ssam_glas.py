"""ssam_glas: train -> resume -> evaluate -> inference on a tiny S-SAM, adapter-only checkpoints, DDP with 2 CPU
processes, and the LoRA baseline through the same config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from PIL import Image

from monai_sam_adapt.data import kvasir_datalist, write_datalist
from tests.bundles.helpers import REPO, chain, read_metrics, run_ddp_training, run_workflow, tiny_network_override

BUNDLE = "ssam_glas"


def tiny(method="svd", **extra):
    return tiny_network_override("monai_sam_adapt.networks.SSAM", label_names=["gland"], method=method, **extra)


@pytest.mark.parametrize("method", ["svd", "lora"])
def test_train_evaluate_infer_tiny(polyp_folder, tmp_path, method):
    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    run_dir, models = tmp_path / "run", tmp_path / "models"
    common = dict(dataset_dir=str(polyp_folder), datalist=str(datalist), num_workers=0)
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(run_dir),
        ckpt_dir=str(models),
        max_epochs=2,
        val_interval=1,
        **common,
        **tiny(method),
    )
    model = models / "model.pt"
    sd = torch.load(model, weights_only=True)
    extra = sd.pop("_extra_state")
    assert extra["method"] == "SSAM" and extra["adaptation"]["method"] == method and extra["labels"] == ["gland"]
    names = {k.split(".")[-1] for k in sd}
    expected = {"A", "B"} if method == "svd" else {"lora_A", "lora_B"}
    assert expected <= names and not {"U", "S", "Vh", "W"} & names  # trained tensors only
    assert list((run_dir / "checkpoints").glob("checkpoint_epoch=2.pt")), "resumable checkpoint per epoch"
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard logs"
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(run_dir),
        ckpt_dir=str(models),
        max_epochs=3,
        val_interval=1,
        resume_from=str(next((run_dir / "checkpoints").glob("*.pt"))),
        **common,
        **tiny(method),
    )
    assert list((run_dir / "checkpoints").glob("checkpoint_epoch=3.pt"))

    ev = tmp_path / "eval"
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(ev), model_path=str(model), **common, **tiny(method))
    assert {"val_mean_dice", "val_hd95", "val_mean_iou"} <= set(read_metrics(ev / "metrics.csv"))
    assert (ev / "overlays.png").exists()

    dl = kvasir_datalist(polyp_folder)
    for e in dl["testing"]:
        e.pop("label")
    images_only = write_datalist(dl, tmp_path / "images_only.json")
    pred = tmp_path / "pred"
    run_workflow(
        BUNDLE,
        "inference.json",
        output_dir=str(pred),
        model_path=str(model),
        **{**common, "datalist": str(images_only)},
        **tiny(method),
    )
    for name in ("case4", "case5"):
        mask = np.asarray(Image.open(pred / "images" / f"{name}.png"))
        src = Image.open(polyp_folder / "images" / f"{name}.png")
        assert mask.shape == (src.height, src.width)

    # weights of one adaptation are refused by the other, with the reason
    other = "lora" if method == "svd" else "svd"
    with pytest.raises(Exception) as e:
        run_workflow(
            BUNDLE, "evaluate.json", output_dir=str(tmp_path / "ev2"), model_path=str(model), **common, **tiny(other)
        )
    assert "Differs: adaptation" in chain(e.value)


def test_tiled_input_size_and_init_from_tiny(polyp_folder, tmp_path):
    """input_size > the network's side: training on random network-sized crops, validation/evaluation/inference by
    sliding windows (under the symmetries), masks back on the source grid; init_from starts from an adapter."""
    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    side = tiny()["image_size"]
    common = dict(dataset_dir=str(polyp_folder), datalist=str(datalist), num_workers=0, input_size=2 * side, **tiny())
    first = tmp_path / "first"
    wf = run_workflow(
        BUNDLE, "train.json", output_dir=str(tmp_path / "r1"), ckpt_dir=str(first), max_epochs=1, **common
    )
    crop = wf.parser.get_parsed_content("train#dataset")[0]
    assert tuple(crop["image"].shape[-2:]) == (side, side) and tuple(crop["label"].shape[-2:]) == (side, side)
    assert isinstance(wf.parser.get_parsed_content("val_inferer").inferer, SlidingWindowInferer)
    trained = torch.load(first / "model.pt", weights_only=True)
    assert any(k.endswith(".B") and v.abs().sum() > 0 for k, v in trained.items()), "one epoch moved B off zero"

    # learning rate 0 from init_from: the saved adapter is the initial one (without init_from B would be all zero)
    again = tmp_path / "again"
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(tmp_path / "r2"),
        ckpt_dir=str(again),
        max_epochs=1,
        learning_rate=0.0,
        init_from=str(first / "model.pt"),
        **common,
    )
    restarted = torch.load(again / "model.pt", weights_only=True)
    for k, v in trained.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, restarted[k]), k
    with pytest.raises(Exception) as e:
        run_workflow(BUNDLE, "train.json", output_dir=str(tmp_path / "r3"), init_from=str(tmp_path / "no.pt"), **common)
    assert "init_from" in chain(e.value) and "no.pt" in chain(e.value)

    ev = tmp_path / "eval"
    wf = run_workflow(
        BUNDLE, "evaluate.json", output_dir=str(ev), model_path=str(first / "model.pt"), symmetries="flips", **common
    )
    assert isinstance(wf.parser.get_parsed_content("inferer").inferer, SlidingWindowInferer)
    assert "val_mean_dice" in read_metrics(ev / "metrics.csv")
    pred = tmp_path / "pred"
    run_workflow(BUNDLE, "inference.json", output_dir=str(pred), model_path=str(first / "model.pt"), **common)
    for name in ("case4", "case5"):
        src = Image.open(polyp_folder / "images" / f"{name}.png")
        assert np.asarray(Image.open(pred / "images" / f"{name}.png")).shape == (src.height, src.width)


def test_ddp_two_cpu_processes(polyp_folder, tmp_path):
    dl = kvasir_datalist(polyp_folder)
    dl["validation"].append(dl["training"].pop())
    datalist = write_datalist(dl, tmp_path / "dl.json")
    args = {
        "dataset_dir": str(polyp_folder),
        "datalist": str(datalist),
        "num_workers": 0,
        "max_epochs": 2,
        "val_interval": 1,
        "batch_size": 1,
        "output_dir": str(tmp_path / "run"),
        "ckpt_dir": str(tmp_path / "models"),
        **tiny(),
    }
    res = run_ddp_training(BUNDLE, args, tmp_path, port_offset=7)
    assert res.returncode == 0, res.stderr[-4000:]
    sd = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not [k for k in sd if k.startswith("module.")], "DDP wrapper names must not leak into the adapter file"
    assert "Epoch[2] Metrics" in res.stdout + res.stderr


def test_clip_text_encoder_through_the_config(polyp_folder, tmp_path, tiny_clip):
    """The label name through a (tiny, random) open_clip checkpoint named on the command line, as a user would."""
    ckpt, cfg = tiny_clip
    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    text = {"checkpoint": str(ckpt), "model_config": str(cfg)}
    common = dict(dataset_dir=str(polyp_folder), datalist=str(datalist), num_workers=0)
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(tmp_path / "run"),
        ckpt_dir=str(tmp_path / "models"),
        max_epochs=1,
        val_interval=1,
        **common,
        **tiny(text_encoder=text),
    )
    sd = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert (
        sd["_extra_state"]["text_encoder"]["text_encoder"] == "open_clip"
        and sd["text_affine.down.weight"].shape[1] == 16  # the bundle's rank-4 layer takes the 16-d CLIP feature
    )
    with pytest.raises(Exception) as e:  # the same weights with the offline encoder: refused, saying why
        run_workflow(
            BUNDLE,
            "evaluate.json",
            output_dir=str(tmp_path / "ev"),
            model_path=str(tmp_path / "models" / "model.pt"),
            **common,
            **tiny(),
        )
    assert "Differs: text_encoder" in chain(e.value)


def test_sentence_encoder_and_free_text_prompts_through_the_config(polyp_folder, tmp_path, tiny_sentence_encoder):
    """Train with a (tiny, random) sentence-transformers folder and a rank-2 Text Affine Layer, as a user names them
    on the command line; evaluate with a synonym as the prompt; a far name is refused naming the trained one."""
    from monai_sam_adapt.networks import SentenceTextEncoder

    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    common = dict(dataset_dir=str(polyp_folder), datalist=str(datalist), num_workers=0, text_rank=2)
    common.update(tiny(), text_encoder=str(tiny_sentence_encoder))
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(tmp_path / "run"),
        ckpt_dir=str(tmp_path / "models"),
        max_epochs=1,
        val_interval=1,
        **common,
    )
    sd = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert sd["_extra_state"]["text_encoder"]["text_encoder"] == "sentence_transformers"
    assert sd["text_affine.down.weight"].shape == (2, 16) and sd["_extra_state"]["adaptation"]["text_rank"] == 2
    feats = SentenceTextEncoder(tiny_sentence_encoder)(["gland", "colon gland", "liver"])
    threshold = float((feats[0] @ feats[1] + feats[0] @ feats[2]) / 2)  # between the synonym and the far name
    model = str(tmp_path / "models" / "model.pt")
    wf = run_workflow(
        BUNDLE,
        "evaluate.json",
        output_dir=str(tmp_path / "ev"),
        model_path=model,
        prompt_names=["colon gland"],
        prompt_threshold=threshold,
        **common,
    )
    assert 0.0 <= wf.parser.get_parsed_content("evaluator").state.metrics["val_mean_dice"] <= 1.0
    with pytest.raises(Exception) as e:
        run_workflow(
            BUNDLE,
            "inference.json",
            output_dir=str(tmp_path / "inf"),
            model_path=model,
            prompt_names=["liver"],
            prompt_threshold=threshold,
            **common,
        )
    assert "'liver' is not close to any name this model was trained on ['gland']: the nearest is 'gland'" in chain(
        e.value
    )
    assert not (tmp_path / "inf").exists() or not any((tmp_path / "inf").rglob("*.png"))


@pytest.mark.integration
def test_committed_adapter_segments_real_glas_images(tmp_path):
    """The committed models/model.pt (trained on the name "gland" through the real MiniLM) loads onto the real
    LiteMedSAM (from its wheel) through evaluate.json, segments two real GlaS test images well above chance (with the
    shipped dihedral test-time averaging and without), does as well prompted with "colon gland", and refuses "liver"
    naming the trained name."""
    from tests.conftest import data_path

    root = data_path("glas")
    dl = json.loads((REPO / "bundles" / "source" / "datalists" / "glas.json").read_text())
    dl["testing"] = dl["testing"][:2]
    common = dict(dataset_dir=str(root), datalist=dl, num_workers=0)
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "ev"), **common)
    assert read_metrics(tmp_path / "ev" / "metrics.csv")["val_mean_dice"] > 0.8
    common["symmetries"] = "none"  # one forward pass per image from here on
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "one"), **common)
    dice = read_metrics(tmp_path / "one" / "metrics.csv")["val_mean_dice"]
    assert dice > 0.8
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "cg"), prompt_names=["colon gland"], **common)
    assert abs(read_metrics(tmp_path / "cg" / "metrics.csv")["val_mean_dice"] - dice) < 0.05
    with pytest.raises(Exception) as e:
        run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "lv"), prompt_names=["liver"], **common)
    assert "'liver' is not close to any name this model was trained on ['gland']" in chain(e.value)
