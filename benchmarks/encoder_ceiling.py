"""How fast the frozen LiteMedSAM image encoder alone runs on this CPU: eager PyTorch against OpenVINO fp32 (two
settings) and bf16, and where OpenVINO's fp32 time goes (its per-layer profile, summed by layer type). This bounds any
end-to-end speed-up of a SAM bundle at fp32.

    python benchmarks/encoder_ceiling.py --out benchmarks/results/encoder_ceiling.json

One random 256 px image, the median of 8 timed calls after one warm-up call, the threads PyTorch uses.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import report  # noqa: E402


def median_s(call, n: int = 8) -> float:
    call()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import openvino as ov
    import torch

    from monai_sam_adapt.runtime import export_onnx
    from monai_sam_adapt.sam import FrozenSAM

    threads = torch.get_num_threads()
    encoder = FrozenSAM("lite_medsam").eval().image_encoder
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        result = {"threads": threads, "eager_fp32_s": median_s(lambda: encoder(x), 4)}
    path = export_onnx(encoder, x)
    core, a = ov.Core(), x.numpy()
    settings = {
        "openvino_fp32_s": {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads},
        "openvino_fp32_latency_hint_s": {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
        "openvino_bf16_s": {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads},
    }
    for name, config in settings.items():
        request = core.compile_model(str(path), "CPU", config).create_infer_request()
        result[name] = median_s(lambda r=request: r.infer({0: a}))
    request = core.compile_model(
        str(path), "CPU", {**settings["openvino_fp32_s"], "PERF_COUNT": True}
    ).create_infer_request()
    for _ in range(3):
        request.infer({0: a})
    by_type = collections.Counter()
    for layer in request.profiling_info:
        by_type[f"{layer.node_type} ({layer.exec_type})"] += layer.real_time.total_seconds() * 1000
    result["openvino_fp32_profile_ms"] = {k: round(v, 1) for k, v in by_type.most_common(10)}
    result["openvino_fp32_profile_total_ms"] = round(sum(by_type.values()), 1)
    result["speedup_openvino_fp32"] = round(result["eager_fp32_s"] / result["openvino_fp32_s"], 2)
    report(result, args.out)


if __name__ == "__main__":
    main()
