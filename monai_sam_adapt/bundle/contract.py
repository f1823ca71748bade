"""Keys every bundle defines, and how to read a bundle's configs wherever the process runs.

Each bundle folder is self-contained (its configs are built from ``bundles/source`` by
:mod:`monai_sam_adapt.bundle.build`); :func:`bundle_root` finds the folder of the config being run, and
:func:`read_config` reads a bundle's config with ``bundle_root`` set, for the MONAI Label server and tests.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

__all__ = [
    "INFER_KEYS",
    "OPTIONAL_KEYS",
    "SERVING_OVERRIDES",
    "TRAIN_KEYS",
    "TRAINING_OVERRIDES",
    "bundle_labels",
    "bundle_root",
    "bundle_workflow",
    "check_bundle",
    "config_parser",
    "find_bundles",
    "read_config",
]

#: Keys of ``inference.json`` (and ``evaluate.json``) that running and serving a bundle rely on, with their meaning.
INFER_KEYS: dict[str, str] = {
    "bundle_root": "the bundle folder; models/model.pt and outputs are found from it",
    "device": "torch device the network runs on",
    "dataset_dir": "folder the datalist's relative paths are resolved against",
    "datalist": "a datalist JSON file, or a layout name of monai_sam_adapt.data.LAYOUTS",
    "data": "the list of {'image': ...} items to run on",
    "num_workers": "DataLoader workers",
    "image_channels": "channels each image file must have (an int or a list); anything else is refused naming the file",
    "output_dir": "where predictions (inference) or metrics (evaluate) are written; nothing is written elsewhere",
    "model_path": "the weights loaded into network (null: a bundle without trained weights)",
    "network_def": "the network, built once",
    "network": "network_def on the device",
    "preprocessing": "load -> intensity -> SAM geometry; Invertd undoes it",
    "inferer": "SimpleInferer (2D) or SliceInferer (3D)",
    "postprocessing": "Invertd back to the input grid, activation, (inference) SaveImaged",
    "handlers": "engine handlers (CheckpointLoader first); serving replaces them",
    "evaluator": "the SupervisedEvaluator that runs everything",
    "initialize": "expressions run before the workflow",
    "run": "the workflow (modern `monai.bundle run` form)",
}
#: Keys of ``train.json`` that training a bundle (``monai.bundle run training``, MONAI Label) relies on.
TRAIN_KEYS: dict[str, str] = {
    "bundle_root": INFER_KEYS["bundle_root"],
    "device": INFER_KEYS["device"],
    "dataset_dir": INFER_KEYS["dataset_dir"],
    "datalist": "datalist with 'training' and 'validation' lists (a JSON file, a layout name, or a dict)",
    "num_workers": INFER_KEYS["num_workers"],
    "image_channels": INFER_KEYS["image_channels"],
    "output_dir": "TensorBoard logs and resumable checkpoints (output_dir/checkpoints)",
    "ckpt_dir": "where the best model.pt (by validation Dice) is written",
    "max_epochs": "training epochs",
    "val_interval": "epochs between validations",
    "batch_size": "training batch size",
    "learning_rate": "optimizer learning rate",
    "resume_from": "a checkpoint of output_dir/checkpoints to resume from, or null",
    "init_from": "an adapter model.pt (as model_path) to start training from (fresh optimizer and schedule), or null",
    "lr_scheduler": "the learning-rate schedule (saved in resumable checkpoints)",
    "runtime": "how the frozen image encoder runs where no gradient flows through it (AutoSAM's cached embeddings)",
    "train_prepare_batch": "the trainer's prepare_batch (AutoSAM's g_prepare_batch hands g its augmented copy)",
    "resumable": "what a resumable checkpoint holds: network, optimizer, trainer, lr_scheduler, best-model saver",
    "network_def": INFER_KEYS["network_def"],
    "train#trainer": "the SupervisedTrainer",
    "validate#evaluator": "the validation SupervisedEvaluator (its best metric selects model.pt)",
    "initialize": "determinism, checkpointing, resume",
    "run": "the training (modern form)",
    "training": "the training (`monai.bundle run training` form)",
}
#: Optional keys with a meaning to serving.
OPTIONAL_KEYS: dict[str, str] = {
    "slice_axis": "present in 3D bundles: volumes are sliced along it, and served as volumes (NIfTI out)",
    "label_values": "label value of each name of metadata's channel_def (default 1..K)",
    "input_channels": "names of the channels a bundle reads from separate files, or from one file carrying them all "
    "in this order (how MONAI Label hands them over)",
    "runtime": "inference/evaluation: torch (default), torch-bf16, onnxruntime, openvino or openvino-bf16 for the "
    "frozen image encoder (monai_sam_adapt.runtime)",
    "symmetries": "inference/evaluation of 2D bundles: none, mirror (left-right only), flips or dihedral, the "
    "flipped/rotated copies whose predictions are averaged, as the bundle trained "
    "(monai_sam_adapt.engines.SymmetryInferer)",
    "overwrite": "inference: replace existing outputs in output_dir (default false: an existing file is refused)",
    "trained_overrides": "keys replaced when serving weights trained through MONAI Label with train.json, where the "
    "committed model is built otherwise (autosam_kvasir: an ensemble of separately trained models)",
}
#: What :class:`monai_sam_adapt.serving.bundle_task.BundleSegmentationTask` overrides in ``inference.json`` per request.
SERVING_OVERRIDES = (
    "bundle_root",
    "device",
    "network_def",
    "network",
    "data",
    "dataset_dir",
    "output_dir",
    "num_workers",
    "handlers",
    "mask_scale",
)
#: What :class:`monai_sam_adapt.serving.bundle_training.BundleTrainingTask` overrides in ``train.json``.
TRAINING_OVERRIDES = (
    "bundle_root",
    "datalist",
    "dataset_dir",
    "output_dir",
    "ckpt_dir",
    "num_workers",
    "max_epochs",
    "val_interval",
    "batch_size",
    "learning_rate",
    "device",
)


def bundle_root() -> str:
    """The bundle folder of the config being run: the folder that holds the ``configs/`` folder of the first
    ``--config_file`` of ``python -m monai.bundle`` (or of a ``ConfigWorkflow`` built in this process), else the
    working directory (the model zoo's ``"bundle_root": "."``). Every built config's ``bundle_root`` is this
    expression, so a bundle runs from its own folder, from any other with ``--config_file <copy>/configs/...``, and
    ``--bundle_root`` or MONAI Label still set it."""
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigWorkflow) and getattr(owner, "config_root_path", None) is not None:
            return str(_bundle_of(Path(owner.config_root_path)))
        frame = frame.f_back
    files = _config_files_of(sys.argv[1:])
    if files:
        return str(_bundle_of(Path(files[0]).parent))
    return os.getcwd()


def _bundle_of(config_dir: Path) -> Path:
    config_dir = config_dir.resolve()
    return config_dir.parent if config_dir.name == "configs" else config_dir


def _config_files_of(argv: list[str]) -> list[str]:
    from .cli import _files, parse_options

    value = parse_options(argv).get("config_file")
    return _files(value) if value else []


def read_config(bundle_dir: str | os.PathLike, name: str = "inference.json") -> dict:
    """``bundle_dir/configs/<name>`` as a dict, ``bundle_root`` set to ``bundle_dir`` (absolute)."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(f"bundle {bundle_dir.name!r} has no configs/{name} ({path}).")
    config = json.loads(path.read_text())
    config["bundle_root"] = str(bundle_dir.resolve())
    return config


def config_parser(bundle_dir: str | os.PathLike, name: str = "inference.json", **override: Any) -> ConfigParser:
    """A MONAI ``ConfigParser`` of a bundle config (see :func:`read_config`) with ``override`` applied."""
    parser = ConfigParser(read_config(bundle_dir, name))
    parser.update(override)
    return parser


def bundle_workflow(
    bundle_dir: str | os.PathLike, name: str = "train.json", workflow_type: str | None = None, **override: Any
) -> ConfigWorkflow:
    """A MONAI ``ConfigWorkflow`` of a bundle config with the bundle's metadata and logging, readable from any working
    directory; ``override`` as on the command line."""
    cfg = Path(bundle_dir) / "configs"
    wf = ConfigWorkflow(
        config_file=str(cfg / name),
        meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"),
        workflow_type=workflow_type,
    )
    wf.parser.read_config(f=read_config(bundle_dir, name))
    wf.parser.update(override)
    return wf


def find_bundles(root: str | os.PathLike) -> dict[str, Path]:
    """``{name: folder}`` of the bundles under ``root``: folders with ``configs/metadata.json`` and
    ``configs/inference.json`` (``bundles/source`` holds what they are built from, not a bundle)."""
    return {
        p.name: p
        for p in sorted(Path(root).iterdir())
        if (p / "configs" / "inference.json").is_file() and (p / "configs" / "metadata.json").is_file()
    }


def bundle_labels(bundle_dir: str | os.PathLike) -> dict[str, int]:
    """``{label name: value}`` of a bundle: names from ``metadata.json`` (the prediction's ``channel_def``), values
    from the inference config's ``label_values`` (default ``1..K``); a nested region (BraTS' whole tumour
    ``[1, 2, 4]``) is named on the value written for it (:func:`~monai_sam_adapt.transforms.written_label_values`)."""
    cfg = Path(bundle_dir) / "configs"
    meta = json.loads((cfg / "metadata.json").read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    names = [channels[k] for k in sorted(channels, key=int) if str(channels[k]).lower() != "background"]
    values = read_config(bundle_dir).get("label_values") or list(range(1, len(names) + 1))
    if len(values) != len(names):
        raise ValueError(f"{cfg / 'inference.json'}: {len(values)} label_values for {len(names)} labels {names}.")
    from ..transforms import written_label_values

    return dict(zip(names, written_label_values(values)))


def check_bundle(bundle_dir: str | os.PathLike) -> list[str]:
    """What a bundle lacks of the contract (empty when it keeps it): every key of :data:`INFER_KEYS` in
    ``inference.json`` and (when there is one) ``evaluate.json``, of :data:`TRAIN_KEYS` in ``train.json`` when there
    is one; labels in ``metadata.json`` matching ``label_values``."""
    bundle_dir = Path(bundle_dir)
    problems = []
    for name, keys in (("inference.json", INFER_KEYS), ("evaluate.json", INFER_KEYS), ("train.json", TRAIN_KEYS)):
        if name != "inference.json" and not (bundle_dir / "configs" / name).is_file():
            continue
        try:
            parser = config_parser(bundle_dir, name)
            parser.resolve_macro_and_relative_ids()
        except Exception as e:  # noqa: BLE001 - reported as the problem
            problems.append(f"configs/{name}: cannot be read ({e})")
            continue
        problems += [f"configs/{name} has no {k!r} ({what})" for k, what in keys.items() if k not in parser]
    try:
        bundle_labels(bundle_dir)
    except (OSError, KeyError) as e:
        problems.append(f"configs/metadata.json: no labels in network_data_format.outputs.pred.channel_def ({e})")
    except ValueError as e:
        problems.append(str(e))
    return problems
