"""Issue 14, the user's command line: a run that fails on bad input ends with one short message (full traceback only
with ``--debug true``), a misspelt option is refused, and SIGTERM / SIGKILL during a write leave no partial file
(the next run removes what a killed one left)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import torch
from monai.networks.nets import UNet

from tests.bundles.helpers import REPO, bundle_command
from tests.bundles.test_unet_kvasir import TINY


def _setup(tmp_path, polyp_folder, **args):
    net = UNet(**{k: v for k, v in TINY["network_def"].items() if k != "_target_"})
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    base = dict(
        TINY,
        dataset_dir=str(polyp_folder),
        model_path=str(tmp_path / "model.pt"),
        num_workers=0,
        output_dir=str(tmp_path / "out"),
        datalist={"testing": [{"image": f"images/case{i}.png"} for i in range(4)]},
    )
    return {**base, **args}


def _run(cmd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **kw.pop("env", {})}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env, **kw)


def test_bad_input_ends_with_one_readable_message(tmp_path, polyp_folder):
    (polyp_folder / "images" / "case2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = _setup(tmp_path, polyp_folder)
    done = _run(bundle_command("unet_kvasir", "inference.json", args, tmp_path))
    out = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert out[-2].startswith("ERROR (InputError): cannot read image file") and "case2.png" in out[-2], out[-5:]
    assert "--debug true" in out[-1]
    assert not any(line.startswith("Traceback") for line in out), "\n".join(out)
    everything = (done.stdout + done.stderr).splitlines()
    assert not any("Traceback" in line for line in everything)
    assert sum("case2.png" in line for line in everything) <= 5, "\n".join(everything)  # a line per log, no repeats
    # the images before the bad one were written, completely, and nothing else
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["images/case0.png", "images/case1.png"], written

    debug = _run(
        bundle_command("unet_kvasir", "inference.json", args, tmp_path, "--debug", "true", "--overwrite", "true")
    )
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "monai_sam_adapt.errors.InputError" in debug.stderr


def test_misspelt_option_is_refused_before_anything_runs(tmp_path, polyp_folder):
    args = _setup(tmp_path, polyp_folder)
    args["outputdir"] = args.pop("output_dir")  # in the args file, as on the command line
    done = _run(bundle_command("unet_kvasir", "inference.json", {}, tmp_path, *_cli(args)))
    tail = done.stderr.strip().splitlines()[-2]
    assert done.returncode == 1 and "unknown option --outputdir (did you mean --output_dir?)" in tail, done.stderr[
        -3000:
    ]
    assert not (REPO / "bundles" / "unet_kvasir" / "predictions").exists()


def _cli(args: dict) -> list[str]:
    import json

    out = []
    for k, v in args.items():
        out += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    return out


def test_sigkill_and_sigterm_during_a_write_leave_no_partial_file(tmp_path, polyp_folder):
    args = _setup(tmp_path, polyp_folder, output_writer="tests.bundles.helpers.SlowMaskWriter")
    out, flag = tmp_path / "out", tmp_path / "writing"

    def start():
        flag.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SLOW_WRITER_FLAG": str(flag)}
        cmd = bundle_command("unet_kvasir", "inference.json", args, tmp_path)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while not flag.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert flag.exists(), proc.communicate()[0][-3000:]
        return proc

    def files():
        return sorted(p.name for p in out.rglob("*") if p.is_file())

    proc = start()
    proc.kill()  # SIGKILL: nothing can clean up; the temporary file of the write in progress stays
    proc.wait(30)
    assert [f for f in files() if f.startswith(".partial-")] and not [f for f in files() if f == "case0.png"]

    proc = start()  # the next run removes it, then is stopped with SIGTERM during its own write
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert files() == [], files()  # neither run left a partial file, and no output was half-written


def test_training_with_defaults_never_replaces_the_shipped_model(tmp_path, polyp_folder):
    """The README's `python -m monai.bundle run training --config_file bundles/<b>/configs/train.json`: the best model
    goes under the run's output folder, the log says where, and the committed models/model.pt stays byte-identical."""
    import hashlib
    import re

    from monai_sam_adapt.data import kvasir_datalist, write_datalist

    shipped = REPO / "bundles" / "unet_kvasir" / "models" / "model.pt"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    args = dict(
        TINY,
        dataset_dir=str(polyp_folder),
        datalist=str(write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")),
        num_workers=0,
        max_epochs=1,
        output_dir=str(tmp_path / "run"),
    )
    cmd = bundle_command("unet_kvasir", "train.json", args, tmp_path)
    cmd.insert(cmd.index("run") + 1, "training")
    done = _run(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = tmp_path / "run" / "models" / "model.pt"
    assert trained.is_file()
    assert re.search(rf"best model .* written to: {re.escape(str(trained.resolve()))}", done.stdout + done.stderr)
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before


def test_every_bundle_trains_into_its_output_folder_unless_told_otherwise(tmp_path):
    from monai_sam_adapt.bundle import config_parser

    for train in sorted((REPO / "bundles").glob("*/configs/train.json")):
        bundle = train.parents[1]
        parser = config_parser(bundle, "train.json")
        parser["output_dir"] = str(tmp_path / "out")
        assert parser.get_parsed_content("ckpt_dir") == str(tmp_path / "out" / "models"), bundle.name
        parser = config_parser(bundle, "train.json")
        assert parser.get_parsed_content("ckpt_dir").startswith(parser.get_parsed_content("output_dir")), bundle.name
