"""Fast CPU inference of the frozen parts: the SAM image encoder (or a whole network without one) run by ONNX Runtime
or OpenVINO, or by PyTorch under bf16 autocast; the bundles' ``runtime`` key.

Nearly all of an automatic model's time on a CPU is the frozen image encoder (LiteMedSAM's TinyViT: 1.7-1.9 s per
256 px image on 2 cores in eager PyTorch); the prompt encoder, mask decoder and AutoSAM's prompt network are small
and stay in PyTorch. :func:`use_runtime` switches every :class:`~monai_sam_adapt.sam.FrozenSAM` inside a network to
a :class:`RuntimeModule`, which, at its first call (after the bundle has loaded its weights):

1. copies the encoder and folds S-SAM/LoRA adapters into plain layers
   (:func:`~monai_sam_adapt.networks.svd.merge_adapters`),
2. exports it with torch's ONNX exporter (``dynamo=True``) to ``<cache>/<digest>.onnx``, the digest naming the
   weights, the input shape and the torch version, so later runs reuse the file (cache folder:
   ``$MONAI_SAM_CACHE/onnx``, default ``~/.cache/monai_sam_adapt/onnx``),
3. runs it in the chosen runtime. Weights changed in place afterwards (a new checkpoint loaded) trigger a new export.

Runtimes (:data:`RUNTIMES`): ``torch`` (eager fp32, the default), ``torch-bf16`` (``torch.autocast`` on the CPU),
``onnxruntime``, ``openvino`` (fp32 precision hint: the same numbers as PyTorch to ~1e-5), ``openvino-bf16``
(OpenVINO's reduced precision on CPUs with bf16 instructions). Reduced-precision paths change the embedding by a few
percent: their Dice is measured in ``benchmarks/runtimes.py``. These runtimes run on the CPU only.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import convert_to_dst_type
from torch import nn

from .errors import InputError
from .io import atomic_write

__all__ = ["RUNTIMES", "RuntimeModule", "check_runtime", "export_onnx", "use_runtime"]

RUNTIMES = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16")
#: The pip extra that brings each runtime.
_EXTRA = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}


def _cache_dir() -> Path:
    root = os.environ.get("MONAI_SAM_CACHE") or Path.home() / ".cache" / "monai_sam_adapt"
    return Path(root) / "onnx"


def _digest(module: nn.Module, shape: tuple[int, ...]) -> str:
    h = hashlib.sha1(f"{type(module).__qualname__}|{shape}|{torch.__version__}".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy())
    return h.hexdigest()[:20]


def export_onnx(module: nn.Module, example: torch.Tensor, path: str | os.PathLike | None = None) -> Path:
    """Export a frozen module (adapters merged, eval mode, CPU, fp32) to ONNX with torch's dynamo exporter; returns
    the file. Without ``path`` the file goes to the cache folder under a digest of the weights and input shape, and
    an existing file is reused."""
    from .networks.svd import merge_adapters

    frozen = copy.deepcopy(module).cpu().float().eval()
    merge_adapters(frozen)
    frozen.requires_grad_(False)
    example = example.detach().cpu().float()
    out = Path(path) if path else _cache_dir() / f"{_digest(frozen, tuple(example.shape))}.onnx"
    if path is None and out.is_file():
        return out
    try:
        import onnxscript  # noqa: F401 - torch's dynamo exporter needs it
    except ImportError as e:
        raise InputError(
            "exporting to ONNX needs the 'onnx' and 'onnxscript' packages: pip install 'monai_sam_adapt[onnxruntime]'"
        ) from e
    with atomic_write(out) as tmp:
        program = torch.onnx.export(frozen, (example,), dynamo=True, external_data=False, verbose=False)
        program.save(str(tmp))
    return out


class RuntimeModule(nn.Module):
    """A frozen module run by another runtime; same call and outputs as the module (one tensor in, one out).

    Args:
        module: the frozen module (kept; its weights are read at each export).
        runtime: one of :data:`RUNTIMES`.
        num_threads: CPU threads of the runtime. Default ``torch.get_num_threads()``.
    """

    def __init__(self, module: nn.Module, runtime: str, num_threads: int | None = None) -> None:
        super().__init__()
        check_runtime(runtime)
        object.__setattr__(self, "module", module)  # not a sub-module: its state dict stays the network's
        self.runtime = runtime
        self.num_threads = num_threads
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._stamp: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def _weights_version(self) -> tuple[int, ...]:
        """Changes when any weight is modified in place (``load_state_dict`` copies into the tensors)."""
        return tuple(t._version for t in self.module.state_dict(keep_vars=True).values())

    def _session(self, example: torch.Tensor):
        with self._lock:
            stamp = self._weights_version()
            if stamp != self._stamp:
                self._compiled.clear()
                self._stamp = stamp
            shape = tuple(example.shape[1:])
            if shape not in self._compiled:
                path = export_onnx(self.module, example[:1])
                self._compiled[shape] = _load(path, self.runtime, self.num_threads or torch.get_num_threads())
            return self._compiled[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runtime == "torch":
            return self.module(x)
        if self.runtime == "torch-bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.module(x).float()
        if x.device.type != "cpu":
            raise InputError(
                f"runtime {self.runtime!r} runs on the CPU; the input is on {x.device}: use runtime 'torch'."
            )
        run = self._session(x)
        plain = x.as_tensor() if isinstance(x, MetaTensor) else x
        outs = [run(plain[i : i + 1].detach().float().contiguous().numpy()) for i in range(x.shape[0])]
        out = torch.from_numpy(np.concatenate(outs, 0)).to(x.dtype)
        if isinstance(x, MetaTensor):  # as an eager module's output: the input's metadata travels on (also batched)
            out = convert_to_dst_type(out, x)[0]
        return out


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else a ``ValueError`` listing them."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}.")
    return runtime


def _load(path: Path, runtime: str, threads: int):
    """A callable ``numpy (1, ...) -> numpy`` running the ONNX file in ``runtime``."""
    missing = f"runtime {runtime!r} needs its extra: pip install 'monai_sam_adapt[{_EXTRA[runtime]}]'"
    if runtime == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise InputError(missing) from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda a: session.run(None, {name: a})[0]
    try:
        import openvino as ov
    except ImportError as e:
        raise InputError(missing) from e
    precision = "bf16" if runtime == "openvino-bf16" else "f32"
    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
    )
    request = compiled.create_infer_request()
    return lambda a: request.infer({0: a})[0].copy()


def use_runtime(network: nn.Module, runtime: str = "torch") -> nn.Module:
    """Run the frozen image encoder of every :class:`~monai_sam_adapt.sam.FrozenSAM` in ``network`` (or, when it has
    none, the whole network, e.g. a MONAI UNet) with ``runtime``; returns ``network``. ``"torch"`` changes nothing.
    For inference only: the exported graph has no gradients."""
    from .sam.backbones import FrozenSAM

    check_runtime(runtime)
    sams = [m for m in network.modules() if isinstance(m, FrozenSAM)]
    for sam in sams:
        sam.encoder_runtime = None if runtime == "torch" else RuntimeModule(sam.image_encoder, runtime)
    if sams or runtime == "torch":
        return network
    return _WholeNetwork(network, runtime)


class _WholeNetwork(nn.Module):
    """A network without a SAM encoder run entirely by a runtime; its state dict is the network's (checkpoints load
    into it as before)."""

    def __init__(self, network: nn.Module, runtime: str) -> None:
        super().__init__()
        self.network = network
        self.fast = RuntimeModule(network, runtime)

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) if torch.is_grad_enabled() and self.training else self.fast(x)


def export_bundle(
    bundle_dir: str | os.PathLike, output: str | os.PathLike, model_path: str | os.PathLike | None = None
) -> Path:
    """Export a bundle's frozen image encoder, with its trained weights (S-SAM's singular values merged), to ONNX;
    for a bundle without a SAM encoder (``unet_kvasir``), the whole network. Returns the written file."""
    from ignite.handlers import Checkpoint

    from .bundle import config_parser
    from .sam.backbones import FrozenSAM, get_spec
    from .sam.checkpoint import read_checkpoint

    parser = config_parser(bundle_dir, "inference.json", runtime="torch", device="$torch.device('cpu')")
    network = parser.get_parsed_content("network")
    path = model_path or parser.get_parsed_content("model_path")
    if path:
        Checkpoint.load_objects(to_load={"model": network}, checkpoint=read_checkpoint(path, "model_path"))
    network.eval()
    sams = [m for m in network.modules() if isinstance(m, FrozenSAM)]
    if sams:
        module, size = sams[0].image_encoder, sams[0].image_size
    else:  # every network here reads SAM-preprocessed 3-channel images
        module = network
        size = parser.get("image_size") or get_spec(parser.get("backbone") or "lite_medsam").image_size
    return export_onnx(module, torch.rand(1, 3, size, size), output)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m monai_sam_adapt.runtime",
        description="Export a bundle's frozen image encoder (S-SAM adapters merged; the whole network for a bundle "
        "without SAM) to ONNX, as the runtimes use it.",
    )
    p.add_argument("bundle", help="bundle folder, e.g. bundles/ssam_glas")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--model_path", default=None, help="weights (default: the bundle's models/model.pt)")
    a = p.parse_args(argv)
    print(export_bundle(a.bundle, a.output, a.model_path))


if __name__ == "__main__":
    main()
