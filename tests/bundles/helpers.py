"""Run a bundle config the way MONAI's model zoo tests do: ConfigWorkflow with tiny overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from monai_sam_adapt.bundle import bundle_workflow
from tests.tiny import TINY_ARCH

REPO = Path(__file__).resolve().parents[2]


def tiny_network_override(target: str, backbone: str = "vit_b", **extra) -> dict:
    """Replace a bundle's network by the same class on a tiny untrained SAM (milliseconds, no weights)."""
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_ARCH[backbone].items()}
    return {
        "network_def": {"_target_": target, "backbone": backbone, "checkpoint": None, **arch, **extra},
        "backbone": backbone,
        "image_size": TINY_ARCH[backbone].get("image_size", 256),
    }


def run_workflow(bundle: str, config: str, **override):
    wf = bundle_workflow(REPO / "bundles" / bundle, config, **override)
    wf.initialize()
    try:
        wf.run()
    finally:
        wf.finalize()
    return wf


def run_ddp_training(bundle: str, args: dict, workdir: Path, port_offset: int = 0):
    """``torchrun --nproc_per_node=2 -m monai.bundle run training`` of ``bundle`` with the shared
    ``multi_gpu_train.json`` (gloo on CPU) and ``args`` as its args file; the finished process."""
    (workdir / "args.json").write_text(json.dumps(args))
    cfg = f"bundles/{bundle}/configs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port"]
    port = str(29500 + (os.getpid() + port_offset) % 1000)
    cmd += [port, "-m", "monai.bundle", "run", "training", "--config_file"]
    cmd += [
        f"['{cfg}/train.json','bundles/common/configs/multi_gpu_train.json']",
        "--meta_file",
        f"{cfg}/metadata.json",
    ]
    cmd += ["--logging_file", f"{cfg}/logging.conf", "--args_file", str(workdir / "args.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def chain(e: BaseException) -> str:
    """Every message in an exception's cause chain (MONAI wraps transform errors twice)."""
    out = []
    while e is not None:
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def _rows(path):
    """(name, first value) rows of a MetricsSaver CSV."""
    with open(path) as f:
        for line in f:
            name, *vals = line.replace("\t", ",").strip().split(",")
            yield name, float(vals[0])


def read_metrics(path) -> dict[str, float]:
    return dict(_rows(path))
