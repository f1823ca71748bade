"""Build every bundle's configs from one source, so that each bundle folder is self-contained and still nothing is
written twice by hand.

A MONAI ``%file#id`` macro names its file relative to the working directory, so a bundle whose configs reach shared
parts through macros runs only from the folder those paths start at. Here the shared parts and each bundle's own
keys live in ``bundles/source/``::

    bundles/source/base/*.json       parts several bundles share (networks, transforms, engines, handlers)
    bundles/source/datalists/*.json  fixed splits of the datasets that have no official one
    bundles/source/<bundle>/*.json   what is the bundle's own; shared parts are ``%bundles/source/base/...`` macros

and :func:`build_bundles` writes ``bundles/<bundle>/configs/{train,inference,evaluate,multi_gpu_train}.json`` with
every macro replaced by what it names (recursively), ``bundle_root`` set to :data:`BUNDLE_ROOT` (the folder of the
config file being run), ``requires`` to :data:`REQUIRES` and a datalist file copied into the bundle as
``configs/datalist.json``. The bundle's ``metadata.json``, ``logging.conf``, docs, licence and models are its own and
not touched.

``python -m monai_sam_adapt.bundle build`` writes them; ``... build --check`` (run by the test suite) fails naming
each config that differs from what its source gives.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.utils import MACRO_KEY

__all__ = ["BUNDLE_ROOT", "DATALIST_FILE", "REQUIRES", "build_bundle", "build_bundles", "expand_macros"]

#: ``bundle_root`` of every built config: the folder that holds the ``configs/`` folder of the config file being
#: run, unless ``--bundle_root`` (or MONAI Label) sets it (:func:`monai_sam_adapt.bundle.bundle_root`).
BUNDLE_ROOT = "$monai_sam_adapt.bundle.bundle_root()"
#: ``requires`` of every built config: the oldest ``monai_sam_adapt`` that has everything the configs name. The first
#: expression of each ``initialize`` refuses to run without the package, ``guard_cli`` an older one, in one line.
REQUIRES = "monai_sam_adapt>=0.1.0"
#: Where a bundle's datalist file goes, relative to the bundle folder.
DATALIST_FILE = "configs/datalist.json"
_CONFIGS = ("train.json", "inference.json", "evaluate.json", "multi_gpu_train.json")
_MAX_DEPTH = 20


def expand_macros(value: Any, root: Path, _depth: int = 0) -> Any:
    """``value`` with every ``%path#id`` macro replaced by a copy of what it names, itself expanded; ``path`` is
    relative to ``root`` (the repository, where the sources' macros are written from)."""
    if isinstance(value, dict):
        return {k: expand_macros(v, root, _depth) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_macros(v, root, _depth) for v in value]
    if not (isinstance(value, str) and value.startswith(MACRO_KEY)):
        return value
    if _depth >= _MAX_DEPTH:
        raise ValueError(f"macro {value!r}: more than {_MAX_DEPTH} nested macros (a macro that names itself?)")
    path, ids = ConfigParser.split_path_id(value[len(MACRO_KEY) :])
    file = root / path
    if not file.is_file():
        raise FileNotFoundError(f"macro {value!r}: no file {file}")
    parser = ConfigParser(ConfigParser.load_config_file(str(file)))
    if ids not in parser:
        raise ValueError(f"macro {value!r}: {file} has no {ids!r}")
    return expand_macros(copy.deepcopy(parser[ids]), root, _depth + 1)


def _dump(config: dict) -> str:
    return json.dumps(config, indent=4, ensure_ascii=False) + "\n"


def build_bundle(source: Path, bundle: Path, root: Path) -> dict[Path, str]:
    """``{file: text}`` of the configs (and datalist) that ``source`` (``bundles/source/<name>``) gives the bundle
    folder ``bundle``; ``root`` is the folder the sources' macro paths start at."""
    out: dict[Path, str] = {}
    datalists: set[Path] = set()
    for src in sorted(source.glob("*.json")):
        try:
            config = expand_macros(json.loads(src.read_text()), root)
        except (OSError, ValueError) as e:
            raise ValueError(f"{src}: {e}") from e
        if not isinstance(config, dict):
            raise ValueError(f"{src}: a bundle config is a JSON object")
        config.pop("bundle_root", None)
        config.pop("requires", None)
        items = list(config.items())
        at = 1 if items and items[0][0] == "imports" else 0
        config = dict(items[:at] + [("bundle_root", BUNDLE_ROOT), ("requires", REQUIRES)] + items[at:])
        datalist = config.get("datalist")
        if isinstance(datalist, str) and datalist.endswith(".json") and (root / datalist).is_file():
            datalists.add(root / datalist)
            config["datalist"] = f"$@bundle_root + '/{DATALIST_FILE}'"
        out[bundle / "configs" / src.name] = _dump(config)
    if len(datalists) > 1:
        raise ValueError(f"{source}: its configs name {len(datalists)} datalist files; a bundle carries one")
    if datalists:
        out[bundle / DATALIST_FILE] = datalists.pop().read_text()
    base_multi_gpu = source.parent / "base" / "multi_gpu_train.json"
    if (source / "train.json").is_file() and not (source / "multi_gpu_train.json").is_file():
        out[bundle / "configs" / "multi_gpu_train.json"] = _dump(
            expand_macros(json.loads(base_multi_gpu.read_text()), root)
        )
    return out


def build_bundles(bundles_dir: str | Path = "bundles", check: bool = False) -> list[Path]:
    """Build (or with ``check``, compare) the configs of every bundle with a folder in ``bundles_dir/source``.
    Returns the files written (or, with ``check``, those that differ from their source, or are stale)."""
    bundles_dir = Path(bundles_dir)
    source_dir = bundles_dir / "source"
    if not source_dir.is_dir():
        raise FileNotFoundError(f"{source_dir}: no bundle sources here (run from the repository root)")
    root = bundles_dir.resolve().parent
    changed: list[Path] = []
    for source in sorted(p for p in source_dir.iterdir() if p.is_dir() and p.name not in ("base", "datalists")):
        bundle = bundles_dir / source.name
        files = build_bundle(source, bundle, root)
        stale = [
            p
            for p in [*(bundle / "configs" / c for c in _CONFIGS), bundle / DATALIST_FILE]
            if p.is_file() and p not in files
        ]
        for path, text in files.items():
            if path.is_file() and path.read_text() == text:
                continue
            changed.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        changed += stale
        if not check:
            for p in stale:
                p.unlink()
    return changed
