"""Every lesson's code runs and prints what the lesson says it prints, so no lesson can rot.

Each ``lessons/NN-*.md`` is read top to bottom; its ```` ```python ```` blocks are executed in
order in one namespace, with the repository root as the working directory (as a reader
running them from a clone would).  A lesson that needs the COCO person data says so with the
line ``<!-- needs: data -->`` and is skipped, with the reason, when the data is absent.

A ```` ```text ```` block right after a python block is that block's output, and must equal
what the block prints now (trailing spaces and blank lines aside): a number in a lesson that
no longer comes out of the code fails the test.  Outputs that change from run to run or
from machine to machine (timings, memory peaks, rounding-level gradient-check errors,
paths) are fenced ```` ```text varies ```` and only shown, not compared.  Likewise every
figure a lesson shows is drawn again (into a temporary folder, never over the committed
one) and must have the same pixels as the committed file, except the figures of timings
and memory peaks (``FIGURES_THAT_VARY``).
"""
import contextlib
import difflib
import io
import os
import re
from pathlib import Path

import pytest

from conftest import REPO, data_root

LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]-*.md"))
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```\n?", re.S | re.M)
OUTPUT = re.compile(r"\s*```text( varies)?[ \t]*\n(.*?)^```", re.S | re.M)


def python_blocks(text):
    return [m.group(1) for m in FENCE.finditer(text)]


def blocks_with_output(text):
    """``[(code, expected output or None, varies)]``: each python block and the text block
    right after it, if any (only blank space between the two)."""
    out = []
    for m in FENCE.finditer(text):
        o = OUTPUT.match(text, m.end())
        if o is None:
            out.append((m.group(1), None, False))
        else:
            out.append((m.group(1), o.group(2), bool(o.group(1))))
    return out


def normalise(output):
    """Trailing spaces of each line and trailing blank lines do not count."""
    return "\n".join(line.rstrip() for line in output.rstrip().splitlines())


def test_lessons_exist_and_have_code():
    assert LESSONS, "no lessons found in lessons/"
    for path in LESSONS:
        assert python_blocks(path.read_text()), f"{path.name} has no ```python block"


def test_fence_parser_finds_blocks():
    text = "intro\n```python\nx = 1\n```\n```text\nnot code\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x + 1\n"]


def test_fence_parser_pairs_blocks_with_their_output():
    text = ("```python\nprint(1)\n```\n\n```text\n1\n```\n"
            "prose\n```python\nprint(2)\n```\nprose, so no output block\n```text\n2\n```\n"
            "```python\nprint(3)\n```\n```text varies\n3.1 s\n```\n")
    assert blocks_with_output(text) == [("print(1)\n", "1\n", False), ("print(2)\n", None, False),
                                        ("print(3)\n", "3.1 s\n", True)]
    assert normalise("a  \nb\n\n") == normalise("a\nb") == "a\nb"


#: Figures of measurements that change from run to run: timings (02) and memory peaks (08).
FIGURES_THAT_VARY = {"02-timing.png", "08-depth.png"}


def same_pixels(a, b):
    """Two PNG files hold the same picture (bytes may differ with the Pillow version)."""
    from PIL import Image
    with Image.open(a) as x, Image.open(b) as y:
        return x.size == y.size and x.mode == y.mode and x.tobytes() == y.tobytes()


def repository_view(tmp_path):
    """A working directory that looks like the repository root (every entry a symlink into
    it) except that ``lessons/figures`` is a new empty folder: the lessons read the real
    files, and the figures they draw go to ``tmp_path``, not over the committed ones."""
    view = tmp_path / "repo"
    (view / "lessons" / "figures").mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name != "lessons":
            (view / entry.name).symlink_to(entry)
    for entry in (REPO / "lessons").iterdir():
        if entry.name != "figures":
            (view / "lessons" / entry.name).symlink_to(entry)
    return view


def test_every_figure_a_lesson_shows_is_committed():
    for path in LESSONS:
        for name in re.findall(r"\]\((figures/[^)]+)\)", path.read_text()):
            assert (REPO / "lessons" / name).is_file(), f"{path.name} shows {name}, which is missing"


@pytest.mark.slow
@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=[pytest.mark.data] if "<!-- needs: data -->" in p.read_text()
                 else []) for p in LESSONS])
def test_lesson_runs(path, monkeypatch, tmp_path):
    text = path.read_text()
    if "<!-- needs: data -->" in text:
        root = data_root()
        if root is None:
            pytest.skip("lesson needs the COCO person data: set TINYSEG_DATA (see README, 'Data')")
        monkeypatch.setenv("TINYSEG_DATA", str(root))
    monkeypatch.chdir(repository_view(tmp_path))
    namespace = {"__name__": f"lesson_{path.stem.replace('-', '_')}"}
    wrong = []
    for i, (block, expected, varies) in enumerate(blocks_with_output(text), 1):
        code = compile(block, f"{path.name}[block {i}]", "exec")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code, namespace)  # a failing block fails the test with its traceback
        if expected is not None and not varies:
            got, want = normalise(printed.getvalue()), normalise(expected)
            if got != want:
                diff = difflib.unified_diff(want.splitlines(), got.splitlines(), "in the lesson",
                                            "printed now", lineterm="")
                wrong.append(f"block {i} (starts {block.splitlines()[0]!r}):\n" + "\n".join(diff))
    for name in re.findall(r"\]\((figures/[^)]+)\)", text):
        drawn = Path("lessons") / name
        assert drawn.is_file(), f"{path.name} shows {name} but did not draw it"
        if Path(name).name not in FIGURES_THAT_VARY and not same_pixels(drawn, REPO / "lessons" / name):
            wrong.append(f"{name}: the committed figure differs from the one the lesson draws now")
    assert not wrong, (f"{path.name}: what the code prints or draws differs from the lesson "
                       f"(update the lesson, or fence a run-dependent output as "
                       f"'```text varies'):\n\n" + "\n\n".join(wrong))
