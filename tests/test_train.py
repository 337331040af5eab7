"""The training command: run directory, log, best/last checkpoints, resume, divergence.

All runs use the ``tiny`` preset on a made-up COCO directory (``tinyseg.data.fixture``):
32×32 images, a 3-pool Tiramisu, a handful of batches, so each run takes seconds once the
numba kernels are compiled.
"""
import os
import json
import math

import numpy as np
import pytest

import tinyseg.train as train_mod
from tinyseg.checkpoint import load_model, read
from tinyseg.cli import UserError, run_main
from tinyseg.data.batches import normalize
from tinyseg.data.fixture import FakeImage, make_coco_dir
from tinyseg.train import (PRESETS, Divergence, Trainer, TrainConfig, build_parser,
                           command_line, load_data, main, preset_config, stream_indices)

@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """These tests run whole training/inference loops: one numba thread (see conftest)."""


LOG_FIELDS = {"epoch", "images", "loss", "train_iou", "val_loss", "val_iou", "val_mean_iou",
              "val_pixel_accuracy", "lr", "images_per_s", "train_time", "val_time",
              "epoch_time", "elapsed", "best", "best_iou", "best_epoch"}


def make_data(root, n=48, seed=0):
    """``n`` pictures of one warm rectangle "person" covering 25-50 % of a 48×64 image."""
    rng = np.random.default_rng(seed)
    specs = []
    for _ in range(n):
        w, h = int(rng.integers(26, 40)), int(rng.integers(30, 44))
        x0, y0 = int(rng.integers(0, 64 - w)), int(rng.integers(0, 48 - h))
        specs.append(FakeImage(persons=[(x0, y0, x0 + w, y0 + h)]))
    make_coco_dir(root, specs, seed=seed)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_data(tmp_path_factory.mktemp("coco"))
    cache = tmp_path_factory.mktemp("cache")
    return root, cache


def tiny(data, **kw):
    """The tiny preset, made smaller still: 2 batches of 4 per epoch, 6 validation images."""
    root, _ = data
    kw = {"epoch_images": 8, "val_limit": 6, **kw}
    return preset_config("tiny", data=str(root), **kw)


def new_trainer(cfg, data, run_dir, **kw):
    train, val = load_data(cfg, data[1], progress=False)
    return Trainer(cfg, train, val, run_dir, report=lambda *a: None, **kw)


def weights(path):
    _, w, _, _, _ = read(path)
    return w


# -- the stream of images ----------------------------------------------------------------------
def test_stream_passes_are_permutations_and_windows_agree():
    n = 7
    whole = stream_indices(3, n, 0, 5 * n)
    for q in range(5):
        assert sorted(whole[q * n:(q + 1) * n]) == list(range(n))
    assert not np.array_equal(whole[:n], whole[n:2 * n])  # a new order each pass
    for start, count in [(0, 3), (5, 9), (13, 1), (20, 15)]:
        np.testing.assert_array_equal(stream_indices(3, n, start, count),
                                      whole[start:start + count])
    assert not np.array_equal(stream_indices(4, n, 0, n), whole[:n])  # the seed matters


def test_config_checks_and_presets():
    for name in PRESETS:
        preset_config(name).check()
    with pytest.raises(Exception, match="batch-size"):
        preset_config("tiny", batch_size=1).check()
    with pytest.raises(Exception, match="lr"):
        preset_config("tiny", lr=-1.0).check()
    with pytest.raises(Exception, match="recompute-bn"):
        preset_config("tiny", recompute_bn=-1).check()
    cfg = preset_config("small", lr=0.01)
    assert cfg.lr == 0.01 and cfg.size == PRESETS["small"]["size"]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_command_line_repeats_the_config():
    cfg = preset_config("tiny", lr=0.002, dropout=0.1, augment=False, train_limit=9,
                        recompute_bn=5, init="/some/best.npz", data="/some/where")
    cmd = command_line(cfg, "runs/x", threads=2).split()
    args = build_parser().parse_args(cmd[3:])
    again = train_mod._config_from_args(args)
    again.data = args.data
    assert again == cfg
    # one member of a preset whose default is an ensemble stays one member
    for members in (1, 3):
        cfg = preset_config("small", members=members)
        args = build_parser().parse_args(command_line(cfg).split()[3:])
        assert train_mod._config_from_args(args) == cfg


def _repeats_on_the_command_line(cfg, data, flag):
    """The run's command line parses back into ``cfg``; the default config has no ``flag``."""
    args = build_parser().parse_args(command_line(cfg).split()[3:])
    again = train_mod._config_from_args(args)
    again.data = cfg.data
    assert again == cfg and flag not in command_line(tiny(data))


