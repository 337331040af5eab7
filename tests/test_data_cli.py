"""python -m tinyseg.data: info, show, bench; exit codes and messages."""
import argparse
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinyseg.data.__main__ import build_parser, main
from tinyseg.data.fixture import FakeImage, make_coco_dir

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SPECS = ([FakeImage(persons=[(0, 0, 32, 30)]) for _ in range(12)]      # kept (31 %)
         + [FakeImage(persons=[(0, 0, 8, 8)]) for _ in range(5)]      # too small
         + [FakeImage(persons=[(0, 0, 9, 9)] * 3) for _ in range(2)]  # three persons
         + [FakeImage()])                                             # nobody


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "data"
    make_coco_dir(r, SPECS)
    return r


def _run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_info_prints_counts_per_step_and_split(root, tmp_path, capsys):
    code, out, err = _run(["info", "--data", str(root), "--cache-dir", str(tmp_path / "c")],
                          capsys)
    assert code == 0
    lines = [" ".join(l.split()) for l in out.splitlines()]
    assert "images in the annotation files 20" in lines
    assert "with at least one person 19" in lines
    assert "without crowd person annotations 19" in lines
    assert "with 1 to 2 person instances 17" in lines
    assert "person mask covers 20 %-70 % of the image 12" in lines
    splits = {l.split()[0]: int(l.split()[1]) for l in lines if l.split()[:1] in
              (["train"], ["val"], ["test"])}
    assert sum(splits.values()) == 12
    assert "not built yet" in out


def test_info_lists_the_sizes_whose_cache_is_built(root, tmp_path, capsys):
    """``info`` reported the 224 px cache only, whatever size a run had trained at."""
    from tinyseg.data.cache import load_split
    from tinyseg.data.coco import FILTER_PRESETS

    cache = tmp_path / "c"
    for split in ("train", "val", "test"):
        load_split(root, split, 24, FILTER_PRESETS["default"], cache, progress=False)
    load_split(root, "train", 16, FILTER_PRESETS["default"], cache, progress=False)
    load_split(root, "train", 20, FILTER_PRESETS["wide"], cache, progress=False)
    (gone,) = (cache / "data").glob("*-16px-*-test.npz")     # all three splits are built
    gone.unlink()
    code, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(cache)], capsys)
    lines = [l for l in out.splitlines() if l.startswith("cache")]
    assert code == 0 and len(lines) == 2, out           # not the wide filter's 20 px
    assert lines[0].startswith("cache at 16px: partly built (")
    assert lines[1].startswith("cache at 24px: built (")
    code, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(cache),
                         "--size", "32"], capsys)
    assert "cache at 32px: not built yet" in out
    code, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(cache),
                         "--preset", "wide"], capsys)
    lines = [l for l in out.splitlines() if l.startswith("cache")]
    assert len(lines) == 1 and lines[0].startswith("cache at 20px: built ("), out


def test_info_filter_flags(root, tmp_path, capsys):
    code, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(tmp_path / "c"),
                         "--max-persons", "none", "--min-coverage", "1%"], capsys)
    assert code == 0
    assert "with at least 1 person instances 19" in " ".join(out.split())
    assert "person mask covers 1 %-70 % of the image 19" in " ".join(out.split())
    code, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(tmp_path / "c"),
                         "--preset", "wide"], capsys)
    assert "person mask covers 5 %-90 % of the image 12" in " ".join(out.split())  # 8x8 = 2 %


def test_info_from_environment(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYSEG_DATA", str(root))
    monkeypatch.setenv("TINYSEG_CACHE", str(tmp_path / "c"))
    code, out, _ = _run(["info"], capsys)
    assert code == 0 and str(root) in out


def _one_line_error(code, out, err, *needles):
    assert code == 1
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0]
    for n in needles:
        assert n in lines[0]


