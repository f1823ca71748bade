"""Issue 14: a training killed mid-epoch resumes from its last complete checkpoint and ends with the same weights, and
the same best model, as the uninterrupted run (same seed), with random augmentation, shuffling and dropout on."""

from __future__ import annotations

import pytest
import torch

from monai_sam_adapt.bundle import bundle_workflow
from monai_sam_adapt.data import kvasir_datalist, write_datalist
from monai_sam_adapt.errors import find_error
from tests.bundles.helpers import REPO
from tests.bundles.test_unet_kvasir import TINY

AUGMENT = {
    "_target_": "Compose",
    "transforms": [
        {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 0},
        {"_target_": "RandRotate90d", "keys": ["image", "label"], "prob": 0.5, "max_k": 3},
        {"_target_": "RandGaussianNoised", "keys": "image", "prob": 0.5, "std": 0.05},
    ],
}


class Killed(Exception):
    """Stands for the process dying: nothing after it runs (no final save, no cleanup)."""


def _workflow(folder, out, **extra):
    net = dict(TINY["network_def"], dropout=0.2)
    return bundle_workflow(
        REPO / "bundles" / "unet_kvasir",
        "train.json",
        dataset_dir=str(folder),
        datalist=str(write_datalist(kvasir_datalist(folder), out / "dl.json")),
        output_dir=str(out / "run"),
        ckpt_dir=str(out / "models"),
        num_workers=0,
        batch_size=2,
        max_epochs=4,
        augmentation=AUGMENT,
        network_def=net,
        image_size=TINY["image_size"],
        **extra,
    )


def _train(folder, out, kill_at_epoch=None, **extra):
    from ignite.engine import Events

    wf = _workflow(folder, out, **extra)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    if kill_at_epoch is not None:

        @trainer.on(Events.ITERATION_COMPLETED)
        def die(engine):
            if engine.state.epoch == kill_at_epoch:
                raise Killed

    wf.run()
    return wf


def test_killed_training_resumes_to_the_same_weights_as_an_uninterrupted_run(polyp_folder, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wf_a = _train(polyp_folder, tmp_path / "a")
    with pytest.raises(Exception) as e:
        _train(polyp_folder, tmp_path / "b", kill_at_epoch=3)  # dies in the middle of epoch 3
    assert find_error(e.value, (Killed,)) is not None
    ckpts = sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint_epoch=2.pt"], ckpts  # the last complete one, nothing partial
    wf_b = _train(polyp_folder, tmp_path / "b", resume_from=str(tmp_path / "b" / "run" / "checkpoints" / ckpts[0]))

    def final(folder):
        state = torch.load(folder / "run" / "checkpoints" / "checkpoint_epoch=4.pt", weights_only=True)
        return state

    a, b = final(tmp_path / "a"), final(tmp_path / "b")
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 4 * a["trainer"]["epoch_length"]
    for k in a["network"]:
        torch.testing.assert_close(b["network"][k], a["network"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 4
    # the best model (by validation Dice) is the same file as the uninterrupted run's
    assert a["best_model"] == b["best_model"]
    # and the evaluator logs and reports the same best metric and epoch (not the best since the resume)
    ev_a, ev_b = (wf.parser.get_parsed_content("validate#evaluator").state for wf in (wf_a, wf_b))
    assert (ev_b.best_metric, ev_b.best_metric_epoch) == (ev_a.best_metric, ev_a.best_metric_epoch)
    assert a["best_model"]["best_metric"] == [ev_a.best_metric, ev_a.best_metric_epoch]
    best_a = torch.load(tmp_path / "a" / "models" / "model.pt", weights_only=True)
    best_b = torch.load(tmp_path / "b" / "models" / "model.pt", weights_only=True)
    for k in best_a:
        torch.testing.assert_close(best_b[k], best_a[k], rtol=1e-5, atol=1e-6, msg=k)