def _a_batch():
    """A random float32 batch of 2 images at 32 px, about 30 % person pixels."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = (rng.random((2, 32, 32)) < 0.3).astype(np.int64)
    return x, y


def test_person_weight_reaches_the_loss_and_the_command(data, tmp_path):
    """``--person-weight W``: the training step's loss is the cross-entropy with class weights
    [1, W] (the loss module, checked against PyTorch there); 1 is the plain loss; the
    command line repeats it; 0 and nan are refused."""
    from tinyseg.losses import softmax_cross_entropy
    _repeats_on_the_command_line(tiny(data, person_weight=2.5), data, "--person-weight")
    x, y = _a_batch()
    losses = {}
    for w in (1.0, 2.5):
        tr = new_trainer(tiny(data, person_weight=w), data, tmp_path / f"run{w}")
        seen, forward = [], tr.model.forward
        tr.model.forward = lambda xb: seen.append(forward(xb)) or seen[-1]
        losses[w] = tr.train_step(x, y)
        assert losses[w] == pytest.approx(softmax_cross_entropy(
            seen[0], y, weight=None if w == 1.0 else [1.0, w])[0], rel=1e-6)
    assert losses[2.5] > losses[1.0] * 1.05    # the person pixels (30 %) weigh more
    for bad in (0.0, float("nan")):
        with pytest.raises(UserError, match="--person-weight must be a finite number > 0"):
            tiny(data, person_weight=bad).check()


def test_lovasz_reaches_the_loss_the_gradient_and_the_command(data, tmp_path):
    """``--lovasz β``: the step's loss is the cross-entropy plus β × the Lovász-Softmax loss of
    the person class, the network's backward gets the sum of their gradients (both checked
    in their own test files), the command line repeats β, and negative or nan is refused."""
    from tinyseg.losses import lovasz_softmax, softmax_cross_entropy
    cfg = tiny(data, lovasz=0.75)
    _repeats_on_the_command_line(cfg, data, "--lovasz")
    # the small preset's default is 3: its runs without the loss must say --lovasz 0
    for lam in (0.0, 3.0):
        small = preset_config("small", lovasz=lam, data=str(data[0]))
        args = build_parser().parse_args(command_line(small).split()[3:])
        assert train_mod._config_from_args(args).lovasz == lam
    x, y = _a_batch()
    tr = new_trainer(cfg, data, tmp_path / "run")
    seen, grads = [], []
    forward, backward = tr.model.forward, tr.model.backward
    tr.model.forward = lambda xb: seen.append(forward(xb)) or seen[-1]
    tr.model.backward = lambda d: grads.append(d.copy()) or backward(d)
    loss = tr.train_step(x, y)
    ce, d_ce = softmax_cross_entropy(seen[0], y)
    iou_loss, d_iou = lovasz_softmax(seen[0], y, classes=[1])
    assert iou_loss > 0.1 and loss == pytest.approx(ce + 0.75 * iou_loss, rel=1e-6)
    np.testing.assert_allclose(grads[0], d_ce + 0.75 * d_iou, rtol=1e-5, atol=1e-9)
    # a run recorded before the option existed has no "lovasz": it trained without the loss
    old = preset_config("small", data=str(data[0])).to_dict()
    del old["lovasz"]
    assert train_mod.TrainConfig.from_dict(old).lovasz == 0.0
    # the curves say what the training loss was (the validation loss is always the CE)
    assert train_mod.loss_names(cfg) == ("train loss (CE + 0.75 x Lovasz, padding counted)",
                                         "cross-entropy + 0.75 x Lovasz")
    assert train_mod.loss_names(tiny(data))[0] == "train loss (cross-entropy, padding counted)"
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--lovasz must be a finite number >= 0"):
            tiny(data, lovasz=bad).check()


# -- a tiny run ----------------------------------------------------------------------------------
def test_run_directory_and_log(data, tmp_path):
    cfg = tiny(data)
    tr = new_trainer(cfg, data, tmp_path / "run")
    tr.write_config()
    result = tr.run()
    assert result["status"] == "done" and result["epoch"] == cfg.epochs
    run = tmp_path / "run"
    for name in ["config.json", "log.jsonl", "best.npz", "last.npz", "curves.png",
                 "pictures/epoch_0001.png", f"pictures/epoch_{cfg.epochs:04d}.png"]:
        assert (run / name).is_file(), name
    conf = json.loads((run / "config.json").read_text())
    assert conf["train"] == cfg.to_dict()
    assert conf["model"] == tr.model.config
    assert conf["data"]["train_images"] == len(tr.train_data)
    assert conf["command"].startswith("python -m tinyseg.train --preset tiny")
    lines = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == list(range(1, cfg.epochs + 1))
    for l in lines:
        assert LOG_FIELDS <= set(l)
        assert math.isfinite(l["loss"]) and 0 <= l["val_iou"] <= 1
        assert l["images"] == tr.steps * cfg.batch_size
    assert lines[0]["lr"] == pytest.approx(cfg.lr)
    assert lines[1]["lr"] == pytest.approx(cfg.lr * cfg.lr_decay)
    # last.npz resumes, best.npz is a model with the data's normalisation
    _, _, meta, state, _ = read(run / "last.npz")
    assert state["epoch"] == cfg.epochs and state["batch"] == 0
    model, info = load_model(run / "best.npz")
    assert info["size"] == cfg.size
    np.testing.assert_array_equal(info["mean"], tr.train_data.mean)


def test_progress_says_when_the_eta_leaves_out_validation(data, tmp_path):
    """The ETA counted training only until the first validation was timed, without saying
    so (it looked done when every epoch still had its validation to come)."""
    lines = []
    cfg = tiny(data, epochs=2)
    train, val = load_data(cfg, data[1], progress=False)
    tr = Trainer(cfg, train, val, tmp_path / "run", report=lambda s, *a: lines.append(s))
    tr.write_config()
    tr.run()
    progress = [l for l in lines if "ETA" in l]
    first = [l for l in progress if l.startswith("epoch 1/")]
    second = [l for l in progress if l.startswith("epoch 2/")]
    assert first and second
    assert all(l.endswith(" + validation") for l in first)
    assert not any("validation" in l for l in second)


def test_each_epoch_takes_the_next_images_new_augmentation_and_logs_their_mean_loss(
        data, tmp_path, monkeypatch):
    """Three things no test held (mutation audit, 2026-11-28): epoch e trains on the stream's
    window e (not the first window again), with augmentation drawn for that epoch (not the
    same every epoch), and log.jsonl's loss is the mean of the epoch's batch losses (it
    could have been divided by the batch size once more)."""
    seen, losses = [], []
    real_batch, real_step = train_mod.make_batch, Trainer.train_step

    def batch(dataset, idx, mean, std, augment, rng):
        seen.append((idx.copy(), rng.bit_generator.state["state"]["state"]))
        return real_batch(dataset, idx, mean, std, augment, rng)

    def step(self, x, y):
        losses.append(real_step(self, x, y))
        return losses[-1]
    monkeypatch.setattr(train_mod, "make_batch", batch)
    monkeypatch.setattr(Trainer, "train_step", step)
    cfg = tiny(data, epochs=2)
    tr = new_trainer(cfg, data, tmp_path / "run")
    tr.write_config()
    tr.run()
    S, B, n = tr.steps, cfg.batch_size, len(tr.train_data)
    assert len(seen) == 2 * S
    for e in range(2):
        order = np.concatenate([idx for idx, _ in seen[e * S:(e + 1) * S]])
        np.testing.assert_array_equal(order, train_mod.stream_indices(cfg.seed, n, e * S * B,
                                                                      S * B))
    assert not np.array_equal(seen[0][0], seen[S][0])
    assert all(seen[b][1] != seen[S + b][1] for b in range(S))      # augmentation per epoch
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for e in range(2):
        assert log[e]["loss"] == pytest.approx(np.mean(losses[e * S:(e + 1) * S]), rel=1e-12)


def test_masks_without_a_person_pixel_are_refused_before_training(tmp_path, capsys):
    """Masks with no person pixel (bounding-box-only exports, now refused when the
    annotations are read; here outlines outside the pictures) passed ``--filter all``: the
    run trained on all-background masks, logged a validation IoU of NaN, wrote no best.npz
    and said only 'done' (own-data audit, 2026-11-28)."""
    root = tmp_path / "coco"
    data = make_coco_dir(root, [FakeImage(persons=[(10, 8, 40, 40)]) for _ in range(30)])
    for a in data["annotations"]:
        a["segmentation"] = [[100, 100, 110, 100, 110, 110]]   # outside: no person pixel
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    args = ["--preset", "tiny", "--data", str(root), "--cache", str(tmp_path / "c"),
            "--filter", "all", "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]
    assert run_main(main, "tinyseg.train", args) == 1
    err = capsys.readouterr().err
    assert "split of" in err and "has no person pixel in its masks" in err
    assert "outlines lie inside" in err and not (tmp_path / "run" / "log.jsonl").exists()


@pytest.mark.parametrize("recompute", [0, 6])
def test_validated_and_saved_model_has_the_recomputed_statistics(data, tmp_path, recompute):
    """With recompute_bn, best.npz holds batch-norm statistics averaged over the first N
    training images (un-augmented) -- the model that was validated -- and its validation
    IoU is the logged one; without, the running averages of training."""
    from tinyseg.evaluate import evaluate_dataset
    from tinyseg.layers.batchnorm import recompute_running_stats

    cfg = tiny(data, epochs=1, recompute_bn=recompute, dropout=0.2)
    tr = new_trainer(cfg, data, tmp_path / "run")
    tr.run()
    model, info = load_model(tmp_path / "run" / "best.npz")
    saved = model.state_dict()
    v = tr.val_data
    ev = evaluate_dataset(model, v.images, v.masks, v.boxes, info["mean"], info["std"],
                          batch_size=8)
    logged = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert ev.person_iou == logged["val_iou"]
    x = normalize(tr.train_data.images[:6], info["mean"], info["std"])
    assert recompute_running_stats(model, [x[:4], x[4:6]]) == 2
    same = all(np.array_equal(saved[k], v) for k, v in model.state_dict().items())
    assert same == bool(recompute)


def test_recompute_leaves_out_a_single_image_batch(data, tmp_path, monkeypatch):
    """7 images in batches of 3: batches 3, 3 (the lone 7th image would have one value per
    channel at a 1x1 bottleneck); 1 image: no batch, the running averages stay."""
    seen = []
    monkeypatch.setattr(train_mod, "recompute_running_stats",
                        lambda model, batches: seen.append([len(b) for b in batches]))
    tr = new_trainer(tiny(data, batch_size=3, recompute_bn=7), data, tmp_path / "a")
    tr.recompute_bn()
    tr.cfg.recompute_bn = 1
    tr.recompute_bn()
    assert seen == [[3, 3]]


def test_init_starts_from_a_checkpoint_and_resume_does_not_need_it(data, tmp_path):
    first = new_trainer(tiny(data, epochs=1), data, tmp_path / "a")
    first.run()
    ckpt = tmp_path / "a" / "best.npz"
    cfg = tiny(data, epochs=2, init=str(ckpt), dropout=0.3)   # dropout may differ
    tr = new_trainer(cfg, data, tmp_path / "b")
    start = weights(ckpt)
    for k, v in tr.model.state_dict().items():
        np.testing.assert_array_equal(v, start[k], err_msg=k)
    fresh = new_trainer(tiny(data, epochs=2), data, tmp_path / "c")
    assert not all(np.array_equal(v, start[k]) for k, v in fresh.model.state_dict().items())

    def stop(t):
        if t.epoch == 1 and t.batch == 1:
            t.request_stop()
    tr.on_batch = stop
    tr.write_config()
    assert tr.run()["status"] == "stopped"
    ckpt.rename(tmp_path / "moved.npz")                     # resuming reads last.npz only
    again = Trainer.resume(tmp_path / "b", cache_dir=data[1], progress=False,
                           report=lambda *x: None)
    assert again.run()["status"] == "done"


def test_init_with_another_network_is_refused(data, tmp_path):
    first = new_trainer(tiny(data, epochs=1), data, tmp_path / "a")
    first.run()
    cfg = tiny(data, init=str(tmp_path / "a" / "best.npz"),
               model_overrides={"growth_rate": 4})
    with pytest.raises(Exception, match="growth_rate"):
        new_trainer(cfg, data, tmp_path / "b")
    with pytest.raises(Exception, match="no weight file"):
        new_trainer(tiny(data, init=str(tmp_path / "nothing.npz")), data, tmp_path / "c")


class FakeEval:
    def __init__(self, iou):
        self.person_iou, self.mean_iou, self.pixel_accuracy, self.loss = iou, iou, iou, 1 - iou
        self.finite = True          # what Evaluation says when no output was NaN or inf


@pytest.mark.parametrize("ious,best_epoch", [([0.5, 0.3, 0.4], 1), ([0.2, 0.3, 0.25], 2),
                                             ([0.3, 0.3, 0.6], 3)])
def test_best_only_when_validation_iou_improves(data, tmp_path, monkeypatch, ious, best_epoch):
    cfg = tiny(data, epochs=len(ious), pictures=0)
    tr = new_trainer(cfg, data, tmp_path / "run")
    seen = iter(ious)
    saved = []
    monkeypatch.setattr(Trainer, "validate", lambda self: FakeEval(next(seen)))
    real_save = train_mod.save_model
    monkeypatch.setattr(train_mod, "save_model",
                        lambda path, model, meta: saved.append(meta["epoch"]) or
                        real_save(path, model, meta))
    tr.run()
    improved = [e + 1 for e, v in enumerate(ious) if v > max([-1.0] + ious[:e])]
    assert saved == improved
    _, info = load_model(tmp_path / "run" / "best.npz")
    assert info["epoch"] == best_epoch and info["val_iou"] == max(ious)
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [l["best"] for l in log] == [e + 1 in improved for e in range(len(ious))]


@pytest.mark.parametrize("stop_epoch,stop_batch", [(0, 1), (1, 2)])
def test_resume_gives_the_uninterrupted_result(data, tmp_path, stop_epoch, stop_batch):
    """Stopped mid-epoch (or at an epoch's last batch) and resumed == never stopped, bitwise."""
    cfg = tiny(data, epochs=3)
    a = new_trainer(cfg, data, tmp_path / "a")
    a.write_config()
    assert a.run()["status"] == "done"

    def stop(tr):
        if tr.epoch == stop_epoch and tr.batch == stop_batch:
            tr.request_stop()

    b = new_trainer(tiny(data, epochs=3), data, tmp_path / "b", on_batch=stop)
    b.write_config()
    first = b.run()
    assert first["status"] == "stopped"
    _, _, _, state, _ = read(tmp_path / "b" / "last.npz")
    assert (state["epoch"], state["batch"]) in {(stop_epoch, stop_batch),
                                                (stop_epoch + 1, 0)}
    c = Trainer.resume(tmp_path / "b", cache_dir=data[1], progress=False,
                       report=lambda *x: None)
    assert c.run()["status"] == "done"

    wa, wb = weights(tmp_path / "a" / "last.npz"), weights(tmp_path / "b" / "last.npz")
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    la = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [(l["epoch"], l["loss"], l["val_iou"]) for l in la] == \
        [(l["epoch"], l["loss"], l["val_iou"]) for l in lb]
    ba, bb = weights(tmp_path / "a" / "best.npz"), weights(tmp_path / "b" / "best.npz")
    for k in ba:
        np.testing.assert_array_equal(ba[k], bb[k], err_msg=k)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_huge_learning_rate_stops_with_epoch_and_batch(data, tmp_path):
    """The one-line Divergence, and no NumPy overflow warnings printed before it (four of
    them, with their source lines, came first)."""
    cfg = tiny(data, lr=1e30)
    tr = new_trainer(cfg, data, tmp_path / "run")
    with pytest.raises(Divergence, match=r"epoch 1, batch \d+ of \d+.*no checkpoint"):
        tr.run()
    assert not (tmp_path / "run" / "last.npz").exists()


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_divergence_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, bad):
    cfg = tiny(data, epochs=3)
    tr = new_trainer(cfg, data, tmp_path / "run")
    calls = {"n": 0}
    real = train_mod.softmax_cross_entropy
    steps = tr.steps

    def poisoned(logits, y, **kw):
        calls["n"] += 1
        loss, d = real(logits, y, **kw)
        return (float(bad) if calls["n"] == steps + 2 else loss), d  # epoch 2, batch 2

    monkeypatch.setattr(train_mod, "softmax_cross_entropy", poisoned)
    last = tmp_path / "run" / "last.npz"
    with pytest.raises(Divergence, match=bad + r" at epoch 2, batch 2 of 2 .*still holds"):
        tr.run()
    _, _, _, state, _ = read(last)
    assert state["epoch"] == 1 and state["batch"] == 0
    for k, v in weights(last).items():
        assert np.all(np.isfinite(v)), k


