"""Training precision: bf16 autocast where the hardware has it, a clean fp32 fallback where it does not."""

from __future__ import annotations

import logging

import pytest
import torch

import monai_sam_adapt.engines.precision as precision
from monai_sam_adapt.engines import AutocastInferer, resolve_precision


def net_and_input():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    return net, torch.rand(2, 3, 16, 16)


def test_bf16_autocast_outputs_fp32_close_to_fp32_and_trains():
    net, x = net_and_input()
    ref = AutocastInferer("fp32")(x, net)
    out = AutocastInferer("bf16")(x, net)
    assert ref.dtype == out.dtype == torch.float32
    if precision.bf16_supported("cpu"):
        assert not torch.equal(out, ref)  # really computed in bf16
        torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)
    out.mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_auto_picks_bf16_only_where_supported_and_falls_back_cleanly(monkeypatch, caplog):
    assert resolve_precision("fp32", "cpu") is None
    expected = torch.bfloat16 if precision.bf16_supported("cpu") else None
    assert resolve_precision("auto", "cpu") is expected
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with caplog.at_level(logging.INFO, logger="monai_sam_adapt.precision"):
        assert resolve_precision("auto", "cpu") is None
        assert resolve_precision("bf16", "cpu") is None
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.INFO, logging.WARNING] and "no bf16 arithmetic, training in fp32" in caplog.text
    net, x = net_and_input()
    torch.testing.assert_close(AutocastInferer("bf16")(x, net), net(x), atol=0, rtol=0)  # exactly fp32
    with pytest.raises(ValueError, match="precision must be one of"):
        AutocastInferer("fp16")


def test_structured_outputs_come_back_fp32():
    class Two(torch.nn.Module):
        def forward(self, x):
            return {"a": x @ x.transpose(-1, -2), "b": (x.sum(), torch.ones(1, dtype=torch.long))}

    out = AutocastInferer("bf16")(torch.rand(2, 4, 4), Two())
    assert out["a"].dtype == out["b"][0].dtype == torch.float32 and out["b"][1].dtype == torch.long


def test_cpu_threads_follow_a_container_quota(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(precision, "_cgroup_cpus", lambda: 1.5)
        torch.set_num_threads(2)
        assert precision.set_cpu_threads() == 1
        monkeypatch.setattr(precision, "_cgroup_cpus", lambda: None)
        torch.set_num_threads(2)
        assert precision.set_cpu_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_channels_last_converts_the_network_once_in_place_and_keeps_values():
    net, x = net_and_input()
    ref = net(x)
    params = list(net.parameters())
    inferer = AutocastInferer("fp32", channels_last=True)
    out = inferer(x, net)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(net.parameters()) == params  # the optimizer's parameters are still the network's
    out.mean().backward()
    assert net[0].weight.grad is not None
