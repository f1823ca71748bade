"""The contract between the bundles under ``bundles/`` and the code that runs, serves and trains them.

What lives here: the config keys a bundle must define (:data:`INFER_KEYS`, :data:`TRAIN_KEYS`, modelled on MONAI Label's
``BundleConstants``), the keys our server and MONAI Label training override (:data:`SERVING_OVERRIDES`,
:data:`TRAINING_OVERRIDES`), reading a bundle's config from any working directory (:func:`read_config`,
:func:`bundle_workflow`), the check that a bundle keeps the contract (:func:`check_bundle`) and the command-line
guard every bundle's ``initialize`` starts with (:func:`guard_cli`: unknown options refused, one readable failure).
What does not: the bundles' JSON itself (``bundles/``), the MONAI Label tasks that use this
(:mod:`monai_sam_adapt.serving`).
"""

from .cli import guard_cli
from .contract import (
    INFER_KEYS,
    OPTIONAL_KEYS,
    SERVING_OVERRIDES,
    TRAIN_KEYS,
    TRAINING_OVERRIDES,
    bundle_labels,
    bundle_root,
    bundle_workflow,
    check_bundle,
    config_parser,
    find_bundles,
    read_config,
)

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
    "guard_cli",
    "read_config",
]