def test_an_output_that_overflows_with_finite_weights_is_a_divergence(data, tmp_path):
    """Weights finite but so large that the output overflows: the epoch's picture raised
    NonFiniteOutput ('weights are damaged') as a traceback, and the validation IoU of a NaN
    output was logged as if it were a result (a review of the change that added the check).
    The epoch now ends in a Divergence that names it, and nothing is saved from it."""
    cfg = tiny(data, epochs=3)
    tr = new_trainer(cfg, data, tmp_path / "run")
    real = tr.validate

    def blown():
        w = next(p for n, p, _ in tr.model.named_parameters() if p.ndim == 4)
        w *= np.float32(1e38)          # still finite
        assert np.all(np.isfinite(w))
        return real()

    tr.validate = blown
    with pytest.raises(Divergence, match=r"output on the validation split is NaN or infinite "
                                         r"after epoch 1 .*no checkpoint had been written"):
        tr.run()
    assert not (tmp_path / "run" / "best.npz").exists()


def test_time_budget_stops_resumably(data, tmp_path):
    cfg = tiny(data)
    tr = new_trainer(cfg, data, tmp_path / "run", max_seconds=0.0)
    result = tr.run()
    assert result["status"] == "stopped" and result["reason"].startswith("time budget reached")
    _, _, _, state, _ = read(tmp_path / "run" / "last.npz")
    assert (state["epoch"], state["batch"]) == (0, 0)


