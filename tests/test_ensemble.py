"""Ensembles: the averaged prediction, the file, and ``train --members K``.

The members of a trained ensemble are ordinary runs; the tests hold member ``k`` equal, to
the last bit, to the single run with seed ``S+k``, and check that an ensemble run resumed
after losing a member ends with the same file.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyseg.checkpoint import CheckpointError, load_model, make_meta, read, save_model
from tinyseg.cli import run_main
from tinyseg.ensemble import Ensemble, is_ensemble_file, load_ensemble, save_ensemble
from tinyseg.infer import softmax_person
from tinyseg.losses import softmax_cross_entropy
from tinyseg.tiramisu import FORMAT_VERSION, tiramisu_tiny
from tinyseg.train import command_line, main, preset_config

from test_train import make_data


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Inference and training loops: one numba thread (see conftest)."""


def nets(n, seed=0):
    out = []
    for k in range(n):
        m = tiramisu_tiny(num_classes=2, rng=np.random.default_rng(seed + k))
        # move the batch-norm statistics away from 0/1 so that eval mode is not trivial
        for name, buf in m.named_buffers():
            if name.endswith("running_var"):
                buf[...] = 0.5 + np.random.default_rng(k).random(buf.shape)
        m.eval()
        out.append(m)
    return out


def x_batch(n=2, s=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, s, s)).astype(np.float32)


def softmax(z):
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_forward_is_the_log_of_the_mean_probability():
    members = nets(3)
    x = x_batch()
    want = np.mean([softmax(m.forward(x)) for m in members], axis=0)
    z = Ensemble(members).forward(x)
    assert z.shape == (2, 2, 32, 32) and z.dtype == np.float32
    np.testing.assert_allclose(np.exp(z.astype(np.float64)), want, rtol=1e-6, atol=1e-7)
    # used as logits, log p gives p back: the person probability is the members' mean
    np.testing.assert_allclose(softmax_person(z), want[:, 1], rtol=1e-6, atol=1e-7)
    # the loss of the ensemble is the cross-entropy of the averaged probabilities
    t = np.random.default_rng(0).integers(0, 2, (2, 32, 32))
    loss, _ = softmax_cross_entropy(z, t)
    p_true = np.take_along_axis(want, t[:, None], axis=1)
    assert loss == pytest.approx(-np.mean(np.log(p_true)), rel=1e-5)


def test_one_member_predicts_like_the_member_and_modes_reach_every_member():
    (m,) = nets(1)
    x = x_batch()
    ens = Ensemble([m])
    np.testing.assert_allclose(softmax_person(ens.forward(x)), softmax_person(m.forward(x)),
                               rtol=1e-6, atol=1e-7)
    members = nets(2)
    ens = Ensemble(members)
    ens.train()
    assert ens.training and all(mm.training for mm in members)
    ens.eval()
    assert not ens.training and not any(mm.training for mm in members)
    assert ens.num_parameters() == 2 * members[0].num_parameters() and len(ens) == 2
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


def checkpoints(tmp_path, members, mean=(0.4, 0.5, 0.6)):
    paths = []
    for k, m in enumerate(members):
        p = tmp_path / f"m{k}.npz"
        save_model(p, m, make_meta(32, mean, (0.2, 0.25, 0.3), epoch=k + 1))
        paths.append(p)
    return paths


def test_file_round_trip_through_load_model(tmp_path):
    members = nets(3)
    paths = checkpoints(tmp_path, members)
    f = save_ensemble(tmp_path / "ens.npz", paths)
    assert is_ensemble_file(f) and not is_ensemble_file(paths[0])
    assert not is_ensemble_file(tmp_path / "missing.npz")
    model, info = load_model(f)
    assert isinstance(model, Ensemble) and len(model) == 3 and not model.training
    assert info["size"] == 32 and info["ensemble"]["members"] == 3
    np.testing.assert_allclose(info["mean"], [0.4, 0.5, 0.6], rtol=1e-6)
    for k, mk in enumerate(model.members):
        _, w, _, _, _ = read(paths[k])
        for name, v in mk.state_dict().items():
            np.testing.assert_array_equal(v, w[name], err_msg=f"member {k} {name}")
    x = x_batch()
    np.testing.assert_array_equal(model.forward(x), Ensemble(members).forward(x))


