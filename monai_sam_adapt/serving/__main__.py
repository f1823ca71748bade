"""Start the MONAI Label server the one documented way: ``python -m monai_sam_adapt.serving --studies ...`` (or the
``monai-sam-serve`` console script).

It runs ``monailabel start_server`` with the interpreter this package is installed in, our app folder, our uvicorn app
(:mod:`.server`; without it MONAI Label 0.8.5 fails to start under pydicom 3) and ``--host 127.0.0.1`` unless told
otherwise. ``--conf KEY VALUE`` pairs go to the app (``models``, ``bundles``, ``backbone``, ``checkpoint``,
``device``, ``infer_timeout_s``, ``max_upload_mb``, ``interactive_cache_mb``); any other option is passed to
``monailabel start_server`` as given.

Listening on anything but loopback needs MONAI Label's authentication (``MONAI_LABEL_AUTH_ENABLE=true`` with its
Keycloak settings) or ``--trusted_network`` (every machine that reaches the address may use the server); otherwise
it refuses to start and says how to proceed. The server itself refuses remote clients in the same cases
(:class:`~monai_sam_adapt.serving.guard.RequestGuard`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from .guard import TRUSTED_NETWORK_ENV, access_mode, is_loopback
from .launch import APP_DIR, server_command

REMOTE_REFUSED = """refusing to listen on {host}: remote clients would reach this server without authentication.
Either
  - keep it on loopback (--host 127.0.0.1, the default) behind a reverse proxy that authenticates and terminates
    TLS (docs/serving.md, "Hospital set-up"), or
  - turn on MONAI Label's authentication: MONAI_LABEL_AUTH_ENABLE=true, MONAI_LABEL_AUTH_REALM_URI=<Keycloak realm>
    (and MONAI_LABEL_AUTH_CLIENT_ID), or
  - pass --trusted_network if every machine that can reach {host} may read and write your studies."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_sam_adapt.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--studies", required=True, help="DICOMweb URL (Orthanc: http://127.0.0.1:8042/dicom-web) or a folder"
    )
    parser.add_argument("--app", default=str(APP_DIR), help="MONAI Label app folder (default: the packaged app)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--trusted_network",
        action="store_true",
        help="serve clients on other machines without authentication (only on a network where everyone may)",
    )
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="app option")
    parser.add_argument("--dry_run", action="store_true", help="print the command instead of running it")
    args, rest = parser.parse_known_args(argv)
    if args.trusted_network:
        os.environ[TRUSTED_NETWORK_ENV] = "1"
    if not is_loopback(args.host) and access_mode() == "loopback":
        print(REMOTE_REFUSED.format(host=args.host), file=sys.stderr)
        return 2
    cmd = server_command(args.studies, args.app, args.host, args.port, dict(args.conf)) + list(rest)
    if args.dry_run:
        print(" ".join(([f"{TRUSTED_NETWORK_ENV}=1"] if args.trusted_network else []) + cmd))
        return 0
    if os.name == "posix":  # become the server: signals and exit status reach MONAI Label itself
        sys.stdout.flush()
        os.execv(cmd[0], cmd)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