# -- the command line ------------------------------------------------------------------------------
def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--preset", "--data", "--filter", "--out", "--resume", "--size", "--batch-size",
                 "--epochs", "--epoch-images", "--lr", "--lr-decay", "--weight-decay",
                 "--rms-alpha", "--rms-eps", "--dropout", "--augment", "--seed", "--threads",
                 "--max-minutes"]:
        assert flag in text, flag
    assert "default" in text and "small 64" in text


def test_bad_flags_exit_2_and_user_errors_exit_1(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--size", "big"])
    assert e.value.code == 2
    capsys.readouterr()
    monkeypatch.delenv("TINYSEG_DATA", raising=False)
    assert run_main(main, "tinyseg.train", ["--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinyseg.train: error:") and "TINYSEG_DATA" in err
    assert len(err.splitlines()) == 1
    assert run_main(main, "tinyseg.train", ["--resume", str(tmp_path / "nothing")]) == 1
    assert "not a run directory" in capsys.readouterr().err
    # each of these got past the checks: a traceback, or a run that stopped at once (0, -1)
    # or never (nan)
    for flag, value in (("--size", "1025"), ("--max-minutes", "0"), ("--max-minutes", "-1"),
                        ("--max-minutes", "nan"), ("--weight-decay", "inf"),
                        ("--rms-eps", "inf"), ("--seed", "-1"),
                        ("--model-overrides", '{"in_channels": 1}')):
        assert run_main(main, "tinyseg.train", ["--out", str(tmp_path / "r"), flag, value]) == 1
        err = capsys.readouterr().err
        assert err.startswith("tinyseg.train: error: ") and len(err.splitlines()) == 1, err
        assert flag in err or "in_channels" in err, err


def test_command_runs_and_resumes(data, tmp_path, capsys, monkeypatch):
    root, cache = data
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # --threads sets them: restored after the test
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--data", str(root), "--cache", str(cache), "--out", str(out),
            "--epochs", "1", "--quiet", "--threads", "1"]
    assert run_main(main, "tinyseg.train", args) == 0
    text = capsys.readouterr().out
    assert "epoch 1/1" in text and "test split" in text
    tests = json.loads((out / "test.json").read_text())
    assert {"person_iou", "mean_iou", "pixel_accuracy"} <= set(tests["default"])
    d = tests["default"]       # the counts make the IoU, and the range is redone from them
    assert sum(d["intersection"]) / sum(d["union"]) == pytest.approx(d["person_iou"], abs=1e-12)
    assert len(d["ids"]) == len(d["union"]) == d["images"] and d["ids"] == sorted(d["ids"])
    from tinyseg.metrics import bootstrap_range
    assert d["person_iou_bootstrap"] == bootstrap_range(d["intersection"], d["union"])
    from tinyseg.evaluate import main as evaluate   # the same range as evaluate gives
    assert run_main(evaluate, "tinyseg.evaluate", [
        "--checkpoint", str(out / "best.npz"), "--data", str(root), "--cache", str(cache),
        "--filter", "default", "--worst", "0", "--out", str(tmp_path / "ev")]) == 0
    capsys.readouterr()
    ev = json.loads((tmp_path / "ev" / "results.json").read_text())["filters"]["default"]
    assert ev["person_iou_bootstrap"] == d["person_iou_bootstrap"]
    # the same --out again is refused; --resume with more epochs goes on
    assert run_main(main, "tinyseg.train", args) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert run_main(main, "tinyseg.train", ["--resume", str(out), "--epochs", "2", "--quiet",
                                            "--cache", str(cache), "--no-test"]) == 0
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == 2
    conf = json.loads((out / "config.json").read_text())
    assert conf["train"]["epochs"] == 2 and conf["resumed"][0]["epoch"] == 1
    assert "--epochs 2" in conf["command"]
    assert run_main(main, "tinyseg.train", ["--resume", str(out), "--lr", "1"]) == 1
    assert "cannot be changed when resuming" in capsys.readouterr().err
    # changes to "off" or 0 were taken as "not given" and silently ignored; a saved value
    # repeated is no change
    for flag in (["--no-augment"], ["--recompute-bn", "0"], ["--dropout", "0"],
                 ["--weight-decay", "0"], ["--preset", "paper"],
                 # a flag given with its parser default was taken as "not given"
                 ["--small"], ["--preset", "small"]):
        assert run_main(main, "tinyseg.train", ["--resume", str(out), *flag]) == 1, flag
        assert "cannot be changed when resuming" in capsys.readouterr().err
    assert run_main(main, "tinyseg.train", ["--resume", str(out), "--augment", "--tiny",
                                            "--cache", str(cache), "--quiet"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    # fewer --epochs than done: refused, config.json untouched (it was rewritten to say
    # "epochs": 1 and "--epochs 1" while the log and checkpoints held 2)
    before = (out / "config.json").read_bytes()
    assert run_main(main, "tinyseg.train", ["--resume", str(out), "--epochs", "1",
                                            "--cache", str(cache), "--quiet"]) == 1
    assert "has already done 2 epochs: --epochs 1 cannot shorten it" in \
        capsys.readouterr().err
    assert (out / "config.json").read_bytes() == before
    # a run file its owner made read-only: refused before any work (it was refused after a
    # whole epoch, with log.jsonl, config.json and curves.png already rewritten)
    log_before = (out / "log.jsonl").read_bytes()
    os.chmod(out / "last.npz", 0o444)
    try:
        assert run_main(main, "tinyseg.train", ["--resume", str(out), "--epochs", "3",
                                                "--cache", str(cache), "--quiet"]) == 1
        assert "last.npz: read-only; not replaced" in capsys.readouterr().err
        assert (out / "config.json").read_bytes() == before
        assert (out / "log.jsonl").read_bytes() == log_before
    finally:
        os.chmod(out / "last.npz", 0o644)


def test_ctrl_c_during_the_test_report_and_resume_writes_it(data, tmp_path, capsys,
                                                             monkeypatch):
    """Ctrl-C after the last epoch, while the test split is scored: a traceback, no
    test.json, and --resume said "nothing to do", so the figures could never be written."""
    import tinyseg.train as T
    root, cache = data
    out = tmp_path / "run"
    real = T.write_test_report

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(T, "write_test_report", interrupted)
    assert run_main(main, "tinyseg.train", [
        "--preset", "tiny", "--data", str(root), "--cache", str(cache), "--out", str(out),
        "--epochs", "1", "--quiet", "--threads", "1"]) == 130
    assert "during the test-split evaluation; the run itself is done" in capsys.readouterr().err
    assert not (out / "test.json").exists()
    monkeypatch.setattr(T, "write_test_report", real)
    assert run_main(main, "tinyseg.train", ["--resume", str(out), "--cache", str(cache),
                                            "--quiet"]) == 0
    assert "test split" in capsys.readouterr().out and (out / "test.json").is_file()


def test_a_damaged_run_directory_is_named_not_a_traceback(data, tmp_path, capsys):
    import shutil
    root, cache = data
    good = tmp_path / "good"
    assert run_main(main, "tinyseg.train", [
        "--preset", "tiny", "--data", str(root), "--cache", str(cache), "--out", str(good),
        "--epochs", "1", "--quiet", "--threads", "1", "--no-test"]) == 0
    capsys.readouterr()

    def damaged(name, change):
        run = tmp_path / name
        shutil.copytree(good, run)
        change(run)
        assert run_main(main, "tinyseg.train", ["--resume", str(run), "--epochs", "2",
                                                "--cache", str(cache), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("tinyseg.train: error: ") and len(err.splitlines()) == 1, err
        return err

    def cut(path, keep=100):
        path.write_bytes(path.read_bytes()[:keep])

    assert "last.npz: cannot resume" in damaged("a", lambda r: cut(r / "last.npz"))
    assert "config.json: damaged" in damaged("b", lambda r: cut(r / "config.json", 50))
    assert "config.json: damaged" in damaged(
        "c", lambda r: (r / "config.json").write_text("[]"))

    def bad_batch(r):
        conf = json.loads((r / "config.json").read_text())
        conf["train"]["batch_size"] = "x"
        (r / "config.json").write_text(json.dumps(conf))
    assert "config.json: damaged" in damaged("d", bad_batch)
    assert "log.jsonl: line 1 is damaged" in damaged(
        "e", lambda r: cut(r / "log.jsonl", 20))

    def state_edit(**changes):       # a hand-edited __state__ gave a numpy traceback
        def change(r):
            with np.load(r / "last.npz") as z:
                arrays = {k: z[k] for k in z.files}
            state = json.loads(str(arrays["__state__"]))
            arrays["__state__"] = np.array(json.dumps({**state, **changes}))
            np.savez(r / "last.npz", **arrays)
        return change
    for k, change in enumerate([dict(epoch=-3), dict(batch=-5), dict(best_epoch=7),
                                dict(elapsed=-1.0)]):
        err = damaged(f"s{k}", state_edit(**change))
        assert "last.npz: cannot resume from it (damaged training state" in err, err


def test_statistics_batches_leave_out_a_single_image_batch():
    from tinyseg.train import statistics_batches
    images = np.arange(17 * 4 * 4 * 3, dtype=np.uint8).reshape(17, 4, 4, 3)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    sizes = [len(b) for b in statistics_batches(images, 8, mean, std)]
    assert sizes == [8, 8]                                 # the 17th image alone: left out
    assert [len(b) for b in statistics_batches(images, 8, mean, std, limit=10)] == [8, 2]
    assert list(statistics_batches(images[:1], 8, mean, std)) == []
    first = next(statistics_batches(images, 8, mean, std))
    assert first.shape == (8, 3, 4, 4) and first.dtype == np.float32


def test_an_epoch_is_its_images_rounded_up_to_whole_batches():
    """``--epoch-images 10 --batch-size 4`` trains 3 steps (12 images), not 2 (8)."""
    assert TrainConfig(epoch_images=10, batch_size=4).steps_per_epoch(100) == 3
    assert TrainConfig(epoch_images=8, batch_size=4).steps_per_epoch(100) == 2
    assert TrainConfig(epoch_images=3, batch_size=8).steps_per_epoch(100) == 1
    assert TrainConfig(epoch_images=None, batch_size=8).steps_per_epoch(170) == 22


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """A tiny run stopped at once by --max-minutes through the command."""
    from tinyseg.cli import run_main
    from tinyseg.train import main
    import numba
    root, cache = data
    out = tmp_path_factory.mktemp("runs") / "run"
    before = numba.get_num_threads()
    saved = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                            "MKL_NUM_THREADS")}
    try:
        rc = run_main(main, "tinyseg.train",
                      ["--preset", "tiny", "--data", str(root), "--cache", str(cache),
                       "--out", str(out), "--epochs", "1", "--quiet", "--threads", "1",
                       "--max-minutes", "1e-9"])
        rc2 = run_main(main, "tinyseg.train",
                       ["--resume", str(out), "--max-minutes", "1e-9", "--cache", str(cache),
                        "--quiet", "--no-test"])
    finally:
        numba.set_num_threads(before)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out, rc, rc2


def test_a_time_budget_stop_exits_130_with_last_npz(stopped_run):
    out, rc, _ = stopped_run
    assert rc == 130 and (out / "last.npz").is_file()


def test_max_minutes_is_allowed_when_resuming(stopped_run):
    _, _, rc2 = stopped_run
    assert rc2 == 130


def test_config_json_records_the_data_mean_and_std(stopped_run):
    from tinyseg.checkpoint import read
    out, _, _ = stopped_run
    conf = json.loads((out / "config.json").read_text())
    meta = read(out / "last.npz")[2]
    assert conf["data"]["mean"] == meta["mean"]
    assert conf["data"]["std"] == meta["std"]
    assert conf["data"]["std"] != conf["data"]["mean"]


def test_the_time_budget_counts_earlier_sessions(data, tmp_path):
    from tinyseg.train import Trainer, load_data, preset_config
    root, cache = data
    cfg = preset_config("tiny", data=str(root), epoch_images=8, val_limit=6)
    train, val = load_data(cfg, cache, progress=False)
    tr = Trainer(cfg, train, val, tmp_path / "run", report=lambda *a: None, max_seconds=60.0)
    tr.elapsed = 120.0                       # earlier sessions already took 2 minutes
    result = tr.run(handle_sigint=False)
    assert result["status"] == "stopped" and result["reason"].startswith("time budget reached")
    assert (result["epoch"], result["batch"]) == (0, 0)
    # said, so that a loop of resumes with the same budget is not left wondering
    assert "has taken 2.0 of its --max-minutes 1, earlier sessions counted" in result["reason"]


def test_resume_with_the_same_init_given_relative_is_no_change(tmp_path, monkeypatch):
    from tinyseg.train import _given_flags, _resume_changes, build_parser
    (tmp_path / "w.npz").write_bytes(b"")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"init": str(tmp_path / "w.npz")}}))
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    argv = ["--resume", str(run), "--init", "w.npz"]
    args = parser.parse_args(argv)
    assert _resume_changes(args, parser, run, _given_flags(parser, argv)) == []
    argv = ["--resume", str(run), "--init", "other.npz"]
    args = parser.parse_args(argv)
    assert _resume_changes(args, parser, run, _given_flags(parser, argv)) == ["init"]


