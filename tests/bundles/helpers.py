"""Run a bundle config the way MONAI's model zoo tests do: ConfigWorkflow with tiny overrides."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from monai.data import PILWriter

from monai_sam_adapt.bundle import bundle_workflow
from monai_sam_adapt.io import PILMaskWriter, atomic_write
from tests.tiny import TINY_ARCH

REPO = Path(__file__).resolve().parents[2]


def tiny_network_override(target: str, backbone: str = "vit_b", **extra) -> dict:
    """Replace a bundle's network by the same class on a tiny untrained SAM (milliseconds, no weights)."""
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_ARCH[backbone].items()}
    if target.endswith(".SSAM"):  # the bundle's own text encoder and prompts unless a test names others
        extra = {
            "text_encoder": "@text_encoder",
            "prompt_names": "@prompt_names",
            "text_rank": "@text_rank",
            "prompt_threshold": "@prompt_threshold",
            "in_channels": "@in_channels",
            "channel_init": "@channel_init",
            **extra,
        }
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


# What a CPU (gloo) worker prints when it aborts at interpreter exit, after its work is done: gloo's worker threads can
# still hold tensors with Python references while the interpreter is being torn down (pytorch/pytorch#179291). It is
# rare (none in 40 runs on 2 cores, under load or pinned to one core; one in a CI run), and it comes after training.
GLOO_EXIT_ABORT = "terminate called without an active exception"


def run_ddp_training(bundle: str, args: dict, workdir: Path, port_offset: int = 0):
    """``torchrun --nproc_per_node=2 -m monai.bundle run training`` of ``bundle`` with its
    ``multi_gpu_train.json`` (gloo on CPU) and ``args`` as its args file; the finished process.

    A run that trained to the end and saved its model but whose exit was the gloo teardown abort above is run once
    more from scratch (its outputs removed): that second run must exit cleanly. Any other failure is returned as is."""
    (workdir / "args.json").write_text(json.dumps(args))
    cfg = f"bundles/{bundle}/configs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port"]
    port = str(29500 + (os.getpid() + port_offset) % 1000)
    cmd += [port, "-m", "monai.bundle", "run", "training", "--config_file"]
    cmd += [
        f"['{cfg}/train.json','{cfg}/multi_gpu_train.json']",
        "--meta_file",
        f"{cfg}/metadata.json",
    ]
    cmd += ["--logging_file", f"{cfg}/logging.conf", "--args_file", str(workdir / "args.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    finished = (Path(args["ckpt_dir"]) / "model.pt").is_file() and f"Epoch[{args['max_epochs']}] Metrics" in (
        res.stdout + res.stderr
    )
    if res.returncode != 0 and finished and GLOO_EXIT_ABORT in res.stderr:
        for out in (args["output_dir"], args["ckpt_dir"]):
            shutil.rmtree(out, ignore_errors=True)
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    return res


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


class SlowMaskWriter(PILMaskWriter):
    """Test writer: writes like :class:`monai_sam_adapt.io.PILMaskWriter`, then, still inside the atomic write (the
    temporary file complete, not yet renamed), touches ``$SLOW_WRITER_FLAG`` and sleeps: a signal sent after the flag
    appears lands during a write."""

    def write(self, filename, verbose: bool = False, **kw):
        kw.setdefault("reverse_indexing", False)
        with atomic_write(filename) as tmp:
            PILWriter.write(self, str(tmp), verbose=verbose, **kw)
            Path(os.environ["SLOW_WRITER_FLAG"]).touch()
            time.sleep(60)


def bundle_command(bundle: str, config: str, args: dict, workdir: Path, *extra: str) -> list[str]:
    """``python -m monai.bundle run`` of a bundle config with ``args`` as its args file (the user's command)."""
    (workdir / "args.json").write_text(json.dumps(args))
    cfg = f"bundles/{bundle}/configs"
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"{cfg}/{config}"] + [
        "--meta_file",
        f"{cfg}/metadata.json",
        "--logging_file",
        f"{cfg}/logging.conf",
        "--args_file",
        str(workdir / "args.json"),
        *extra,
    ]