def test_user_errors_are_one_line(root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TINYSEG_DATA", raising=False)
    _one_line_error(*_run(["info"], capsys), "TINYSEG_DATA")
    _one_line_error(*_run(["info", "--data", str(tmp_path / "nope")], capsys), "nope",
                    "not found")
    c = ["--cache-dir", str(tmp_path / "c")]
    _one_line_error(*_run(["info", "--data", str(root), "--min-coverage", "0.99",
                           "--max-coverage", "1"] + c, capsys),
                    "leave no image", "20 images", "-> 0 person mask")
    _one_line_error(*_run(["info", "--data", str(root), "--category", "cat"] + c, capsys),
                    "no category named 'cat'")
    ann = root / "annotations" / "instances_train2017.json"
    ann.write_text(ann.read_text()[:200])
    _one_line_error(*_run(["info", "--data", str(root)] + c, capsys), str(ann),
                    "not valid JSON")


def test_bad_flags_exit_2(root, capsys):
    """Flags that do not parse: argparse's usage line and exit 2."""
    for args in (["info", "--max-persons", "x"], ["frobnicate"], [],
                 ["show", "--split", "training"], ["download"],
                 # an empty --data quietly meant $TINYSEG_DATA
                 ["info", "--data", ""]):
        with pytest.raises(SystemExit) as e:
            main(["--data", str(root)] if not args else args)
        assert e.value.code == 2, args
    assert "usage: " in capsys.readouterr().err


def test_values_that_parse_but_cannot_work_exit_1(root, capsys):
    """A value that parses but cannot work is a user error, exit 1 and one line, as in the
    other commands (the README's rule; these were exit 2 with a usage line)."""
    for args, says in (
            (["info", "--min-coverage", "2"], "argument --min-coverage: must be a fraction"),
            (["info", "--size", "0"], "argument --size: must be >= 1, got 0"),
            (["show", "--n", "0"], "argument --n: must be >= 1"),
            (["info", "--min-coverage", "0.8", "--max-coverage", "0.5"], "max_coverage"),
            # were tracebacks, or a silent fall-back to the real COCO server
            (["download", "--root", "x", "--timeout", "nan"], "argument --timeout: must be a"),
            (["download", "--root", "x", "--timeout", "-5"], "argument --timeout: must be a"),
            (["download", "--root", "x", "--annotations-url", ""],
             "argument --annotations-url: not an http(s):// or file:// URL"),
            (["download", "--root", "x", "--annotations-url", "notaurl"], "notaurl"),
            # numpy's traceback for a negative seed; load_split's for a side over 1024
            (["show", "--seed", "-5"], "argument --seed: must be >= 0"),
            (["bench", "--seed", "-5"], "argument --seed: must be >= 0"),
            (["bench", "--size", "2000"], "argument --size: must be at most 1024"),
            (["bench", "--batches", "0"], "argument --batches: must be >= 1")):
        data = [] if args[0] == "download" else ["--data", str(root)]   # download: --root
        assert main(args + data) == 1, args
        err = capsys.readouterr().err
        assert err.startswith(f"tinyseg.data {args[0]}: error: ") and says in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "usage" not in err, err


def test_help_states_every_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.required:
                continue
            assert action.help and "default" in action.help, (name, action.option_strings)


def test_show_writes_a_grid(root, tmp_path, capsys):
    out_png = tmp_path / "s.png"
    code, out, _ = _run(["show", "--data", str(root), "--n", "4", "--cols", "2", "--size",
                         "48", "--out", str(out_png), "--split", "train"], capsys)
    assert code == 0 and "wrote" in out
    im = np.asarray(Image.open(out_png))
    assert im.ndim == 3 and im.shape[0] > 2 * 48 and im.shape[1] > 2 * 48
    code, _, err = _run(["show", "--data", str(root), "--out", str(tmp_path / "s.jpg")], capsys)
    assert code == 1 and "give a name ending in .png" in err   # PNG bytes went into a .jpg
    code, out, _ = _run(["show", "--data", str(root), "--rejected", "--size", "32", "--out",
                         str(tmp_path / "r.png"), "--split", "train", "--n", "3"], capsys)
    assert code == 0 and "rejected" in out
    code, out, _ = _run(["show", "--data", str(root), "--augment", "--size", "32", "--out",
                         str(tmp_path / "a.png"), "--n", "8"], capsys)
    assert code == 0
    a = np.asarray(Image.open(tmp_path / "a.png"))
    assert a.shape[1] > 4 * 32  # four tiles per row: plain + three augmented


def test_check_images_lists_unreadable_ones(root, tmp_path, capsys):
    victim = sorted((root / "train2017").iterdir())[0]
    victim.write_bytes(b"broken")
    code, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(tmp_path / "c"),
                         "--check-images"], capsys)
    assert code == 0
    assert "unreadable: 1" in out and victim.name in out


def test_show_names_itself_when_it_skips_an_unreadable_image(root, tmp_path, capsys):
    """The warning began with a bare "warning:", unlike every other command's."""
    for p in sorted((root / "train2017").iterdir()):
        p.write_bytes(b"broken")
    code, out, err = _run(["show", "--data", str(root), "--cache-dir", str(tmp_path / "c"),
                           "--size", "32", "--n", "2", "--out", str(tmp_path / "s.png")], capsys)
    assert "tinyseg.data show: warning: skipped " in err, err
    assert all(l.startswith("tinyseg.data show: ") for l in err.splitlines()
               if "warning" in l), err


def test_bench_reports_milliseconds(root, tmp_path, capsys):
    code, out, err = _run(["bench", "--data", str(root), "--cache-dir", str(tmp_path / "c"),
                           "--size", "32", "--batch-size", "2", "--batches", "5"], capsys)
    assert code == 0 and "ms" in out and "augment=True" in out
    assert "caching train" in err  # progress on stderr


def test_bad_images_warn_on_stderr_not_traceback(root, tmp_path, capsys):
    for p in sorted((root / "train2017").iterdir())[:12]:
        p.write_bytes(b"broken")  # every kept image: the train split ends up empty
    code, out, err = _run(["bench", "--data", str(root), "--cache-dir", str(tmp_path / "c"),
                           "--size", "16"], capsys)
    assert code == 1 and "no readable training image" in err and "Traceback" not in err
    assert "not an image" in err     # the reason, not only a count (own-data audit)