def test_bad_ensembles_are_refused_by_name(tmp_path):
    members = nets(2)
    a = checkpoints(tmp_path, members[:1])[0]
    b = tmp_path / "other.npz"
    save_model(b, members[1], make_meta(32, (0.1, 0.1, 0.1), (0.2, 0.25, 0.3)))
    with pytest.raises(CheckpointError, match="other.npz.*same data") as err:
        save_ensemble(tmp_path / "e.npz", [a, b])
    assert "its mean (0.1, 0.1, 0.1) differs" in str(err.value)   # the one that differs
    assert "std" not in str(err.value)          # not every array dumped
    e = save_ensemble(tmp_path / "e.npz", [a, a])
    with pytest.raises(CheckpointError, match="itself an ensemble"):
        save_ensemble(tmp_path / "ee.npz", [e])
    with pytest.raises(CheckpointError, match="missing.npz: file not found"):
        save_ensemble(tmp_path / "e2.npz", [a, tmp_path / "missing.npz"])
    # a file that claims 3 members but holds 2
    with np.load(e) as f:
        data = {k: f[k] for k in f.files}
    data["__ensemble__"] = np.array(json.dumps({"members": 3}))
    np.savez(tmp_path / "short.npz", **data)
    with pytest.raises(CheckpointError, match="short.npz: member 2 of 3 is missing"):
        load_ensemble(tmp_path / "short.npz")
    # and one that claims 1 member but holds 2 (the second was silently left out)
    data["__ensemble__"] = np.array(json.dumps({"members": 1}))
    np.savez(tmp_path / "long.npz", **data)
    with pytest.raises(CheckpointError, match="long.npz: entries that belong to none of its 1 "
                                              "members: member1/"):
        load_ensemble(tmp_path / "long.npz")


