"""Orthanc as the DICOMweb archive, on loopback with remote access refused.

``python -m monai_sam_adapt.serving.orthanc --storage DIR [--http-port 8042]`` writes a configuration and runs
Debian's ``Orthanc`` with the ``orthanc-dicomweb`` plugin (``apt-get install orthanc orthanc-dicomweb``):

- ``RemoteAccessAllowed: false``: Orthanc answers only requests from 127.0.0.1 (Orthanc 1.10 listens on every
  interface and has no bind-address option; this is its own refusal of remote clients);
- ``DicomServerEnabled: false``: no DICOM (DIMSE) port at all;
- no authentication on loopback (``AuthenticationEnabled: false``), DICOMweb at ``/dicom-web/``.

For isolation beyond that, run it in a network namespace with loopback only (``unshare -n``), as the tests do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["DICOMWEB_PLUGIN", "orthanc_config", "start_orthanc", "wait_http", "free_port"]

#: Where Debian's ``orthanc-dicomweb`` installs the plugin.
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_config(storage: str | Path, http_port: int = 8042, plugin: str = DICOMWEB_PLUGIN) -> dict:
    """Orthanc's JSON configuration: loopback clients only, no DICOM port, DICOMweb on."""
    return {
        "Name": "monai_sam_adapt",
        "StorageDirectory": str(Path(storage) / "db"),
        "IndexDirectory": str(Path(storage) / "db"),
        "HttpPort": int(http_port),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "HttpsCACertificates": "",
        "Plugins": [plugin],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers (any HTTP status); fail early if ``proc`` exits."""
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before {url} answered.")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s ({last}).")


def start_orthanc(
    storage: str | Path, http_port: int = 8042, log: str | Path | None = None, timeout: float = 60.0
) -> subprocess.Popen:
    """Start Orthanc with :func:`orthanc_config` and wait until its DICOMweb root answers. Returns the process."""
    exe = shutil.which("Orthanc")
    if exe is None:
        raise FileNotFoundError("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb")
    if not Path(DICOMWEB_PLUGIN).exists():
        raise FileNotFoundError(f"the DICOMweb plugin {DICOMWEB_PLUGIN} is missing: apt-get install orthanc-dicomweb")
    storage = Path(storage)
    storage.mkdir(parents=True, exist_ok=True)
    cfg = storage / "orthanc.json"
    cfg.write_text(json.dumps(orthanc_config(storage, http_port), indent=2))
    out = open(log or storage / "orthanc.log", "ab")
    proc = subprocess.Popen([exe, str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{http_port}/dicom-web/studies", timeout, proc)
    except Exception:
        proc.kill()
        raise
    return proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", required=True, help="folder for Orthanc's database and configuration")
    p.add_argument("--http-port", type=int, default=8042)
    args = p.parse_args()
    proc = start_orthanc(args.storage, args.http_port)
    print(
        f"Orthanc DICOMweb: http://127.0.0.1:{args.http_port}/dicom-web (remote access refused); Ctrl-C stops it",
        flush=True,
    )
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
