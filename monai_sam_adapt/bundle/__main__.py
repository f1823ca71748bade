"""``python -m monai_sam_adapt.bundle build [--check] [--bundles_dir bundles]``.

See :mod:`monai_sam_adapt.bundle.build`.
"""

from __future__ import annotations

import argparse
import sys

from .build import build_bundles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_sam_adapt.bundle",
        description="Write each bundle's configs from bundles/source (shared bases expanded, bundle_root from the "
        "config's folder, the datalist copied in), so that every bundle folder runs wherever it is copied.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write bundles/<name>/configs from bundles/source")
    build.add_argument("--bundles_dir", default="bundles", help="the bundles folder (default: ./bundles)")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 naming configs that are not built")
    args = parser.parse_args(argv)
    try:
        changed = build_bundles(args.bundles_dir, check=args.check)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check and changed:
        names = "\n  ".join(map(str, changed))
        print(
            f"not built from bundles/source (edit the source, then run python -m monai_sam_adapt.bundle build):\n  "
            f"{names}",
            file=sys.stderr,
        )
        return 1
    if args.check:
        print("every bundle's configs are built from bundles/source")
    else:
        print("\n".join(f"written: {p}" for p in changed) or "nothing to write: every bundle is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