def test_module_runs_as_a_program(root, tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinyseg.data", "info", "--data", str(root),
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "loading annotations" not in r.stdout and "index created" not in r.stdout
    assert r.stderr == ""


def test_show_refuses_a_sheet_too_large_to_draw(root, tmp_path, capsys):
    """``--size 100000`` paged for minutes before running out of memory (a side above 1024
    is now refused as a flag; many samples can still make too large a sheet)."""
    for args in (["--n", "200", "--size", "1024"], ["--n", "5000", "--size", "160"]):
        code, out, err = _run(["show", "--data", str(root), *args, "--out",
                               str(tmp_path / "x.png")], capsys)
        assert code != 0 and "megapixels; at most 100" in err, err
        assert not (tmp_path / "x.png").exists()


def _split_counts(out):
    lines = [l.split() for l in out.splitlines()]
    return {l[0]: (int(l[1]), float(l[2])) for l in lines
            if l[:1] in (["train"], ["val"], ["test"]) and len(l) >= 4 and l[3] == "%"}


def test_info_split_shares_are_percentages(root, tmp_path, capsys):
    code, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(tmp_path / "c")], capsys)
    counts = _split_counts(out)
    total = sum(n for n, _ in counts.values())
    assert code == 0 and total == 12 and set(counts) == {"train", "val", "test"}
    for n, share in counts.values():
        assert share == pytest.approx(round(100.0 * n / total, 1))
    assert sum(s for _, s in counts.values()) == pytest.approx(100.0, abs=0.2)


def test_show_samples_only_the_chosen_split(root, tmp_path, capsys):
    _, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(tmp_path / "c")], capsys)
    counts = _split_counts(out)
    for split, (n, _) in counts.items():
        if n == 0:
            continue
        code, out, _ = _run(["show", "--data", str(root), "--split", split, "--n", "12",
                             "--size", "16", "--out", str(tmp_path / f"{split}.png")], capsys)
        assert code == 0 and f"({n} tiles from the {split} split" in out, (split, out)


def test_show_augment_n_counts_tiles_one_sample_per_row(root, tmp_path, capsys):
    code, out, _ = _run(["show", "--data", str(root), "--augment", "--size", "32", "--n", "8",
                         "--cols", "2", "--split", "train", "--out", str(tmp_path / "a.png")],
                        capsys)
    assert code == 0 and "(8 tiles from the train split" in out, out   # 2 samples x 4
    a = np.asarray(Image.open(tmp_path / "a.png"))
    assert a.shape[1] > 4 * 32      # four tiles per row whatever --cols says


def test_a_filter_error_names_the_subcommand(root, capsys):
    """``--min-coverage 0.8 --max-coverage 0.5`` printed the top-level usage line
    (``python -m tinyseg.data [-h] COMMAND ...``) and exit 2; now one line naming the
    subcommand, exit 1."""
    for command in ("info", "show", "bench"):
        assert main([command, "--data", str(root), "--min-coverage", "0.8", "--max-coverage",
                     "0.5"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"tinyseg.data {command}: error: ") and "coverage" in err, err


def test_info_says_when_the_cache_folder_is_a_file(root, tmp_path, capsys):
    """``--cache-dir`` naming a file (or a file where its ``data`` folder goes) was reported
    as "not built yet", as if training would build the cache there."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "data").write_text("mine")
    for cache, culprit in ((afile, afile), (folder, folder / "data")):
        for size in ([], ["--size", "32"]):
            code, out, _ = _run(["info", "--data", str(root), "--cache-dir", str(cache)]
                                + size, capsys)
            assert code == 0
            assert f"cache: {culprit} is a file, not a folder" in out, out
            assert "not built yet" not in out
    assert afile.read_text() == "mine" and (folder / "data").read_text() == "mine"


def test_bench_counts_the_images_before_caching_them(root, tmp_path, capsys):
    """``--batch-size 1000`` built the cache of all three splits, then said the split was too
    small."""
    code, out, err = _run(["bench", "--data", str(root), "--cache-dir", str(tmp_path / "c"),
                           "--size", "16", "--batch-size", "1000"], capsys)
    assert code == 1 and out == "" and "Traceback" not in err
    assert "fewer than --batch-size 1000" in err and "caching" not in err
    assert not list((tmp_path / "c" / "data").glob("*.npz"))


def test_info_on_another_category_does_not_promise_training(tmp_path, capsys):
    """'info --category dog' said the cache was 'not built yet ... training builds it', and
    --help called the category the one 'to segment': training uses person only (own-data
    audit, 2026-11-28)."""
    r = tmp_path / "data"
    make_coco_dir(r, [FakeImage(dogs=[(0, 0, 32, 30)]) for _ in range(12)])
    code, out, err = _run(["info", "--data", str(r), "--category", "Dog", "--cache-dir",
                           str(tmp_path / "c")], capsys)
    assert code == 0 and "training uses the person category only" in out + err
    assert "training builds it" not in out + err
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert "train and evaluate use person only" in " ".join(capsys.readouterr().out.split())
