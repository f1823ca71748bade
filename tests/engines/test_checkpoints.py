"""Training checkpoints survive a crash during a save, and resuming from a bad file names it and a good one."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from monai_sam_adapt.engines import AtomicCheckpointSaver, CheckedCheckpointLoader
from monai_sam_adapt.errors import CheckpointError


def _trainer(net):
    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)
        return 0.0

    return Engine(step)


def test_a_crash_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    trainer = _trainer(net)
    saver = AtomicCheckpointSaver(str(tmp_path), {"network": net, "trainer": trainer}, save_interval=1, n_saved=1)
    saver.attach(trainer)
    real_save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):  # a few bytes reach the file, then the process "dies"
        real_save(obj, f, *args, **kwargs)
        if hasattr(f, "truncate"):
            f.truncate(10)
        else:
            with open(f, "r+b") as fh:
                fh.truncate(10)
        raise KeyboardInterrupt("killed during the save")

    def crash_at_epoch_2(engine):
        if engine.state.epoch == 2:
            monkeypatch.setattr(torch, "save", killed_mid_write)

    trainer.add_event_handler(Events.EPOCH_STARTED, crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run([0], max_epochs=3)
    monkeypatch.setattr(torch, "save", real_save)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint_epoch=1.pt"], files  # the good one kept, no truncated file, no temporary left
    state = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 1


def test_resume_from_a_bad_file_names_it_and_the_last_good_one(tmp_path):
    net = torch.nn.Linear(2, 2)
    good = tmp_path / "checkpoint_epoch=1.pt"
    first = _trainer(net)
    first.run([0], max_epochs=1)
    torch.save({"network": net.state_dict(), "trainer": first.state_dict()}, good)
    bad = tmp_path / "checkpoint_epoch=2.pt"
    bad.write_bytes(b"")
    trainer = _trainer(net)
    loader = CheckedCheckpointLoader(str(bad), {"network": net, "trainer": trainer}, option="resume_from")
    with pytest.raises(CheckpointError, match=r"resume_from .*checkpoint_epoch=2\.pt.*empty.*checkpoint_epoch=1\.pt"):
        loader.attach(trainer)
    foreign = tmp_path / "other.pt"
    torch.save({"model": net.state_dict()}, foreign)
    with pytest.raises(CheckpointError, match=r"other\.pt.*lacks network, trainer"):
        CheckedCheckpointLoader(str(foreign), {"network": net, "trainer": trainer}).attach(trainer)
    CheckedCheckpointLoader(str(good), {"network": net, "trainer": trainer}).attach(trainer)
    trainer.run([0], max_epochs=2)
    assert trainer.state.epoch == 2  # resumed after epoch 1


def test_the_best_model_saver_carries_the_evaluators_best_metric_across_a_resume(tmp_path):
    """A resumed evaluator logs and reports the run's best metric and epoch, not the best since the resume; a
    checkpoint written before the evaluator's best was saved still loads (its evaluator starts afresh)."""

    def evaluator():
        engine = Engine(lambda e, b: None)
        engine.state.best_metric, engine.state.best_metric_epoch = -1.0, -1
        return engine

    net = torch.nn.Linear(2, 2)
    kwargs = dict(save_dict={"model": net}, save_key_metric=True, key_metric_filename="model.pt")
    first = evaluator()
    saver = AtomicCheckpointSaver(str(tmp_path), **kwargs)
    saver.attach(first)
    first.state.best_metric, first.state.best_metric_epoch = 0.88, 4
    state = saver.state_dict()
    assert state["best_metric"] == [0.88, 4]

    resumed = evaluator()
    again = AtomicCheckpointSaver(str(tmp_path), **kwargs)
    again.attach(resumed)
    again.load_state_dict(state)
    assert (resumed.state.best_metric, resumed.state.best_metric_epoch) == (0.88, 4)

    old = evaluator()
    legacy = AtomicCheckpointSaver(str(tmp_path), **kwargs)
    legacy.attach(old)
    legacy.load_state_dict({"key_metric": state["key_metric"]})
    assert (old.state.best_metric, old.state.best_metric_epoch) == (-1.0, -1)
