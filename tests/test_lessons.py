"""Every lesson's code runs, so no lesson can rot.

Each ``lessons/NN-*.md`` is read top to bottom; its ```` ```python ```` blocks are executed in
order in one namespace, with the repository root as the working directory (as a reader
running them from a clone would).  A lesson that needs the COCO person data says so with the
line ``<!-- needs: data -->`` and is skipped, with the reason, when the data is absent.
"""
import os
import re
from pathlib import Path

import pytest

from conftest import REPO, data_root

LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]-*.md"))
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(text):
    return [m.group(1) for m in FENCE.finditer(text)]


def test_lessons_exist_and_have_code():
    assert LESSONS, "no lessons found in lessons/"
    for path in LESSONS:
        assert python_blocks(path.read_text()), f"{path.name} has no ```python block"


def test_fence_parser_finds_blocks():
    text = "intro\n```python\nx = 1\n```\n```text\nnot code\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x + 1\n"]


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(path, monkeypatch):
    text = path.read_text()
    if "<!-- needs: data -->" in text:
        root = data_root()
        if root is None:
            pytest.skip("lesson needs the COCO person data: set TINYSEG_DATA (see README, 'Data')")
        monkeypatch.setenv("TINYSEG_DATA", str(root))
    monkeypatch.chdir(REPO)
    namespace = {"__name__": f"lesson_{path.stem.replace('-', '_')}"}
    for i, block in enumerate(python_blocks(text), 1):
        code = compile(block, f"{path.name}[block {i}]", "exec")
        exec(code, namespace)  # a failing block fails the test with its traceback
