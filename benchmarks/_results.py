"""How a benchmark reports: its result as JSON on stdout and, with ``--out``, in a file, with the command that made
it as the first field (so every number in the README can name its command)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def report(result: dict, out: str | None) -> None:
    """Print ``result`` (with ``command`` first) and write it to ``out`` if given."""
    script = Path(sys.argv[0])
    command = f"python benchmarks/{script.name} " + shlex.join(sys.argv[1:])
    text = json.dumps({"command": command.strip(), **result}, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def paired_gain(new, reference) -> dict:
    """Per-image Dice of ``new`` against ``reference`` over the same images: the mean difference, its standard error
    (sample standard deviation of the differences over the square root of their number) and how many images gain or
    lose more than 0.05. How the docs decide whether a model or setting chosen on validation beats the one before."""
    import numpy as np

    diff = np.asarray(new, dtype=float) - np.asarray(reference, dtype=float)
    return {
        "mean": round(float(diff.mean()), 4),
        "standard_error": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4) if len(diff) > 1 else None,
        "gain_over_0.05": int((diff > 0.05).sum()),
        "loss_over_0.05": int((diff < -0.05).sum()),
    }
