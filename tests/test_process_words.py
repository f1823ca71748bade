"""What users read says what the software does, never how it was built: no session or issue numbers, home-folder
run paths or temporary-folder paths, no "not adopted". Checked where the text is already clean (the README, the
package's code, docstrings and comments, `docs/`, bundle metadata and licences, benchmark docstrings); the bundle docs
join once their experiment history has moved to `docs/experiments.md`."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import REPO

PROCESS_WORDS = re.compile(
    r"\b[Ss]essions? \d+|\b[Ii]ssues? \d+|~/runs|(?<![\w.])/tmp/|\bnot adopted\b|\bclosing note\b"
)


def _texts():
    for path in sorted((REPO / "monai_sam_adapt").rglob("*.py")):
        yield path, path.read_text()
    for pattern in ("README.md", "docs/**/*.md", "bundles/*/configs/metadata.json", "bundles/*/docs/data_license.txt"):
        for path in sorted(REPO.glob(pattern)):
            yield path, path.read_text()
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        yield path, ast.get_docstring(ast.parse(path.read_text())) or ""


TEXTS = list(_texts())


@pytest.mark.parametrize("path, text", TEXTS, ids=[str(p.relative_to(REPO)) for p, _ in TEXTS])
def test_no_process_words_in_what_users_read(path, text):
    found = [m.group(0) for m in PROCESS_WORDS.finditer(text)]
    assert not found, f"{path.relative_to(REPO)}: {found[:5]}"


def test_the_pattern_catches_what_it_is_for():
    for bad in ["session 12", "Issue 7", "~/runs/x", "see /tmp/out", "not adopted", "the closing note"]:
        assert PROCESS_WORDS.search(bad), bad
    for fine in ["a MONAI Label session", "issues a warning", "tempfile.gettempdir()", "nodes/tmp/x"]:
        assert not PROCESS_WORDS.search(fine), fine
