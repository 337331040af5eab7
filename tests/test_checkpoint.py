"""Checkpoints: model files with mean/std/size, training files that resume exactly."""
import stat
import os
import json
import re

import numpy as np
import pytest

from tinyseg.checkpoint import (CheckpointError, generator_states, load_model, make_meta,
                                read, save_model, save_training, set_generator_states)
from tinyseg.optim import RMSprop
from tinyseg.tiramisu import Tiramisu, tiramisu_tiny

MEAN = np.array([0.45, 0.42, 0.40], np.float32)
STD = np.array([0.27, 0.26, 0.28], np.float32)


def _model(seed=0):
    return tiramisu_tiny(rng=np.random.default_rng(seed))


def _x(rng, n=2, s=16):
    return rng.standard_normal((n, 3, s, s)).astype(np.float32)


def test_model_checkpoint_round_trip(tmp_path, rng):
    model = _model()
    model.train()
    model.forward(_x(rng, 4))  # move the BN running statistics away from their init
    path = save_model(tmp_path / "m.npz", model, make_meta(32, MEAN, STD, epoch=3))
    loaded, info = load_model(path)
    assert info["size"] == 32 and info["epoch"] == 3
    np.testing.assert_array_equal(info["mean"], MEAN)   # float32 survives JSON exactly
    np.testing.assert_array_equal(info["std"], STD)
    assert loaded.config == model.config
    for name, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], v, err_msg=name)
    assert not loaded.training
    model.eval()
    x = _x(rng)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_checkpoint_is_a_tiramisu_file(tmp_path):
    """A checkpoint holds the Tiramisu's own entries (format, config, every array)."""
    model = _model()
    save_model(tmp_path / "m.npz", model, make_meta(32, MEAN, STD))
    model.save(tmp_path / "plain.npz")
    config, state = Tiramisu.read_file(tmp_path / "m.npz")
    plain_config, plain_state = Tiramisu.read_file(tmp_path / "plain.npz")
    assert config == plain_config
    assert set(plain_state) <= set(state)
    assert {k for k in state if k not in plain_state} == {"__meta__"}


def test_tiramisu_from_file_opens_a_checkpoint(tmp_path, rng):
    model = _model()
    save_model(tmp_path / "m.npz", model, make_meta(32, MEAN, STD))
    loaded = Tiramisu.from_file(tmp_path / "m.npz")
    model.eval(), loaded.eval()
    x = _x(rng)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_plain_weight_file_needs_mean_std_size(tmp_path):
    model = _model()
    model.save(tmp_path / "plain.npz")
    with pytest.raises(CheckpointError, match="plain weight file"):
        load_model(tmp_path / "plain.npz")
    loaded, info = load_model(tmp_path / "plain.npz", mean=MEAN, std=STD, size=48)
    assert info["size"] == 48


@pytest.mark.parametrize("meta, says", [
    ({"size": 32, "mean": [0.5, 0.5], "std": [0.2] * 3}, "damaged metadata (mean"),
    ({"size": 0, "mean": [0.5] * 3, "std": [0.2] * 3}, "damaged metadata (size 0"),
    # a side that would exhaust the memory (it gave an OverflowError or MemoryError traceback)
    ({"size": 10**9, "mean": [0.5] * 3, "std": [0.2] * 3}, "damaged metadata (size 1000000000"),
    ({"size": "abc", "mean": [0.5] * 3, "std": [0.2] * 3}, "damaged metadata"),
    ({"size": 32, "mean": [0.5] * 3, "std": [0, 0, 0]}, "damaged metadata (std"),
    # statistics of 0-255 pixels: normalize refused them inside prediction, a traceback
    ({"size": 32, "mean": [124, 116, 104], "std": [58, 57, 57]}, "damaged metadata (mean and "
                                                                 "std are on the 0-1 scale"),
    ([1, 2], "damaged metadata (not a JSON object)"),
    ({"size": 32, "std": [0.2] * 3}, "no mean stored; use a checkpoint"),
])
def test_damaged_metadata_is_named(tmp_path, meta, says):
    """Each was a bare ValueError, AttributeError or reshape error in evaluate and cutout,
    and the ensemble command joined such files without a word."""
    from tinyseg.ensemble import save_ensemble
    path = tmp_path / "m.npz"
    _model().save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=re.escape(says)):
        load_model(path)
    if says.startswith("damaged"):
        with pytest.raises(CheckpointError, match="damaged metadata"):
            save_ensemble(tmp_path / "e.npz", [path, path])
        assert not (tmp_path / "e.npz").exists()


def test_bad_files_are_refused_with_the_name(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="junk.npz"):
        load_model(junk)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="other.npz"):
        load_model(tmp_path / "other.npz")