def test_epoch_picture_counts_only_the_picture_not_the_padding(data, tmp_path, monkeypatch):
    import tinyseg.train as train_mod
    import tinyseg.viz as viz
    from tinyseg.train import Trainer, eval_inside, load_data, preset_config
    root, cache = data
    cfg = preset_config("tiny", data=str(root), epoch_images=8, val_limit=6)
    train, val = load_data(cfg, cache, progress=False)
    tr = Trainer(cfg, train, val, tmp_path / "run", report=lambda *a: None)
    # a model that says "person" everywhere, padding included
    monkeypatch.setattr(train_mod, "predict_labels",
                        lambda model, x, batch_size: np.ones((len(x),) + x.shape[2:], np.int64))
    seen = {}
    real_grid = viz.grid
    monkeypatch.setattr(viz, "grid", lambda tiles, ncols, labels: seen.setdefault(
        "labels", labels) and real_grid(tiles, ncols=ncols, labels=labels))
    tr._draw()
    want = []
    for i in tr.picture_idx:
        inside = eval_inside(val.boxes[i], val.images.shape[1])
        assert inside.sum() < inside.size               # there is padding to leave out
        t = val.masks[i] != 0
        want.append(f"prediction, IoU {t.sum() / inside.sum():.2f}")
    assert seen["labels"][2::3] == want


