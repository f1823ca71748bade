"""Fast CPU inference: a bundle's network run by ONNX Runtime or OpenVINO (or its frozen encoder under PyTorch's bf16
autocast); the bundles' ``runtime`` key.

:func:`use_runtime` switches a network to a runtime. At the first call (after the bundle has loaded its weights) the
network, or where it cannot be one static graph its frozen SAM image encoder, is

1. copied, with S-SAM/LoRA adapters folded into plain layers (:func:`~monai_sam_adapt.networks.svd.merge_adapters`),
2. exported with torch's ONNX exporter (``dynamo=True``) to ``<cache>/<digest>.onnx``, the digest naming the weights,
   the settings, the input shapes and the torch version, so later runs reuse the file (cache folder:
   ``$MONAI_SAM_CACHE/onnx``, default ``~/.cache/monai_sam_adapt/onnx``),
3. run in the chosen runtime. Weights changed in place afterwards (a new checkpoint loaded) trigger a new export.

Whole networks: AutoSAM and its ensembles (the g's, the frozen encoder, the prompt path, the mask decoder, h, the
average), S-SAM with its label names (their prompt tokens are constants of the graph), box-prompted SAM (one graph per
number of boxes) and networks without SAM (a MONAI UNet). Calls a static graph cannot serve (other label names,
AutoSAM's cascade, gradients) run eagerly with the encoder still in the runtime.

Runtimes (:data:`RUNTIMES`): ``torch`` (eager fp32, the default), ``torch-bf16`` (``torch.autocast`` on the encoder),
``onnxruntime``, ``openvino`` (fp32 precision hint: PyTorch's numbers to ~1e-5), ``openvino-bf16`` (OpenVINO's
reduced precision on CPUs with bf16 instructions), ``openvino-int8`` (the encoder's layers quantized to int8 by NNCF,
calibrated on training images with ``python -m monai_sam_adapt.runtime quantize``). Reduced-precision paths move Dice
slightly: ``benchmarks/runtimes.py`` measures it. These runtimes run on the CPU only.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import convert_to_dst_type
from torch import nn

from .errors import InputError
from .io import atomic_write

__all__ = [
    "RUNTIMES",
    "RuntimeModule",
    "calibrating",
    "check_runtime",
    "export_onnx",
    "int8_path",
    "quantize_bundle",
    "quantize_onnx",
    "use_runtime",
]

RUNTIMES = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8")
#: The pip extra that brings each runtime.
_EXTRA = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "openvino-bf16": "openvino",
    "openvino-int8": "openvino",
}
#: While :func:`calibrating` runs: the inputs each exported graph received, by its ONNX file.
_RECORDING: dict[Path, _Reservoir] | None = None


def _cache_dir() -> Path:
    root = os.environ.get("MONAI_SAM_CACHE") or Path.home() / ".cache" / "monai_sam_adapt"
    return Path(root) / "onnx"


def _settings(module: nn.Module) -> str:
    """The plain settings of every sub-module (``output``, ``cascade``, ``prompt_names``, sizes...): a network whose
    graph they change must not reuse another's export."""
    plain = (bool, int, float, str, type(None))
    out = []
    for name, m in module.named_modules():
        for k, v in sorted(vars(m).items()):
            if k.startswith("_") or k == "training":
                continue
            if isinstance(v, plain) or (isinstance(v, (list, tuple)) and all(isinstance(i, plain) for i in v)):
                out.append(f"{name}.{k}={v!r}")
    return ";".join(out)


def _digest(module: nn.Module, shapes: tuple[tuple[int, ...], ...]) -> str:
    """Names the export: module type, settings, input shapes, torch version and every weight and buffer (frozen ones
    too: a trained-parts state dict leaves them out)."""
    h = hashlib.sha1(f"{type(module).__qualname__}|{shapes}|{torch.__version__}|{_settings(module)}".encode())
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy())
    return h.hexdigest()[:20]


@contextlib.contextmanager
def _plain_encoders(module: nn.Module):
    """Every FrozenSAM below ``module`` runs its own eager encoder inside the block (an export traces the network,
    not a runtime already attached to its encoder)."""
    from .sam.backbones import FrozenSAM

    sams = [m for m in module.modules() if isinstance(m, FrozenSAM)]
    saved = [m.encoder_runtime for m in sams]
    for m in sams:
        m.encoder_runtime = None
    try:
        yield
    finally:
        for m, r in zip(sams, saved):
            m.encoder_runtime = r