@pytest.mark.parametrize("content, reason", [
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "it is a PNG image"),
    (b"\xff\xd8\xff\xe0" + bytes(40), "it is a JPEG image"),
    (b"", "the file is empty"),
    (b"hello world", "it is not a zip archive"),
])
def test_a_file_that_is_no_npz_is_named_and_said_what_it_is(tmp_path, content, reason):
    """A photo passed as --checkpoint by mistake: a plain reason, not NumPy's complaint
    about pickled data (it tries to unpickle anything that is not a zip or .npy)."""
    from tinyseg.ensemble import load_ensemble
    path = tmp_path / "photo.npz"
    path.write_bytes(content)
    for load in (load_model, load_ensemble):
        with pytest.raises(CheckpointError) as e:
            load(path)
        assert "photo.npz" in str(e.value) and f"not an .npz file ({reason})" in str(e.value)
        assert "pickle" not in str(e.value)


def test_training_checkpoint_round_trip(tmp_path, rng):
    model = _model()
    opt = RMSprop(list(model.named_parameters()), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(2):  # a few steps so the squared averages and dropout streams move
        opt.zero_grad()
        y = model.forward(_x(rng))
        model.backward(np.ones_like(y) / y.size)
        opt.step()
    state = {"epoch": 2, "batch": 1, "generators": generator_states(model)}
    path = save_training(tmp_path / "last.npz", model, make_meta(32, MEAN, STD), state, opt)
    config, weights, meta, st, optim = read(path)
    assert st["epoch"] == 2 and st["batch"] == 1
    assert st["optimizer"]["lr"] == 3e-3 and st["optimizer"]["steps"] == 2
    assert set(optim) == {f"square_avg.{n}" for n, _, _ in model.named_parameters()}

    other = _model(seed=5)
    opt2 = RMSprop(list(other.named_parameters()), lr=1.0)
    other.load_state_dict(weights)
    opt2.load_state_dict({**st["optimizer"], **optim})
    set_generator_states(other, st["generators"])
    for n in opt.square_avg:
        np.testing.assert_array_equal(opt2.square_avg[n], opt.square_avg[n])
    assert opt2.lr == opt.lr and opt2.steps == 2
    # the dropout streams continue where they were: same masks next time
    x = _x(rng)
    np.testing.assert_array_equal(other.forward(x), model.forward(x))


def test_generator_states_are_json_and_name_checked():
    model = _model()
    states = generator_states(model)
    assert states and all(".drop." in k or k.endswith(".rng") for k in states)
    json.dumps(states)  # JSON-able
    with pytest.raises(CheckpointError, match="random generators"):
        set_generator_states(model, {k: v for k, v in list(states.items())[1:]})


def test_unknown_entries_are_refused(tmp_path):
    model = _model()
    path = save_model(tmp_path / "m.npz", model, make_meta(32, MEAN, STD))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["__future__"] = np.array("x")
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(CheckpointError, match="__future__"):
        read(tmp_path / "future.npz")


def test_a_newer_checkpoint_version_is_refused(tmp_path):
    from tinyseg.checkpoint import CHECKPOINT_VERSION, CheckpointError, make_meta, read, save_model
    from tinyseg.tiramisu import tiramisu_tiny
    model = tiramisu_tiny(rng=np.random.default_rng(0))
    meta = make_meta(32, [0.5] * 3, [0.25] * 3)
    meta["checkpoint_version"] = CHECKPOINT_VERSION + 1
    path = save_model(tmp_path / "m.npz", model, meta)
    with pytest.raises(CheckpointError,
                       match=f"checkpoint version {CHECKPOINT_VERSION + 1} is newer than this "
                             f"tinyseg reads \\({CHECKPOINT_VERSION}\\)"):
        read(path)


def test_saved_files_get_the_umask_mode(tmp_path):
    from tinyseg.io import atomic_save_npz, atomic_write_bytes
    old = os.umask(0o027)
    try:
        a = atomic_save_npz(tmp_path / "a.npz", {"x": np.arange(3)})
        b = atomic_write_bytes(tmp_path / "b.bin", b"abc")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(b).st_mode) == 0o640


