"""Tiny served bundles and synthetic images for the serving tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_sam_adapt.bundle import config_parser
from tests.bundles.helpers import REPO, tiny_network_override


def tiny_bundle(root: Path, bundle: str = "ssam_lits", name: str | None = None, labels=("liver", "tumor")) -> Path:
    """A copy of ``bundle``'s configs whose network is the same class on a tiny untrained SAM, with its
    ``models/model.pt`` saved from that network: the serving plumbing at millisecond cost (no accuracy meaning)."""
    dst = root / (name or f"{bundle}_tiny")
    shutil.copytree(REPO / "bundles" / bundle / "configs", dst / "configs")
    override = tiny_network_override("monai_sam_adapt.networks.SSAM", label_names=list(labels), method="svd")
    for cfg in ("inference.json", "train.json", "evaluate.json"):
        path = dst / "configs" / cfg
        if path.exists():
            c = json.loads(path.read_text())
            c.update(override)
            path.write_text(json.dumps(c, indent=2))
    net = config_parser(dst, "inference.json").get_parsed_content("network_def")
    (dst / "models").mkdir()
    torch.save(net.state_dict(), dst / "models" / "model.pt")
    return dst


def oblique_volume(path: Path, shape=(40, 36, 5), seed=0) -> Path:
    """A CT-like volume with an oblique affine and a bright ellipsoid."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    aff = np.eye(4)
    aff[:3, :3] = q * np.asarray([0.8, 0.9, 2.5])
    aff[:3, 3] = rng.uniform(-50, 50, 3)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = (z / 0.6) ** 2 + (y / 0.6) ** 2 < 1
    ct = rng.normal(-100, 20, shape) + 160 * body
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct.astype(np.int16), aff), path)
    return path
