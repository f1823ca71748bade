"""Shared fixtures: where the real data is, and tiny synthetic datasets."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MONAI_SAM_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", category=FutureWarning, module="timm")


def data_path(*parts: str) -> Path:
    """A path under the real-data folder, or skip the test with the reason."""
    p = DATA_DIR.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data {p} is absent (set MONAI_SAM_DATA to the shared data folder to run this test)")
    return p


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture
def polyp_folder(tmp_path, rng):
    """Six synthetic RGB 'polyp' images of different sizes with masks, in Kvasir-SEG's layout, and a datalist."""
    import json

    root = tmp_path / "kvasir"
    ids = []
    for i, (h, w) in enumerate([(48, 64), (64, 40), (50, 50), (70, 60), (40, 72), (64, 64)]):
        m = disk(h, w, h * 0.5, w * 0.45, min(h, w) * 0.3)
        img = (rng.uniform(0, 80, (h, w, 3)) + m[..., None] * np.array([150, 60, 40])).astype(np.uint8)
        write_png(root / "images" / f"case{i}.png", img)
        write_png(root / "masks" / f"case{i}.png", (m * 255).astype(np.uint8))
        ids.append(f"case{i}")
    (root / "splits.json").write_text(json.dumps({"train": ids[:3], "val": ids[3:4], "test": ids[4:]}))
    return root


TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_clip(tmp_path):
    """A tiny random open_clip model saved as a real checkpoint would be: ``(checkpoint file, model-config file)``."""
    import json

    import open_clip

    cfg = tmp_path / "tiny-clip-test.json"
    cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test", pretrained=None)
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return ckpt, cfg
