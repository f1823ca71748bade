"""Servers for the serving tests: Orthanc and MONAI Label on loopback, inside a network namespace of their own."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e .[monailabel] (in .[test])")

from monai_sam_adapt.serving.orthanc import free_port, start_orthanc  # noqa: E402
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
