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
