"""What ``python -m monai.bundle run`` lacks for our users: unknown options refused, one readable failure, and
SIGTERM handled like Ctrl-C.

Every bundle's ``initialize`` starts with ``$monai_sam_adapt.bundle.guard_cli()``. Run as a library (tests,
MONAI Label, a notebook) it does nothing; run from the command line it

- refuses a ``monai_sam_adapt`` older than the bundle's ``requires`` (the configs name what this version has; an
  absent package is refused by the expression before this one, which needs only the standard library), and a
  ``--bundle_root`` that is not a folder;
- refuses an option that is neither one of ``monai.bundle run``'s own nor a key of the config files (``--outputdir``
  would otherwise be added as a new, unused key, and the output would go to the default folder), listing the
  known ones;
- ends a run that fails on bad input (our :class:`~monai_sam_adapt.errors.InputError`, ``CheckpointError``,
  ``UnknownLabelError``) with one short message instead of MONAI's, ignite's and Python's repeated tracebacks;
  ``--debug true`` keeps the full traceback;
- turns SIGTERM into ``SystemExit`` so that interrupted atomic writes remove their temporary files.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from monai.bundle import ConfigParser

from ..errors import InputError, find_error

__all__ = ["RUN_OPTIONS", "check_options", "check_requirement", "guard_cli", "parse_options"]

#: Options of ``monai.bundle run`` itself, and ours (``debug``).
RUN_OPTIONS = (
    "run_id",
    "init_id",
    "final_id",
    "meta_file",
    "config_file",
    "logging_file",
    "tracking",
    "args_file",
    "workflow_type",
    "workflow_name",
    "debug",
)
_installed = False


def _running_bundle_cli() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", "") in ("monai.bundle.__main__", "monai.bundle") and "run" in sys.argv[1:3]


def parse_options(argv: Sequence[str]) -> dict[str, str]:
    """``--key value`` and ``--key=value`` pairs of a ``monai.bundle run`` command line (Fire's syntax)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            out[key.replace("-", "_") if key.replace("-", "_") in RUN_OPTIONS else key] = value
        i += 1
    return out


def _files(value: str) -> list[str]:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return [str(p) for p in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]


def check_options(options: dict[str, str]) -> None:
    """Refuse an option that is neither ``monai.bundle run``'s nor a config key (``a#b`` for nested ones), naming
    it, the closest known key and the known ones."""
    config_files = options.get("config_file")
    if not config_files:
        return
    config = ConfigParser(ConfigParser.load_config_files(_files(config_files)))  # `a#b` ids as MONAI resolves them
    unknown = [k for k in options if k not in RUN_OPTIONS and k not in config]
    if unknown:
        known = sorted(set(config.get()) | set(RUN_OPTIONS))
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"--{k}" + (f" (did you mean --{close[0]}?)" if close else ""))
        raise InputError(
            f"unknown option {', '.join(hints)} for {config_files}: it is neither an option of monai.bundle run nor "
            f"a key of the config, and would be ignored. Known: {', '.join('--' + k for k in known)}."
        )


def _short_records(previous):
    """A log-record factory that makes every record about one of our errors one line, whichever logger or handler
    it goes through: no traceback, and no worker traceback in its text (ignite and MONAI log
    ``f"...exception: {e}"``, and a DataLoader worker's error carries its whole traceback in its message)."""

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            err = find_error(record.exc_info[1]) if record.exc_info else None
            text = record.getMessage()
            err = err or find_error(Exception(text))
        except Exception:  # noqa: BLE001 - never let logging fail
            return record
        if err is not None:
            head = text.splitlines()[0] if text else ""
            head = head.split("exception:")[0] + "exception:" if "exception:" in head else head.split(":")[0] + ":"
            record.msg, record.args = f"{head} {type(err).__name__}: {str(err).splitlines()[0]}", ()
            record.exc_info, record.exc_text = None, None
        return record

    return factory


def _excepthook(previous):
    def hook(exc_type, exc, tb):
        err = find_error(exc)
        if err is None:
            return previous(exc_type, exc, tb)
        _close_progress_bars()  # else they are redrawn at exit, after the message
        sys.stderr.write(
            f"\nERROR ({type(err).__name__}): {err}\n(add --debug true to the command for the full traceback)\n"
        )

    return hook


def _close_progress_bars() -> None:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with MONAI's extras
        return
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def check_requirement(requires: str | None) -> None:
    """Raise :class:`InputError` naming both versions unless the installed ``monai_sam_adapt`` satisfies
    ``requires`` (a PEP 508 requirement such as ``"monai_sam_adapt>=0.1.0"``; ``None``: nothing to check)."""
    if not requires:
        return
    from importlib.metadata import version

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(requires)
    except InvalidRequirement as e:
        raise InputError(f"requires {requires!r} is not a package requirement ({e})") from e
    installed = version(req.name)
    if not req.specifier.contains(installed, prereleases=True):
        raise InputError(
            f"this bundle needs {requires}, and {req.name} {installed} is installed: install a version that matches "
            "(the bundle's docs/README.md says how)"
        )


def guard_cli(argv: Sequence[str] | None = None, force: bool = False, requires: str | None = None) -> None:
    """Check the command line's options (and the package version the bundle ``requires``) and install the
    readable-failure hooks; nothing but the version check unless run by ``python -m monai.bundle run`` (or
    ``force``). Returns ``None`` so that it can sit in a config's ``initialize``."""
    global _installed
    if not (force or _running_bundle_cli()):
        check_requirement(requires)
        return
    options = parse_options(list(sys.argv[1:] if argv is None else argv))
    if options.get("args_file"):  # an args file holds options too (MONAI reads it as defaults of the command line)
        with contextlib.suppress(Exception):  # an unreadable args file: MONAI reports it itself
            options = {**{str(k): v for k, v in ConfigParser.load_config_file(options["args_file"]).items()}, **options}
    debug = str(options.get("debug", "false")).lower() in ("1", "true", "yes")
    if not _installed and not debug:
        sys.excepthook = _excepthook(sys.excepthook)
        logging.setLogRecordFactory(_short_records(logging.getLogRecordFactory()))
    if not _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    _installed = True
    check_requirement(requires)
    check_options(options)
    root = options.get("bundle_root")
    if root and not os.path.isdir(root):
        raise InputError(f"--bundle_root {root!r} is not a folder (a bundle folder holds configs/ and models/)")


def _terminate(signum, frame):
    raise SystemExit(128 + signum)