def test_command_line_repeats_the_val_limit():
    cfg = preset_config("tiny", train_limit=9, val_limit=5, data="/some/where")
    from tinyseg.train import _config_from_args
    args = build_parser().parse_args(command_line(cfg).split()[3:])
    again = _config_from_args(args)
    again.data = args.data
    assert again == cfg and again.val_limit == 5


def test_picture_images_are_spread_over_the_validation_split(data, tmp_path):
    tr = new_trainer(tiny(data, pictures=3), data, tmp_path / "run")
    n = len(tr.val_data)
    assert n >= 4
    idx = tr.picture_idx.tolist()       # first, middle, last of the validation images
    assert len(idx) == 3 and idx[0] == 0 and idx[-1] == n - 1 and 0 < idx[1] < n - 1


def test_curves_plot_train_and_val_series_from_the_log(data, tmp_path, monkeypatch):
    import tinyseg.plot as plot
    seen = {}
    monkeypatch.setattr(plot, "line_plot", lambda series, *a, **k: seen.update(series))
    tr = new_trainer(tiny(data, epochs=1, pictures=0), data, tmp_path / "run")
    tr.history = [{"epoch": 1, "loss": 0.9, "val_loss": 0.7, "train_iou": 0.3, "val_iou": 0.4},
                  {"epoch": 2, "loss": 0.8, "val_loss": 0.6, "train_iou": 0.35, "val_iou": 0.5}]
    tr._draw()
    assert seen == {"train loss (cross-entropy, padding counted)": ([1, 2], [0.9, 0.8]),
                    "val loss (cross-entropy)": ([1, 2], [0.7, 0.6]),
                    "train IoU (padding counted)": ([1, 2], [0.3, 0.35]),
                    "val IoU": ([1, 2], [0.4, 0.5])}