def test_members_predicting_other_classes_or_from_other_pictures_are_refused(tmp_path):
    """A second fuzzing helper joined a 2-class and a 3-class network ('an ensemble of 2
    networks'); cutout then failed with a broadcasting traceback. A 4-channel network gave a
    traceback in cutout too. Both are refused where they are joined or loaded."""
    two = checkpoints(tmp_path, nets(1))[0]
    three = save_model(tmp_path / "three.npz",
                       tiramisu_tiny(num_classes=3, rng=np.random.default_rng(5)),
                       make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    with pytest.raises(CheckpointError, match="three.npz: takes 3 input channels and gives 3 "
                                              "classes, .* 3 and 2"):
        save_ensemble(tmp_path / "e.npz", [two, three])
    with pytest.raises(ValueError, match="member 1 takes 3 input channels and gives 3"):
        Ensemble([nets(1)[0], tiramisu_tiny(num_classes=3, rng=np.random.default_rng(5))])
    four = save_model(tmp_path / "four.npz",
                      tiramisu_tiny(in_channels=4, rng=np.random.default_rng(6)),
                      make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    with pytest.raises(CheckpointError, match="four.npz: the network takes 4 input channels"):
        load_model(four)
    with pytest.raises(CheckpointError, match="four.npz: the network takes 4 input channels"):
        save_ensemble(tmp_path / "e4.npz", [four, four])    # joined, then refused on load


def test_join_command_writes_the_same_file_and_refuses_by_name(tmp_path, capsys):
    from tinyseg.ensemble import PROG, main as join_main
    paths = checkpoints(tmp_path, nets(2))
    out = tmp_path / "joined.npz"
    assert run_main(join_main, PROG, [str(out), *map(str, paths)]) == 0
    assert "an ensemble of 2 networks" in capsys.readouterr().out
    model, info = load_model(out)
    assert isinstance(model, Ensemble) and info["ensemble"]["members"] == 2
    ref = save_ensemble(tmp_path / "ref.npz", paths)
    x = x_batch()
    np.testing.assert_array_equal(model.forward(x), load_model(ref)[0].forward(x))
    # a missing member: exit 1, one line naming the file, and nothing written
    assert run_main(join_main, PROG, [str(tmp_path / "x.npz"), str(paths[0]),
                                      str(tmp_path / "gone.npz")]) == 1
    err = capsys.readouterr().err
    assert "gone.npz: file not found" in err and "Traceback" not in err
    assert not (tmp_path / "x.npz").exists()
    # the output may not overwrite a member
    assert run_main(join_main, PROG, [str(paths[0]), str(paths[0]), str(paths[1])]) == 1
    assert "would overwrite one of its members" in capsys.readouterr().err
    assert not is_ensemble_file(paths[0])


# -- training ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("coco")), tmp_path_factory.mktemp("cache")


def run_args(data, out, *extra):
    root, cache = data
    return ["--preset", "tiny", "--data", str(root), "--cache", str(cache), "--out", str(out),
            "--epoch-images", "8", "--val-limit", "6", "--quiet", "--threads", "1", *extra]


def weights(path):
    _, w, _, _, _ = read(path)
    return w


@pytest.mark.slow
def test_members_are_the_single_runs_and_resume_restores_a_lost_member(data, tmp_path,
                                                                        capsys, monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # --threads sets them: restored after the test
    import shutil
    own = tmp_path / "coco"                 # a copy of the data, moved before the resume
    shutil.copytree(data[0], own)
    run = tmp_path / "ens"
    assert run_main(main, "tinyseg.train", run_args((own, data[1]), run, "--members", "2",
                                                    "--seed", "3", "--jobs", "2")) == 0
    text = capsys.readouterr().out
    assert "the ensemble's validation IoU" in text and "test split" in text
    manifest = json.loads((run / "ensemble.json").read_text())
    assert manifest["member_seeds"] == [3, 4] and manifest["jobs"] == 2
    assert 0.0 <= manifest["val"]["person_iou"] <= 1.0
    model, info = load_model(run / "best.npz")
    assert isinstance(model, Ensemble) and len(model) == 2
    # member 1 is the single run with seed 4, bit for bit
    single = tmp_path / "single"
    assert run_main(main, "tinyseg.train", run_args(data, single, "--seed", "4",
                                                    "--no-test")) == 0
    w1, ws = weights(run / "member1" / "best.npz"), weights(single / "best.npz")
    assert w1.keys() == ws.keys()
    for name in ws:
        np.testing.assert_array_equal(w1[name], ws[name], err_msg=name)
    # lose member 1 and the joined file, and move the data: --resume --data NEW trains the
    # member again from the data's new place and joins the same file
    before = {k: v.copy() for k, v in weights_of_ensemble(run / "best.npz").items()}
    shutil.rmtree(run / "member1")
    (run / "best.npz").unlink()
    own.rename(tmp_path / "moved")
    capsys.readouterr()
    assert run_main(main, "tinyseg.train", ["--resume", str(run), "--no-test",
                                            "--data", str(tmp_path / "moved")]) == 0
    assert "1 already done" in capsys.readouterr().out
    after = weights_of_ensemble(run / "best.npz")
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    # a member resumed on its own with more epochs would be joined with the others as they
    # are (a fuzzing helper: a 12-epoch and a 20-epoch member, no word); refused, named
    conf = json.loads((run / "member0" / "config.json").read_text())
    conf["train"]["epochs"] += 3
    (run / "member0" / "config.json").write_text(json.dumps(conf))
    (run / "best.npz").unlink()
    assert run_main(main, "tinyseg.train", ["--resume", str(run), "--no-test",
                                            "--data", str(tmp_path / "moved")]) == 1
    err = capsys.readouterr().err
    assert f"{run / 'member0'}: trains {conf['train']['epochs']} epochs, the ensemble's " \
           f"members {conf['train']['epochs'] - 3}" in err and "start the ensemble again" in err


@pytest.mark.slow
def test_a_member_stopped_between_its_log_line_and_its_checkpoints_is_trained_again(
        data, tmp_path, capsys, monkeypatch):
    """An epoch writes its log line, then best.npz, then last.npz. A member killed in between
    on its last epoch (a full disk, kill -9) counted as done by its log, and the resume
    joined its previous epoch's network without a word (validation 0.14 instead of 0.37 in
    the audit that found it)."""
    import shutil
    from tinyseg.train import Trainer, TrainConfig, load_data
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    run = tmp_path / "ens"
    assert run_main(main, "tinyseg.train", run_args(data, run, "--members", "2", "--epochs",
                                                    "2", "--no-test")) == 0
    want = weights_of_ensemble(run / "best.npz")
    # member 1's checkpoints as they were after its first epoch: the same run, stopped there
    cfg = TrainConfig.from_dict(json.loads((run / "member1" / "config.json").read_text())["train"])
    train, val = load_data(cfg, data[1], progress=False)

    def stop_after_epoch_1(tr):
        if tr.batch == tr.steps:
            tr.request_stop("after epoch 1")
    first = tmp_path / "first"
    Trainer(cfg, train, val, first, report=lambda *a: None, on_batch=stop_after_epoch_1).run(
        handle_sigint=False)
    for name in ("best.npz", "last.npz"):
        shutil.copy(first / name, run / "member1" / name)
    assert (run / "member1" / "log.jsonl").read_text().count("\n") == 2   # the log: done
    (run / "best.npz").unlink()
    capsys.readouterr()
    assert run_main(main, "tinyseg.train", ["--resume", str(run), "--no-test"]) == 0
    assert "1 already done" in capsys.readouterr().out               # member 0 only
    got = weights_of_ensemble(run / "best.npz")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.slow
def test_ctrl_c_while_the_members_are_joined_says_so(data, tmp_path, capsys, monkeypatch):
    """Ctrl-C after the members finished, while they were joined or scored, printed "stopped
    (Ctrl-C) before training started; nothing was saved"."""
    import tinyseg.train_ensemble as te
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    real = te._join

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(te, "_join", interrupted)
    run = tmp_path / "ens"
    assert run_main(main, "tinyseg.train", run_args(data, run, "--members", "2", "--epochs",
                                                    "1", "--no-test")) == 130
    err = capsys.readouterr().err
    assert "stopped while joining or scoring the trained members" in err
    assert "before training started" not in err and "nothing was saved" not in err
    monkeypatch.setattr(te, "_join", real)
    assert run_main(main, "tinyseg.train", ["--resume", str(run), "--no-test"]) == 0
    assert "2 already done" in capsys.readouterr().out and (run / "best.npz").is_file()


def test_resumed_members_read_the_data_where_the_ensemble_says(tmp_path):
    """``--resume RUN --data NEW`` reaches every member: those that start afresh and those
    that go on from their own run directory."""
    from tinyseg.train_ensemble import _member_argv
    manifest = {"train": {"data": "/new/place"},
                "member_commands": ["python -m tinyseg.train --seed 0 --data /old/place "
                                    "--threads 1 --out RUN/member0 --quiet --no-test"]}
    fresh = _member_argv(tmp_path, manifest, 0, None, 2)
    assert fresh[fresh.index("--data") + 1] == "/new/place" and "/old/place" not in fresh
    assert fresh[fresh.index("--threads") + 1] == "2"
    (tmp_path / "member0").mkdir()
    (tmp_path / "member0" / "config.json").write_text("{}")
    going_on = _member_argv(tmp_path, manifest, 0, "/cache", 1)
    assert going_on[going_on.index("--resume") + 1] == str(tmp_path / "member0")
    assert going_on[going_on.index("--data") + 1] == "/new/place"
    assert going_on[going_on.index("--cache") + 1] == "/cache"


def weights_of_ensemble(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if not k.startswith("__")}


def test_flags_that_do_not_fit_an_ensemble_are_refused(data, tmp_path, capsys):
    assert run_main(main, "tinyseg.train", run_args(data, tmp_path / "a", "--members", "0")) == 1
    assert "--members must be at least 1" in capsys.readouterr().err
    assert run_main(main, "tinyseg.train", run_args(data, tmp_path / "b", "--jobs", "2")) == 1
    assert "--jobs is for ensembles" in capsys.readouterr().err
    assert run_main(main, "tinyseg.train", run_args(data, tmp_path / "c", "--members", "2",
                                                    "--max-minutes", "1")) == 1
    assert "--max-minutes is for single runs" in capsys.readouterr().err
    assert run_main(main, "tinyseg.train", run_args(data, tmp_path / "d", "--members", "2",
                                                    "--jobs", "0")) == 1
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    # a single run resumed with --jobs: refused as well, not silently ignored
    single = tmp_path / "e"
    assert run_main(main, "tinyseg.train", run_args(data, single, "--epochs", "1",
                                                    "--no-test")) == 0
    capsys.readouterr()
    assert run_main(main, "tinyseg.train", ["--resume", str(single), "--jobs", "2"]) == 1
    assert "--jobs is for ensembles" in capsys.readouterr().err
    # --init with an ensemble file, or a file that is no checkpoint: refused by name before
    # any member starts (no run directory is made)
    ens = save_ensemble(tmp_path / "ens.npz", [single / "best.npz", single / "best.npz"])
    for bad, says in ((ens, "holds an ensemble of several networks"),
                      (tmp_path / "missing.npz", "missing.npz")):
        for members in ("1", "2"):
            out = tmp_path / f"init-{bad.stem}-{members}"
            assert run_main(main, "tinyseg.train", run_args(data, out, "--members", members,
                                                            "--init", str(bad))) == 1
            err = capsys.readouterr().err
            assert "--init" in err and says in err, err
            assert not out.exists()


def test_threads_are_shared_by_the_members_that_run_side_by_side():
    from tinyseg.train_ensemble import member_threads
    # 2 threads, 2 jobs, 3 members: the first two one thread each, the third alone on two
    assert member_threads(2, 2, running=0, left=2) == 1
    assert member_threads(2, 2, running=1, left=1) == 1
    assert member_threads(2, 2, running=0, left=0) == 2
    assert member_threads(2, 2, running=1, left=0) == 1   # the other is still running
    assert member_threads(4, 2, running=0, left=3) == 2
    assert member_threads(1, 3, running=2, left=5) == 1   # never fewer than one


def test_member_commands_train_one_network_each():
    from tinyseg.train import build_parser, _config_from_args
    from tinyseg.train_ensemble import member_config
    cfg = preset_config("small", seed=7)          # the small preset is an ensemble
    assert cfg.members > 1
    for k in range(cfg.members):
        line = command_line(member_config(cfg, k))
        again = _config_from_args(build_parser().parse_args(line.split()[3:]))
        assert again.members == 1 and again.seed == 7 + k


def test_cutout_predictor_averages_the_members_on_a_photo(tmp_path):
    from tinyseg.infer import Predictor
    members = nets(2)
    paths = checkpoints(tmp_path, members)
    ens = Predictor.from_file(save_ensemble(tmp_path / "ens.npz", paths))
    rgb = np.random.default_rng(3).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    p = ens.photo_probability(rgb)
    each = [Predictor.from_file(q).photo_probability(rgb) for q in paths]
    assert p.shape == (45, 70)
    # bilinear resizing is linear, so the resized average is the average of the resized
    np.testing.assert_allclose(p, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ctrl_c_stops_every_member_and_resume_ends_as_an_uninterrupted_run(data, tmp_path):
    """The command as a user runs it: SIGINT to the ensemble process once the members have
    finished an epoch; each member saves last.npz, the command exits 130, and --resume
    ends with the very file an uninterrupted run writes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    root, cache = data

    def command(out, *extra):
        return [sys.executable, "-m", "tinyseg.train", "--preset", "tiny", "--members", "2",
                "--data", str(root), "--cache", str(cache), "--out", str(out), "--epochs", "6",
                "--epoch-images", "64", "--val-limit", "6", "--quiet", "--no-test",
                "--threads", "1", *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    assert subprocess.run(command(whole), env=env, capture_output=True).returncode == 0
    run = tmp_path / "cut"
    p = subprocess.Popen(command(run), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = _signal_once_every_member_has_logged(p, run, signal.SIGINT)
    assert p.returncode == 130, out
    assert "--resume" in out
    done = [(run / f"member{k}" / "log.jsonl").read_text().count("\n") for k in range(2)]
    assert all(1 <= d < 6 for d in done), done          # stopped part-way, after an epoch
    assert all((run / f"member{k}" / "last.npz").is_file() for k in range(2))
    assert not (run / "best.npz").exists()
    r = subprocess.run([sys.executable, "-m", "tinyseg.train", "--resume", str(run), "--quiet",
                        "--no-test"], env=env, capture_output=True)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    a, b = weights_of_ensemble(whole / "best.npz"), weights_of_ensemble(run / "best.npz")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _kill(pids):
    import os
    import signal
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _signal_once_every_member_has_logged(p, run, sig, members=2, expect_members=None):
    """Wait until every member of the ensemble process ``p`` has logged an epoch, send it
    ``sig`` and return its output.  No speed goal: the cap (30 minutes) only keeps a broken
    run from hanging the suite; if ``p`` ends first, or anything fails, ``p`` and its
    members are killed, never left training."""
    import time
    try:
        cap = time.time() + 1800
        while not all((run / f"member{k}" / "log.jsonl").is_file() for k in range(members)):
            if p.poll() is not None:
                pytest.fail("the ensemble run ended before every member had logged an epoch:\n"
                            + p.stdout.read().decode())
            if time.time() > cap:
                pytest.fail("no epoch logged by every member in 30 minutes")
            time.sleep(0.1)
        if expect_members is not None:
            found = [pid for pid in _processes_writing_to(run) if pid != p.pid]
            assert len(found) == expect_members, found
        p.send_signal(sig)
        return p.communicate(timeout=1800)[0].decode()
    except BaseException:
        p.kill()
        p.wait()
        _kill(_processes_writing_to(run))
        raise


def _processes_writing_to(run) -> list:
    """PIDs of processes whose command line names ``run`` (Linux ``/proc``)."""
    import os
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(run) in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc (Linux)")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_kill_or_a_closed_terminal_stops_every_member_like_ctrl_c(data, tmp_path, signame):
    """The members run in sessions of their own (so one Ctrl-C reaches each once); SIGTERM
    or SIGHUP to the ensemble process must stop them too, not leave them training on."""
    import os
    import signal
    import subprocess
    import sys
    import time
    root, cache = data
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "tinyseg.train", "--preset", "tiny",
                          "--members", "2", "--data", str(root), "--cache", str(cache),
                          "--out", str(run), "--epochs", "50", "--epoch-images", "64",
                          "--val-limit", "6", "--quiet", "--no-test", "--threads", "1"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = _signal_once_every_member_has_logged(p, run, getattr(signal, signame),
                                               expect_members=2)
    assert p.returncode == 130, out
    assert "--resume" in out
    left = _processes_writing_to(run)
    cap = time.time() + 60                        # the parent has waited for them: at once
    while left and time.time() < cap:
        time.sleep(0.1)
        left = _processes_writing_to(run)
    _kill(left)
    assert left == [], out                        # no member left training
    done = [(run / f"member{k}" / "log.jsonl").read_text().count("\n") for k in range(2)]
    assert all(1 <= d < 50 for d in done), done
    assert all((run / f"member{k}" / "last.npz").is_file() for k in range(2))


def test_a_damaged_ensemble_run_is_named_and_nothing_is_left_running(data, tmp_path, capsys,
                                                                     monkeypatch):
    """Each of these was a traceback, or left a member training after the command ended."""
    import shutil
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    good = tmp_path / "good"
    assert run_main(main, "tinyseg.train", run_args(data, good, "--members", "2",
                                                    "--no-test")) == 0
    capsys.readouterr()

    def resume(name, change):
        run = tmp_path / name
        shutil.copytree(good, run)
        change(run)
        code = run_main(main, "tinyseg.train", ["--resume", str(run), "--no-test", "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("tinyseg.train: error: "), err
        assert len(err.strip().splitlines()) == 1, err
        assert _processes_writing_to(run) == []
        return err

    def manifest(run, change):
        m = json.loads((run / "ensemble.json").read_text())
        change(m)
        (run / "ensemble.json").write_text(json.dumps(m))

    assert "damaged" in resume("a", lambda r: (r / "ensemble.json").write_text("{}"))
    assert "damaged" in resume("b", lambda r: manifest(r, lambda m: m["train"].pop("data")))

    def unfinished_file(r):                 # member 1 not done, and a file where it should be
        shutil.rmtree(r / "member1")
        (r / "member1").write_text("not a directory")
        (r / "best.npz").unlink()
    assert "a file where member 1's run directory should be" in resume("c", unfinished_file)

    def no_last(r):
        (r / "member1" / "last.npz").unlink()
        (r / "member1" / "log.jsonl").write_text("")       # as if it had stopped early
        (r / "best.npz").unlink()
    assert "member 1 has no last.npz to continue from" in resume("d", no_last)

    def no_best(r):
        (r / "member1" / "best.npz").unlink()
        (r / "best.npz").unlink()
    assert "cannot join the members" in resume("e", no_best)

    # a member that dies of a signal (the out-of-memory killer sends SIGKILL) is named with
    # the signal, and one that exits with an error with its status; both were "failed"
    import tinyseg.train_ensemble as te
    for name, code_text, expected in (
            ("f", "os.kill(os.getpid(), signal.SIGKILL)",
             "member 1 was killed by SIGKILL (signal 9), perhaps by the system when memory "
             "ran out; --resume continues"),
            ("g", "sys.exit(3)", "member 1 failed with exit status 3")):
        run = tmp_path / name
        shutil.copytree(good, run)
        (run / "member1" / "best.npz").unlink()
        (run / "best.npz").unlink()
        argv = [sys.executable, "-c",
                f"import os, signal, sys; print('last words', flush=True); {code_text}"]
        monkeypatch.setattr(te, "_member_argv", lambda *a, argv=argv: argv)
        code = run_main(main, "tinyseg.train", ["--resume", str(run), "--no-test", "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"tinyseg.train: error: {expected}"), err
        assert err.rstrip().endswith("last words"), err


def _net(seed):
    m = tiramisu_tiny(num_classes=2, rng=np.random.default_rng(seed))
    m.eval()
    return m


def test_save_ensemble_refuses_members_with_another_std(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_model(a, _net(0), make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    save_model(b, _net(1), make_meta(32, (0.4, 0.5, 0.6), (0.3, 0.3, 0.3)))
    with pytest.raises(CheckpointError, match="b.npz: its std .* differs"):
        save_ensemble(tmp_path / "e.npz", [a, b])


def test_load_ensemble_refuses_an_older_member_format(tmp_path):
    a = tmp_path / "a.npz"
    save_model(a, _net(0), make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    e = save_ensemble(tmp_path / "e.npz", [a, a])
    with np.load(e) as f:
        data = {k: f[k] for k in f.files}
    data["member1/__format__"] = np.array(FORMAT_VERSION - 1, dtype=np.int64)
    np.savez(tmp_path / "old.npz", **data)
    with pytest.raises(CheckpointError, match="member 1 has another weight-file format"):
        load_ensemble(tmp_path / "old.npz")


class _Fixed:
    training = False

    def __init__(self, z):
        self.z = z

    def forward(self, x):
        return self.z

    def train(self, mode=True):
        pass


def test_ensemble_log_probability_of_a_confident_member_is_log_softmax():
    z = np.zeros((1, 2, 1, 3), np.float32)
    z[0, 1, 0] = [-30.0, -60.0, 0.0]
    got = Ensemble([_Fixed(z)]).forward(None).astype(np.float64)
    zz = z.astype(np.float64)
    want = zz - zz.max(axis=1, keepdims=True)
    want = want - np.log(np.exp(want).sum(axis=1, keepdims=True))   # log_softmax (PyTorch)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_ensemble_join_refuses_to_overwrite_a_member_given_by_another_path(tmp_path, monkeypatch):
    from tinyseg.ensemble import PROG, main as join_main
    a = tmp_path / "a.npz"
    save_model(a, _net(0), make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    before = a.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert run_main(join_main, PROG, [str(a), "a.npz", "a.npz"]) != 0
    assert a.read_bytes() == before


def test_load_ensemble_members_are_in_eval_mode(tmp_path):
    a = tmp_path / "a.npz"
    save_model(a, _net(0), make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    ens, _, _ = load_ensemble(save_ensemble(tmp_path / "e.npz", [a, a]))
    assert not ens.training and not any(m.training for m in ens.members)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(ens.forward(x), ens.forward(x))   # no dropout


def test_join_records_each_member_seed_last_log_line_and_the_val_limit(data, tmp_path):
    """The joined manifest records each member's seed, its log's last line and the
    validation limit."""
    import tinyseg.train_ensemble as te
    root, cache = data
    cfg = preset_config("tiny", data=str(root), val_limit=3, seed=5, members=2)
    run = tmp_path / "ens"
    for k, m in enumerate(nets(2)):
        d = te.member_dir(run, k)
        d.mkdir(parents=True)
        save_model(d / "best.npz", m, make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
        (d / "log.jsonl").write_text(
            json.dumps({"epoch": 1, "best_iou": 0.1, "best_epoch": 1, "elapsed": 1.0}) + "\n"
            + json.dumps({"epoch": 2, "best_iou": 0.2 + k, "best_epoch": 2, "elapsed": 2.0})
            + "\n")
    manifest = {"members": 2}
    assert te._join(run, manifest, cfg, str(cache), True, 1.0) == 0
    saved = json.loads((run / te.MANIFEST).read_text())
    assert [m["seed"] for m in saved["member_best"]] == [5, 6]
    assert [m["best_iou"] for m in saved["member_best"]] == [0.2, 1.2]
    assert [m["best_epoch"] for m in saved["member_best"]] == [2, 2]
    assert saved["val"]["images"] == 3


def test_resume_with_jobs_alone_changes_the_jobs(tmp_path, monkeypatch):
    import tinyseg.train_ensemble as te
    seen = {}
    monkeypatch.setattr(te, "_run_members", lambda run_dir, manifest, jobs, *a:
                        seen.update(jobs=jobs, threads=manifest["threads"]) or 0)
    monkeypatch.setattr(te, "available_threads", lambda: 2)
    (tmp_path / te.MANIFEST).write_text(json.dumps(
        {"members": 3, "jobs": 3, "threads": 1, "train": {"data": "/x"},
         "member_commands": ["a", "b", "c"]}))
    assert te.resume_ensemble(tmp_path, jobs=1, threads=None, cache=None, no_test=True,
                              report=None) == 0
    # the jobs change; the run's --threads 1 stays (it became all the cores before)
    assert seen == {"jobs": 1, "threads": 1}


def test_command_never_overwrites_a_file_that_is_not_an_ensemble(tmp_path, capsys):
    """``python -m tinyseg.ensemble run_a/best.npz run_b/best.npz`` (OUT forgotten) must not
    replace run_a's trained model, nor a photo, by an ensemble of the rest."""
    from tinyseg.ensemble import main as ensemble_main
    member = save_model(tmp_path / "member.npz", nets(1)[0], make_meta(32, [0.5] * 3, [0.25] * 3))
    model = tmp_path / "best.npz"
    model.write_bytes(member.read_bytes())
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    for target in (model, photo):
        before = target.read_bytes()
        assert run_main(ensemble_main, "tinyseg.ensemble", [str(target), str(member)]) == 1
        assert target.read_bytes() == before
        err = capsys.readouterr().err
        assert str(target) in err and "not an ensemble" in err
    # an ensemble file may be written again
    ens = save_ensemble(tmp_path / "ens.npz", [member, member])
    assert run_main(ensemble_main, "tinyseg.ensemble", [str(ens), str(member)]) == 0
    assert load_ensemble(ens)[2]["members"] == 1


def _rewrite(src, dst, **changes):
    arrays = dict(np.load(src))
    arrays.update(changes)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("entry", ["version", "format", "format 1.7", "config", "members",
                                   "members 1e9", "members inf", "members 2.7", "meta list",
                                   "info string"])
def test_damaged_entries_are_checkpoint_errors(tmp_path, entry):
    """A damaged version, member format, member config, member count or metadata names the
    file in a CheckpointError (the commands' one-line error), not a ValueError or JSON
    traceback; a count of 1e9 members built a billion names first (22 GB, killed), 2.7 was
    cut to 2, a format of 1.7 read as 1."""
    member = save_model(tmp_path / "member.npz", nets(1)[0], make_meta(32, [0.5] * 3, [0.25] * 3))
    ens = save_ensemble(tmp_path / "ens.npz", [member])
    bad = tmp_path / "bad.npz"
    if entry == "version":
        meta = json.loads(str(np.load(member)["__meta__"]))
        _rewrite(member, bad, __meta__=np.array(json.dumps({**meta, "checkpoint_version": "x"})))
    elif entry == "format":
        _rewrite(ens, bad, **{"member0/__format__": np.array("x")})
    elif entry == "format 1.7":
        _rewrite(ens, bad, **{"member0/__format__": np.array(1.7)})
    elif entry == "config":
        _rewrite(ens, bad, **{"member0/__config__": np.array("{")})
    elif entry == "meta list":
        _rewrite(ens, bad, __meta__=np.array("[1, 2]"))
    elif entry == "info string":
        _rewrite(ens, bad, __ensemble__=np.array('"two"'))
    else:
        count = {"members": 0, "members 1e9": 10 ** 9, "members inf": float("inf"),
                 "members 2.7": 2.7}[entry]
        _rewrite(ens, bad, __ensemble__=np.array(json.dumps({"members": count})))
    with pytest.raises(CheckpointError, match=str(bad)):
        load_model(bad)


def test_a_member_given_twice_or_weights_that_do_not_fit_are_refused(tmp_path, capsys):
    from tinyseg.ensemble import main as ensemble_main
    member = save_model(tmp_path / "member.npz", nets(1)[0], make_meta(32, [0.5] * 3, [0.25] * 3))
    assert run_main(ensemble_main, "tinyseg.ensemble",
                    [str(tmp_path / "e.npz"), str(member), str(tmp_path / "." / "member.npz")]) == 1
    assert "given twice" in capsys.readouterr().err
    arrays = dict(np.load(member))
    name = next(k for k in arrays if k.endswith("weight") and arrays[k].ndim == 4)
    arrays[name] = arrays[name][:, :1]          # a weight cut to one input channel
    np.savez(tmp_path / "cut.npz", **arrays)
    assert run_main(ensemble_main, "tinyseg.ensemble",
                    [str(tmp_path / "e.npz"), str(member), str(tmp_path / "cut.npz")]) == 1
    assert "cut.npz: the weights do not fit" in capsys.readouterr().err
    assert not (tmp_path / "e.npz").exists()