def test_atomic_writes_leave_a_read_only_file_alone(tmp_path):
    """The rename that makes a write atomic replaced a file its owner had made read-only
    (cutout's PNGs, 'data show' sheets, ensemble files: found by fuzzing helpers); every
    atomic write now refuses it, naming the file, and leaves its bytes and mode."""
    import errno
    from tinyseg.io import atomic_save_npz, atomic_write_bytes
    for write in (lambda p: atomic_write_bytes(p, b"new"),
                  lambda p: atomic_save_npz(p, {"x": np.arange(3)})):
        path = tmp_path / "kept.bin"
        path.write_bytes(b"old")
        os.chmod(path, 0o444)
        with pytest.raises(PermissionError) as e:
            write(path)
        assert e.value.errno == errno.EACCES and e.value.filename == str(path)
        assert "read-only; not replaced" in str(e.value)
        assert path.read_bytes() == b"old" and stat.S_IMODE(os.stat(path).st_mode) == 0o444
        assert sorted(q.name for q in tmp_path.iterdir()) == ["kept.bin"]   # no temp file
        os.chmod(path, 0o644)
        path.unlink()
    # under a umask that leaves no write bit, tinyseg's own files are rewritten (last.npz)
    old = os.umask(0o277)
    try:
        atomic_write_bytes(tmp_path / "own.bin", b"1")
        assert stat.S_IMODE(os.stat(tmp_path / "own.bin").st_mode) == 0o400
        atomic_write_bytes(tmp_path / "own.bin", b"2")
        assert (tmp_path / "own.bin").read_bytes() == b"2"
    finally:
        os.umask(old)


def test_atomic_writes_name_a_file_in_the_way_of_their_folder(tmp_path):
    """mkdir said only 'File exists' (data show --out, tinyseg.ensemble)."""
    from tinyseg.io import atomic_write_bytes
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        atomic_write_bytes(tmp_path / "afile" / "sub" / "out.png", b"png")
    assert e.value.filename == str(tmp_path / "afile") and "is a file, not a folder" in str(e.value)


def test_atomic_writes_make_missing_folders(tmp_path):
    from tinyseg.io import atomic_save_npz, atomic_write_bytes, read_npz
    path = atomic_save_npz(tmp_path / "a" / "b" / "x.npz", {"a": np.arange(3)})
    np.testing.assert_array_equal(read_npz(path)["a"], [0, 1, 2])
    atomic_write_bytes(tmp_path / "c" / "d" / "y.bin", b"abc")
    assert (tmp_path / "c" / "d" / "y.bin").read_bytes() == b"abc"


def test_weights_with_nan_are_refused_by_name(tmp_path):
    """A damaged file whose weights hold NaN gave an all-transparent cut-out; it is refused,
    naming the file and the weight."""
    model = tiramisu_tiny(rng=np.random.default_rng(0))
    path = save_model(tmp_path / "m.npz", model, make_meta(32, [0.5] * 3, [0.25] * 3))
    arrays = dict(np.load(path))
    name = next(k for k in arrays if k.endswith("running_var"))
    arrays[name] = arrays[name].copy()
    arrays[name][0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(CheckpointError, match=f"nan.npz: '{name}' holds NaN or infinite"):
        load_model(tmp_path / "nan.npz")
    load_model(path)   # the undamaged file loads


def test_float64_values_too_large_for_float32_are_refused_by_name(tmp_path):
    """1e40 is finite in the file's float64 and inf in the model's float32: it passed the
    file's finiteness check and gave finite but wrong probabilities (off by up to 0.95)."""
    model = tiramisu_tiny(rng=np.random.default_rng(0))
    path = save_model(tmp_path / "m.npz", model, make_meta(32, [0.5] * 3, [0.25] * 3))
    arrays = dict(np.load(path))
    name = next(k for k in arrays if k.endswith("running_var"))
    arrays[name] = arrays[name].astype(np.float64)
    arrays[name][0] = 1e40
    np.savez(tmp_path / "big.npz", **arrays)
    with pytest.raises(CheckpointError, match=f"big.npz: .*'{name}' holds 1e\\+40, too "
                                              f"large for float32"):
        load_model(tmp_path / "big.npz")
    arrays[name][0] = 3e38          # the largest float32 is 3.4e38: still a float32
    np.savez(tmp_path / "fits.npz", **arrays)
    load_model(tmp_path / "fits.npz")


def test_negative_batch_norm_variances_are_refused_by_name(tmp_path):
    """A running variance below 0 is finite but impossible: the square root in batch norm gave
    NaN and an all-background mask without an error. It is refused, naming file and array."""
    model = tiramisu_tiny(rng=np.random.default_rng(0))
    path = save_model(tmp_path / "m.npz", model, make_meta(32, [0.5] * 3, [0.25] * 3))
    arrays = dict(np.load(path))
    name = next(k for k in arrays if k.endswith("running_var"))
    arrays[name] = arrays[name].copy()
    arrays[name][1] = -1.0
    np.savez(tmp_path / "neg.npz", **arrays)
    with pytest.raises(CheckpointError, match=f"neg.npz: '{name}' holds negative values"):
        load_model(tmp_path / "neg.npz")
    arrays[name][1] = 0.0          # zero is a variance (of a constant channel): accepted
    np.savez(tmp_path / "zero.npz", **arrays)
    load_model(tmp_path / "zero.npz")