def test_out_refuses_an_ensemble_run_directory(tmp_path, capsys):
    """``--out`` naming an ensemble run (ensemble.json, no config.json) is refused like any run
    directory: a single run there would write its best.npz over the ensemble's."""
    run = tmp_path / "ens"
    run.mkdir()
    (run / "ensemble.json").write_text("{}")
    (run / "best.npz").write_bytes(b"PK the ensemble")
    root = make_data(tmp_path / "coco", n=12)
    code = run_main(main, "tinyseg.train", ["--tiny", "--data", str(root), "--cache",
                                            str(tmp_path / "cache"), "--out", str(run), "--quiet"])
    assert code == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "best.npz").read_bytes() == b"PK the ensemble"
    assert not (run / "config.json").exists()


def test_out_refuses_a_folder_holding_files_a_run_writes(tmp_path, capsys):
    """``--out`` naming a folder that holds best.npz or log.jsonl (but no run) is refused
    before anything is written: the run replaced the user's best.npz and appended to their
    log.jsonl. A file named by ``--out`` is refused too; a folder holding only files that a
    run never writes is used, and those files are left as they were."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.npz").write_bytes(b"PK the user's model")
    (mine / "log.jsonl").write_text('{"mine": 1}\n')
    root = make_data(tmp_path / "coco", n=12)
    args = ["--tiny", "--data", str(root), "--cache", str(tmp_path / "cache"), "--quiet",
            "--epochs", "1", "--epoch-images", "4", "--no-test"]
    assert run_main(main, "tinyseg.train", args + ["--out", str(mine)]) == 1
    err = capsys.readouterr().err
    assert f"{mine}: holds best.npz, log.jsonl, which a run would replace" in err, err
    assert (mine / "best.npz").read_bytes() == b"PK the user's model"
    assert (mine / "log.jsonl").read_text() == '{"mine": 1}\n'
    assert sorted(q.name for q in mine.iterdir()) == ["best.npz", "log.jsonl"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert run_main(main, "tinyseg.train", args + ["--out", str(afile)]) == 1
    assert "is a file" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_main(main, "tinyseg.train", args + ["--out", str(other), "--members", "1"]) == 0
    assert (other / "best.npz").exists() and (other / "notes.txt").read_text() == "mine"


def test_more_pools_than_the_size_allows_are_refused(tmp_path, capsys):
    """``--model-overrides '{"pools": 6}'`` at 32 px padded every image to 64 px without a word
    (pools 10: to 1024 px); refused before the run directory is made."""
    root = make_data(tmp_path / "coco", n=12)
    out = tmp_path / "run"
    code = run_main(main, "tinyseg.train", ["--tiny", "--data", str(root), "--cache",
                                            str(tmp_path / "cache"), "--out", str(out),
                                            "--model-overrides", '{"pools": 6}', "--quiet"])
    assert code == 1
    assert "--size 32 is smaller than 2^pools = 64" in capsys.readouterr().err
    assert not (out / "config.json").exists()


def test_a_run_that_never_reached_a_checkpoint_says_how_to_start_again(data, tmp_path, capsys):
    """A run killed during its first epoch (say, out of memory) leaves config.json and no
    last.npz: --resume has nothing to resume and the same --out is refused, and both say
    to delete the folder (they used to point at each other)."""
    root, cache = data
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"train": tiny(data).to_dict()}))
    args = ["--tiny", "--data", str(root), "--cache", str(cache), "--out", str(out), "--quiet"]
    assert run_main(main, "tinyseg.train", args) == 1
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and "delete the folder" in err
    assert run_main(main, "tinyseg.train", ["--resume", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "delete the folder" in err


def test_a_run_folder_is_trained_by_one_process_at_a_time(data, tmp_path, capsys):
    """A second 'train --resume' of a member folder, while the ensemble's own process trained
    it, ran beside it: the log interleaved epochs 28, 29, 28, 30, 29 (a fuzzing helper). The
    folder's lock now refuses it; a lock whose process is gone is taken over; a folder made
    for a run that failed before starting is not left behind."""
    import subprocess
    import sys
    from tinyseg.io import LOCK_NAME
    root, cache = data
    run = tmp_path / "run"
    args = ["--preset", "tiny", "--data", str(root), "--cache", str(cache), "--epochs", "1",
            "--quiet", "--threads", "1", "--no-test"]
    assert run_main(main, "tinyseg.train", args + ["--out", str(run)]) == 0
    assert not (run / LOCK_NAME).exists()                        # released at the end
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK_NAME).write_text(f"{other.pid}\n")            # a live training elsewhere
        assert run_main(main, "tinyseg.train", ["--resume", str(run), "--epochs", "2",
                                                "--cache", str(cache), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"{run}: process {other.pid} is training this run" in err, err
        assert len((run / "log.jsonl").read_text().splitlines()) == 1
        # --out on a run being trained: named as such, not "delete the folder" (which was
        # said while its first epoch ran, with no last.npz yet)
        (run / "last.npz").rename(run / "last.npz.away")
        assert run_main(main, "tinyseg.train", args + ["--out", str(run)]) == 1
        err = capsys.readouterr().err
        assert f"process {other.pid} is training this run" in err and "delete the folder" not in err
        (run / "last.npz.away").rename(run / "last.npz")
    finally:
        other.kill()
        other.wait()
    # that process is gone now: its lock is stale and taken over
    assert run_main(main, "tinyseg.train", ["--resume", str(run), "--epochs", "2", "--cache",
                                            str(cache), "--quiet", "--no-test"]) == 0
    assert len((run / "log.jsonl").read_text().splitlines()) == 2 and not (run / LOCK_NAME).exists()
    from tinyseg.io import folder_lock
    missing = tmp_path / "new-run"
    with pytest.raises(RuntimeError):
        with folder_lock(missing):
            assert (missing / LOCK_NAME).read_text() == f"{os.getpid()}\n"
            raise RuntimeError("the data failed to load")
    assert not missing.exists()