def export_onnx(
    module: nn.Module, example: torch.Tensor | Sequence[torch.Tensor], path: str | os.PathLike | None = None
) -> Path:
    """Export a frozen module (adapters merged, eval mode, CPU, fp32) to ONNX with torch's dynamo exporter; returns
    the file. ``example``: the input tensor, or the tuple of positional inputs. Without ``path`` the file goes to the
    cache folder under a digest of the weights, settings and input shapes, and an existing file is reused."""
    from .networks.svd import merge_adapters

    examples = tuple(t.detach().cpu().float() for t in ((example,) if torch.is_tensor(example) else example))
    with _plain_encoders(module):
        frozen = copy.deepcopy(module).cpu().float().eval()
    merge_adapters(frozen)
    frozen.requires_grad_(False)
    out = Path(path) if path else _cache_dir() / f"{_digest(frozen, tuple(tuple(t.shape) for t in examples))}.onnx"
    if path is None and out.is_file():
        return out
    try:
        import onnxscript  # noqa: F401 - torch's dynamo exporter needs it
    except ImportError as e:
        raise InputError(
            "exporting to ONNX needs the 'onnx' and 'onnxscript' packages: pip install 'monai_sam_adapt[onnxruntime]'"
        ) from e
    with atomic_write(out) as tmp, torch.no_grad():
        program = torch.onnx.export(frozen, examples, dynamo=True, external_data=False, verbose=False)
        program.save(str(tmp))
    return out


class RuntimeModule(nn.Module):
    """A frozen module run by another runtime; same call and outputs as the module (tensors in, one tensor out, the
    first input's batch size; every input is split along it).

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
        self._compiled: dict[tuple[tuple[int, ...], ...], Any] = {}
        self._stamp: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def _weights_version(self) -> tuple[int, ...]:
        """Changes when any weight is modified in place (``load_state_dict`` copies into the tensors)."""
        return tuple(t._version for t in self.module.state_dict(keep_vars=True).values() if torch.is_tensor(t))

    def _session(self, examples: Sequence[torch.Tensor]):
        with self._lock:
            stamp = self._weights_version()
            if stamp != self._stamp:
                self._compiled.clear()
                self._stamp = stamp
            shape = tuple(tuple(t.shape[1:]) for t in examples)
            if shape not in self._compiled:
                path = export_onnx(self.module, tuple(t[:1] for t in examples))
                self._compiled[shape] = _load(path, self.runtime, self.num_threads or torch.get_num_threads())
            return self._compiled[shape]

    def forward(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        if self.runtime == "torch":
            return self.module(x, *others)
        if self.runtime == "torch-bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.module(x, *others).float()
        if x.device.type != "cpu":
            raise InputError(
                f"runtime {self.runtime!r} runs on the CPU; the input is on {x.device}: use runtime 'torch'."
            )
        inputs = [t.as_tensor() if isinstance(t, MetaTensor) else t for t in (x, *others)]
        run = self._session(inputs)
        arrays = [t.detach().float().contiguous().numpy() for t in inputs]
        outs = [run(*(a[i : i + 1] for a in arrays)) for i in range(x.shape[0])]
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
    """A callable ``numpy (1, ...), ... -> numpy`` running the ONNX file in ``runtime``."""
    missing = f"runtime {runtime!r} needs its extra: pip install 'monai_sam_adapt[{_EXTRA[runtime]}]'"
    if runtime == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise InputError(missing) from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *a: session.run(None, dict(zip(names, a)))[0]
    try:
        import openvino as ov
    except ImportError as e:
        raise InputError(missing) from e
    source = str(path)
    if runtime == "openvino-int8":
        if _RECORDING is not None:
            return _recorder(path, _load(path, "openvino", threads))
        source = str(int8_path(path))
        if not Path(source).is_file():
            raise InputError(
                f"runtime 'openvino-int8' runs a model quantized on training images, and none was made for this "
                f"network and input size ({Path(source).name} is not in {path.parent}): run "
                "python -m monai_sam_adapt.runtime quantize <bundle folder> --dataset_dir <its data> --config <the "
                "config you run> once."
            )
    precision = "bf16" if runtime == "openvino-bf16" else "f32"
    compiled = ov.Core().compile_model(
        source, "CPU", {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
    )
    request = compiled.create_infer_request()
    return lambda *a: request.infer(dict(enumerate(a)))[0].copy()


# ---------------------------------------------------------------------- int8: post-training quantization
def int8_path(path: str | os.PathLike) -> Path:
    """Where the int8 OpenVINO model quantized from the ONNX file ``path`` is kept (beside it)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8.xml")


