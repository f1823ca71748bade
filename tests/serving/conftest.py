"""Servers for the serving tests: Orthanc and MONAI Label on loopback, inside a network namespace of their own."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e .[monailabel] (in .[test])")

from monai_sam_adapt.serving.orthanc import free_port, start_orthanc, wait_http  # noqa: E402
from tests.bundles.helpers import REPO  # noqa: E402
from tests.serving.helpers import tiny_bundle  # noqa: E402

CLONE_NEWNET = 0x40000000


@pytest.fixture(scope="session")
def loopback_netns():
    """Move this test process's main thread (and every server it starts) into a new network namespace that has only
    loopback: Orthanc listens on every interface of the namespace it runs in, and here that is 127.0.0.1 alone."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a loopback-only network namespace needs root and iproute2 (CI runs as root)")
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    if libc.unshare(CLONE_NEWNET) != 0:
        os.close(original)
        pytest.skip(f"unshare(CLONE_NEWNET) refused here (errno {ctypes.get_errno()})")
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield
    finally:
        libc.setns(original, CLONE_NEWNET)
        os.close(original)


@pytest.fixture(scope="session")
def orthanc(loopback_netns, tmp_path_factory):
    """Orthanc with DICOMweb on 127.0.0.1: its DICOMweb root URL."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb (.ci/run installs it)")
    port = free_port()
    proc = start_orthanc(tmp_path_factory.mktemp("orthanc"), port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="session")
def served_bundles(tmp_path_factory):
    """A bundles folder with one tiny trained-format bundle (the ssam_lits configs on a tiny SAM)."""
    root = tmp_path_factory.mktemp("bundles")
    tiny_bundle(root, "ssam_lits", "ct_tiny")
    return root


def start_label_server(studies: str, bundles: Path, tmp: Path, models: str = "all"):
    """``monailabel start_server`` as the README gives it (our app folder, our uvicorn app, 127.0.0.1)."""
    app = tmp / "app"
    app.mkdir()
    shutil.copy(REPO / "monai_sam_adapt" / "apps" / "monailabel" / "main.py", app / "main.py")
    port = free_port()
    env = {**os.environ, "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp / "cache"), "PYTHONUNBUFFERED": "1",
           "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "OMP_NUM_THREADS": "2"}
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", studies,
         "--conf", "models", models, "--conf", "bundles", str(bundles), "--host", "127.0.0.1", "--port", str(port),
         "--uvicorn_app", "monai_sam_adapt.serving.server:app"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/info/", timeout=180, proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError((tmp / "server.log").read_text()[-4000:])
    return proc, f"http://127.0.0.1:{port}", tmp / "server.log"