class _Reservoir:
    """At most ``size`` of the inputs seen, each kept with the same chance (a seeded reservoir: deterministic)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        import random

        self.size, self.seen, self.items, self._rng = size, 0, [], random.Random(seed)

    def add(self, item: tuple[np.ndarray, ...]) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


def _recorder(path: Path, run):
    """``run`` that also keeps its inputs for calibration (``run`` once per output shape; the outputs while recording
    are zeros of that shape: calibration needs the inputs only, and the bundle's pipeline stays cheap)."""
    store = _RECORDING[path]
    shapes: dict[tuple, tuple] = {}

    def record(*a: np.ndarray) -> np.ndarray:
        store.add(tuple(x.copy() for x in a))
        key = tuple(x.shape for x in a)
        if key not in shapes:
            shapes[key] = run(*a).shape
        return np.zeros(shapes[key], np.float32)

    return record


@contextlib.contextmanager
def calibrating(samples: int = 64):
    """Inside the block, networks under runtime ``openvino-int8`` record (up to ``samples`` of) their inputs instead of
    computing; yields ``{onnx file: reservoir}`` for :func:`quantize_onnx`."""
    global _RECORDING
    _RECORDING = collections.defaultdict(lambda: _Reservoir(int(samples)))
    try:
        yield _RECORDING
    finally:
        _RECORDING = None


def quantize_onnx(path: str | os.PathLike, samples: Sequence[tuple[np.ndarray, ...]]) -> Path:
    """OpenVINO post-training int8 quantization (NNCF) of the exported graph ``path``, calibrated on ``samples`` (the
    graph's inputs, as the network received them); writes and returns :func:`int8_path`. Only the frozen image
    encoder's layers are quantized when the graph holds more than the encoder (AutoSAM's g, the decoders and S-SAM's
    prompt layers stay fp32)."""
    try:
        import nncf
        import onnx
        import openvino as ov
    except ImportError as e:
        raise InputError("int8 quantization needs nncf and openvino: pip install 'monai_sam_adapt[openvino]'") from e
    if not samples:
        raise ValueError(f"no calibration inputs recorded for {path}.")
    path = Path(path)
    graph = onnx.load(str(path))
    encoder = []
    for node in graph.graph.node:
        scopes = next((m.value for m in node.metadata_props if m.key == "pkg.torch.onnx.name_scopes"), "")
        if "image_encoder" in scopes:
            encoder.append(node)
    for node in encoder:
        node.name = f"image_encoder/{node.name}"
    out = int8_path(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        renamed = Path(tmp) / path.name
        onnx.save(graph, str(renamed))
        model = ov.Core().read_model(str(renamed))
        ignored = nncf.IgnoredScope(patterns=["^(?!image_encoder/).*"], validate=False) if encoder else None
        quantized = nncf.quantize(
            model,
            nncf.Dataset(list(samples), lambda item: list(item)),
            subset_size=len(samples),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=ignored,
        )
        ov.save_model(quantized, str(Path(tmp) / out.name))
        os.replace(Path(tmp) / out.with_suffix(".bin").name, out.with_suffix(".bin"))
        os.replace(Path(tmp) / out.name, out)
    return out


def quantize_bundle(
    bundle_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    num_images: int = 32,
    samples: int = 64,
    config: str = "inference.json",
    **override: Any,
) -> list[Path]:
    """Quantize what a bundle's ``config`` runs (the whole network where it exports whole, else its frozen encoder) to
    int8 for the ``openvino-int8`` runtime, calibrated on the first ``num_images`` items of the datalist's
    ``training`` split only (never validation or test), at most ``samples`` network inputs (for 3D volumes: slices)
    drawn from them. Returns the int8 models written (in the export cache, found again by the runtime). A config
    whose network differs (AutoSAM's ``evaluate.json`` also returns h's masks) is quantized on its own."""
    import json

    from .bundle import bundle_workflow

    overrides = dict(override)
    if dataset_dir is not None:
        overrides["dataset_dir"] = str(dataset_dir)
    if datalist is not None:
        overrides["datalist"] = str(datalist)
    # the config's own datalist reading (a file or a layout such as "brats"), on the training split
    wf = bundle_workflow(bundle_dir, config, **{**overrides, "datalist_key": "training"})
    try:
        items = list(wf.parser.get_parsed_content("data"))
    except Exception as e:  # noqa: BLE001 - any reason the training items cannot be read is the user's to fix
        raise InputError(f"{bundle_dir}: cannot read the training items to calibrate on: {e}") from e
    if not items:
        raise InputError(
            f"{bundle_dir}: no 'training' items to calibrate on (int8 is calibrated on training data only)."
        )
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "calibration.json"
        subset.write_text(json.dumps({"training": items[: int(num_images)]}, default=str))
        run = {
            **overrides,
            "datalist": str(subset),
            "datalist_key": "training",
            "output_dir": str(Path(tmp) / "out"),
            "runtime": "openvino-int8",
            "num_workers": 0,
            "device": "$torch.device('cpu')",
        }
        wf = bundle_workflow(bundle_dir, config, **run)
        with calibrating(samples) as recorded:
            wf.initialize()
            wf.run()
            wf.finalize()
    return [quantize_onnx(path, store.items) for path, store in recorded.items()]


def use_runtime(network: nn.Module, runtime: str = "torch") -> nn.Module:
    """Run ``network``'s inference with ``runtime``; returns the network to use (``network`` itself, or a wrapper
    with the same state dict). ``"torch"`` changes nothing.

    Every :class:`~monai_sam_adapt.sam.FrozenSAM` inside runs its frozen image encoder in the runtime. With an exported
    runtime (ONNX Runtime, OpenVINO), a network that says it can be exported whole (``exportable``: AutoSAM and its
    ensemble without the cascade, S-SAM with its configured label names, box-prompted SAM) or that has no SAM encoder
    (a MONAI UNet) is run whole by the runtime: one graph from the image (and boxes) to the logits. Calls it cannot
    serve that way (other label names, gradients in training) run eagerly, with the encoder still in the runtime."""
    from .sam.backbones import FrozenSAM

    check_runtime(runtime)
    sams = [m for m in network.modules() if isinstance(m, FrozenSAM)]
    for sam in sams:
        sam.encoder_runtime = None if runtime == "torch" else RuntimeModule(sam.image_encoder, runtime)
    if runtime.startswith("torch") and (sams or runtime == "torch"):
        return network  # autocast on the encoder only: the small trained parts stay fp32
    if sams and not getattr(network, "exportable", False):
        return network
    return _WholeNetwork(network, runtime)


class _Bound(nn.Module):
    """``network`` called with its first input positional and the others under fixed keyword names (an export takes
    positional inputs only)."""

    def __init__(self, network: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.network, self.names = network, names

    def forward(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        return self.network(x, **dict(zip(self.names, others)))


class _WholeNetwork(nn.Module):
    """A network run entirely by a runtime (one export per set of keyword inputs); its state dict is the network's
    (checkpoints load into it as before). Training with gradients, and calls with other than tensor inputs, run the
    network itself."""

    def __init__(self, network: nn.Module, runtime: str) -> None:
        super().__init__()
        self.network = network
        self.runtime = runtime
        self._fast: dict[tuple[str, ...], RuntimeModule] = {}

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        eager = (torch.is_grad_enabled() and self.training) or args
        if eager or not all(torch.is_tensor(v) for v in kwargs.values()):
            return self.network(x, *args, **kwargs)
        names = tuple(sorted(kwargs))
        if names not in self._fast:
            self._fast[names] = RuntimeModule(_Bound(self.network, names), self.runtime)
        return self._fast[names](x, *(kwargs[n] for n in names))


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
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["quantize"]:
        q = argparse.ArgumentParser(
            prog="python -m monai_sam_adapt.runtime quantize",
            description="Quantize a bundle's network (its frozen image encoder's layers) to int8 for the "
            "'openvino-int8' runtime, calibrated on training images only; the model goes to the export cache.",
        )
        q.add_argument("bundle", help="bundle folder, e.g. bundles/ssam_glas")
        q.add_argument("--dataset_dir", default=None, help="the bundle's data folder (default: its dataset_dir)")
        q.add_argument("--datalist", default=None, help="datalist whose 'training' items calibrate (default: its own)")
        q.add_argument("--num_images", type=int, default=32, help="first N training items read (default 32)")
        q.add_argument("--samples", type=int, default=64, help="network inputs calibrated on (default 64)")
        q.add_argument("--config", default="inference.json", help="the config to run in int8 (default inference.json)")
        a = q.parse_args(argv[1:])
        for path in quantize_bundle(a.bundle, a.dataset_dir, a.datalist, a.num_images, a.samples, a.config):
            print(path)
        return
    p = argparse.ArgumentParser(
        prog="python -m monai_sam_adapt.runtime",
        description="Export a bundle's frozen image encoder (S-SAM adapters merged; the whole network for a bundle "
        "without SAM) to ONNX, as the runtimes use it. 'python -m monai_sam_adapt.runtime quantize BUNDLE ...' "
        "quantizes a bundle for the 'openvino-int8' runtime.",
    )
    p.add_argument("bundle", help="bundle folder, e.g. bundles/ssam_glas")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--model_path", default=None, help="weights (default: the bundle's models/model.pt)")
    a = p.parse_args(argv)
    print(export_bundle(a.bundle, a.output, a.model_path))


if __name__ == "__main__":  # the package's module, not this __main__ copy: the bundles' configs use that one
    from monai_sam_adapt.runtime import main as _main

    _main()
