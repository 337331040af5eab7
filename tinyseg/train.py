"""``python -m tinyseg.train``: train a Tiramisu to tell people from background.

The recipe is the original's (and the Tiramisu paper's): two classes, per-pixel
cross-entropy (to which the ``small`` preset adds 3 × the Lovász-Softmax loss, a stand-in
for 1 − IoU: ``--lovasz``), RMSprop with a small exponential learning-rate decay per
epoch, and the person IoU on the validation split after every epoch as the number that
matters (the best model by validation IoU is kept, Keras' ``save_best_only``)::

    for epoch e = 1 … E:
        for each batch (x, y) of the epoch's images (augmented):
            L, ∂L/∂z = softmax_cross_entropy(model(x), y)   z: logits (B, 2, S, S)
            model.backward(∂L/∂z);  RMSprop step        θ ← θ − η_e g / (√v + ε)
        (batch-norm statistics: averages over fixed training images, ``recompute_bn``)
        IoU_val = |P ∩ T| / |P ∪ T| on the validation split  (P: softmax(z)₁ ≥ 0.5)
        η_{e+1} = γ · η_e                                (η_1 = η_0: epoch e at η_0 γ^(e−1))
        keep best.npz if IoU_val is the best so far; always write last.npz

An *epoch* is ``epoch_images`` images (the original used 500 so that it could save often),
rounded up to whole batches, or one pass over the training split when not set.  The
images come from an endless stream of shuffled passes over the training split; pass ``q``
is ``permutation_q`` drawn from a generator seeded by ``(seed, q)``, and batch ``b`` of
epoch ``e`` is augmented with a generator seeded by ``(seed, e, b)``.  So which images a
batch holds, and how they are flipped, zoomed and lit, depends on the seed and the batch's
place only: a run stopped after any batch and resumed gives the very same batches.  The
network's own randomness (dropout) comes from generators whose states are saved.

The run directory (``--out``)::

    config.json         everything that makes the run: flags, model, data, versions, and
                        the command that repeats it
    log.jsonl           one JSON object per epoch: loss, IoU, learning rate, images/s, time
                        (``loss`` is what was trained on, with ``--lovasz`` the sum of both
                        losses; ``val_loss`` is always the cross-entropy)
    best.npz            the model with the best validation IoU so far (weights + mean/std)
    last.npz            the latest state, to resume from (also written on Ctrl-C)
    pictures/epoch_NNNN.png   the same validation images every epoch: image | truth | prediction
    curves.png          loss and IoU against epoch
    test.json           at the end: IoU of best.npz on the test split(s), with each image's
                        intersection and union and the IoU's bootstrap range

Ctrl-C finishes the current batch, writes ``last.npz`` and stops (exit code 130); a second
Ctrl-C stops at once.  ``--resume RUN`` goes on from ``last.npz`` and ends where an
uninterrupted run with the same seed would have ended, bit for bit on the same machine and
thread count.  A loss that is not finite (``nan``/``inf``) stops the run with a message
naming the epoch and batch; ``last.npz`` then still holds the last good state.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from . import __version__
from .checkpoint import (CheckpointError, generator_states, load_model, make_meta, read,
                         save_model, save_training, set_generator_states)
from .cli import HelpFormatter, UserError, data_dir, run_main, set_threads
from .data.augment import AugmentConfig, augment as augment_pair
from .data.batches import normalize
from .data.cache import load_split
from .train_ensemble import MANIFEST as ENSEMBLE_MANIFEST, resume_ensemble, train_ensemble
from .data.coco import FILTER_PRESETS, FilterConfig, data_source
from .data.errors import DataError
from .data.images import MAX_SIZE
from .evaluate import evaluate_dataset
from .infer import NonFiniteOutput, predict_labels
from .io import FolderBusy, atomic_write_bytes, folder_lock, writable_path
from .layers.batchnorm import recompute_running_stats
from .losses import lovasz_softmax, softmax_cross_entropy
from .metrics import bootstrap_range, confusion_matrix, iou_per_class
from .optim import ExponentialLR, RMSprop
from .tiramisu import PRESETS as MODEL_PRESETS, Tiramisu

PROG = "tinyseg.train"

# Seeds of the independent random streams (numpy SeedSequence entropy: [seed, tag, ...]).
_ORDER, _AUGMENT, _MODEL = 1, 2, 3


# ---------------------------------------------------------------------------------------
# Configuration and presets
# ---------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that decides what a run computes (not where it writes or how fast)."""

    preset: str = "small"
    model: str = "tiramisu_tiny"           # a name in tinyseg.tiramisu.PRESETS
    model_overrides: Dict[str, object] = field(default_factory=dict)
    size: int = 64                          # image side S in pixels
    batch_size: int = 8
    epochs: int = 14
    epoch_images: Optional[int] = 500       # images per epoch; None: one pass over train
    lr: float = 2e-3                        # RMSprop learning rate η_0
    lr_decay: float = 0.85                  # γ: epoch e (from 1) at η_0 γ^(e−1)
    weight_decay: float = 1e-4              # λ (L2, added to the gradient)
    person_weight: float = 1.0              # w: the loss weighs person pixels w, background 1
    lovasz: float = 0.0                     # β: add β × the Lovász-Softmax loss of the person
                                            # class (a surrogate of 1 − IoU) to the loss
    rms_alpha: float = 0.99                 # α: v ← α v + (1 − α) g²
    rms_eps: float = 1e-8                   # ε in g / (√v + ε)
    dropout: Optional[float] = None         # None: the model preset's (0.2)
    augment: bool = True
    init: Optional[str] = None              # start from this checkpoint's weights (fine-tune)
    recompute_bn: int = 0                   # before validating, batch-norm statistics from
                                            # this many training images (0: running averages)
    seed: int = 0
    data: Optional[str] = None              # data root; None: $TINYSEG_DATA
    filter: str = "wide"                    # a name in tinyseg.data.coco.FILTER_PRESETS
    train_limit: Optional[int] = None       # use only the first N training images
    val_limit: Optional[int] = None         # validate on the first N validation images
    pictures: int = 6                       # validation images drawn every epoch
    members: int = 1                        # > 1: an ensemble of runs with seeds seed … seed+K−1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown training setting '{unknown[0]}' in the run's config")
        return cls(**d)

    def filters(self) -> FilterConfig:
        return FILTER_PRESETS[self.filter]

    def steps_per_epoch(self, n_train: int) -> int:
        images = self.epoch_images or n_train
        return max(1, math.ceil(images / self.batch_size))

    def check(self) -> None:
        """Raise ``UserError`` for values that cannot work."""
        if self.members < 1:
            raise UserError(f"--members must be at least 1, got {self.members}")
        if self.model not in MODEL_PRESETS:
            raise UserError(f"unknown model '{self.model}' (choose from "
                            f"{', '.join(MODEL_PRESETS)})")
        if self.filter not in FILTER_PRESETS:
            raise UserError(f"unknown filter '{self.filter}' (choose from "
                            f"{', '.join(FILTER_PRESETS)})")
        positive = {"size": self.size, "batch_size": self.batch_size, "epochs": self.epochs}
        for k, v in positive.items():
            if v < 1:
                raise UserError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
        if self.size > MAX_SIZE:
            raise UserError(f"--size must be at most {MAX_SIZE}, got {self.size}")
        if self.batch_size < 2:
            raise UserError("--batch-size must be at least 2 (batch normalisation needs more "
                            "than one value per channel)")
        if self.epoch_images is not None and self.epoch_images < 1:
            raise UserError(f"--epoch-images must be at least 1, got {self.epoch_images}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise UserError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UserError(f"--weight-decay must be a finite number >= 0, got "
                            f"{self.weight_decay}")
        if not (self.person_weight > 0 and math.isfinite(self.person_weight)):
            raise UserError(f"--person-weight must be a finite number > 0, got "
                            f"{self.person_weight}")
        if not (self.lovasz >= 0 and math.isfinite(self.lovasz)):
            raise UserError(f"--lovasz must be a finite number >= 0, got {self.lovasz}")
        if not 0 <= self.rms_alpha < 1:
            raise UserError(f"--rms-alpha must be in [0, 1), got {self.rms_alpha}")
        if not (self.rms_eps > 0 and math.isfinite(self.rms_eps)):
            raise UserError(f"--rms-eps must be a finite number > 0, got {self.rms_eps}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if "in_channels" in self.model_overrides or "num_classes" in self.model_overrides:
            raise UserError("--model-overrides cannot change in_channels or num_classes: the "
                            "data are RGB photos and the classes person / background")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        for k in ("train_limit", "val_limit"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise UserError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
        if self.recompute_bn < 0:
            raise UserError(f"--recompute-bn must be >= 0, got {self.recompute_bn}")
        if self.pictures < 0:
            raise UserError(f"--pictures must be >= 0, got {self.pictures}")


#: Training presets: a model preset and the settings that go with it.
#:
#: ``small``  the first run of a newcomer, sized for 10 minutes on 2 cores including numba
#:            compilation: the 148 k-parameter ``tiramisu_tiny`` at 64×64 (0.9 GFLOP per
#:            training image), 16 epochs of 500 images (~8,000 images) from the seed's
#:            *default* filter (1-2 people covering 20-70 %), RMSprop at 1e-3 × 0.95^(e−1), no
#:            dropout (a run this short under-fits; augmentation regularises).  The *wide*
#:            filter has 3x the images, but most show small people: trained on it, the same
#:            12-epoch run scored 0.46 instead of 0.60 on the default test split.  Batch
#:            norms are validated with statistics recomputed from the (170) training
#:            images: the running averages of the last batches made validation IoU jump
#:            by up to 0.19 between epochs (lesson 11).  Three such networks (seeds S … S+2,
#:            all three at once on one thread each: 8:15 here), their probabilities
#:            averaged: one network's validation IoU depends on its seed (0.508-0.547
#:            over five seeds), and averages of three or four validated 0.03 above their
#:            members' mean (tinyseg/ensemble.py; four took 9:50 here).  The loss adds 3 ×
#:            the Lovász-Softmax loss of the person class (``--lovasz``): with β = 0, 1, 3
#:            and 10 the ensemble validated 0.555, 0.562, 0.576 and 0.565, and 0.569 in a
#:            second β = 3 run; with seeds 3-5 and 6-8, 0.527 and 0.513 without it,
#:            0.553 and 0.540 with β = 3 (README, "Training results": the test split
#:            agreed on seeds 3-8, not on 0-2);
#:  ``medium`` a longer run (about an hour here on 2 threads): ``tiramisu_small`` (854 k
#:            parameters) at 96×96 on the wide filter, no dropout (with the model's 0.2 the
#:            same run validated 0.485 instead of 0.509); fine-tuned on the default filter
#:            with ``--init``, it became the bundled model (README, "Training results");
#:  ``fcdensenet56``  the paper's FC-DenseNet56 at 128×128 (a day or more);
#:  ``paper``  FC-DenseNet103 at 224×224 with the paper's schedule (for reference: weeks);
#:  ``tiny``   tests and smoke runs (seconds, learns little).
PRESETS: Dict[str, dict] = {
    "tiny": dict(model="tiramisu_tiny", size=32, batch_size=4, epochs=2, epoch_images=16,
                 lr=1e-3, lr_decay=0.995, filter="default", pictures=3, recompute_bn=16),
    "small": dict(model="tiramisu_tiny", size=64, batch_size=8, epochs=16, epoch_images=500,
                  lr=1e-3, lr_decay=0.95, dropout=0.0, filter="default",
                  recompute_bn=200, members=3, lovasz=3.0),
    "medium": dict(model="tiramisu_small", size=96, batch_size=8, epochs=40,
                   epoch_images=500, lr=1e-3, lr_decay=0.95, dropout=0.0, filter="wide",
                   recompute_bn=200),
    "fcdensenet56": dict(model="fc_densenet56", size=128, batch_size=4, epochs=100,
                         epoch_images=500, lr=1e-3, lr_decay=0.98, filter="wide",
                         recompute_bn=200),
    "paper": dict(model="fc_densenet103", size=224, batch_size=4, epochs=300,
                  epoch_images=500, lr=1e-3, lr_decay=0.995, filter="default"),
}


def preset_config(name: str, **overrides) -> TrainConfig:
    """The ``TrainConfig`` of preset ``name``, with ``overrides`` (``None`` values ignored)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(preset=name, **values)


def loss_names(cfg: TrainConfig):
    """``(curve label, title words)`` of the training loss: the validation loss is always the
    plain cross-entropy, so the curves say when the training loss is something else; and
    the training figures count the letterbox padding, an easy background the validation
    figures leave out (the bundled model's validation loss: 0.31 with it, 0.43 without)."""
    if cfg.lovasz:
        return (f"train loss (CE + {cfg.lovasz:g} x Lovasz, padding counted)",
                f"cross-entropy + {cfg.lovasz:g} x Lovasz")
    return "train loss (cross-entropy, padding counted)", "cross-entropy"


def command_line(cfg: TrainConfig, out: Optional[str] = None,
                 threads: Optional[int] = None) -> str:
    """A ``python -m tinyseg.train`` command that repeats ``cfg`` exactly (every flag given)."""
    args = ["python", "-m", "tinyseg.train", "--preset", cfg.preset,
            "--model", cfg.model, "--size", str(cfg.size), "--batch-size", str(cfg.batch_size),
            "--epochs", str(cfg.epochs), "--epoch-images", str(cfg.epoch_images or 0),
            "--lr", repr(cfg.lr), "--lr-decay", repr(cfg.lr_decay),
            "--weight-decay", repr(cfg.weight_decay), "--rms-alpha", repr(cfg.rms_alpha),
            "--rms-eps", repr(cfg.rms_eps), "--filter", cfg.filter,
            "--augment" if cfg.augment else "--no-augment",
            "--recompute-bn", str(cfg.recompute_bn), "--seed", str(cfg.seed),
            "--pictures", str(cfg.pictures)]
    if cfg.init:
        args += ["--init", cfg.init]
    if cfg.dropout is not None:
        args += ["--dropout", repr(cfg.dropout)]
    if cfg.person_weight != 1.0:
        args += ["--person-weight", repr(cfg.person_weight)]
    if cfg.lovasz != 0.0 or PRESETS.get(cfg.preset, {}).get("lovasz", 0.0) != 0.0:
        args += ["--lovasz", repr(cfg.lovasz)]       # also 0 when the preset's is not
    if cfg.train_limit is not None:
        args += ["--train-limit", str(cfg.train_limit)]
    if cfg.val_limit is not None:
        args += ["--val-limit", str(cfg.val_limit)]
    if cfg.model_overrides:
        args += ["--model-overrides", json.dumps(cfg.model_overrides, sort_keys=True)]
    args += ["--members", str(cfg.members)]     # always: a preset's default may differ
    if cfg.data:
        args += ["--data", cfg.data]
    if threads is not None:
        args += ["--threads", str(threads)]
    if out:
        args += ["--out", out]
    return " ".join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
def load_data(cfg: TrainConfig, cache_dir=None, progress: bool = True):
    """``(train, val)`` datasets of ``cfg`` (cached by ``tinyseg.data``), limits applied."""
    train = load_split(cfg.data, "train", cfg.size, cfg.filters(), cache_dir,
                       progress=progress)
    val = load_split(cfg.data, "val", cfg.size, cfg.filters(), cache_dir, progress=progress)
    if len(val) == 0:
        raise DataError(f"the validation split of {train.root} is empty with the "
                        f"'{cfg.filter}' filter: it needs more images")
    train, val = _limit(train, cfg.train_limit), _limit(val, cfg.val_limit)
    for ds in (train, val):     # all-background masks: nothing to learn, no IoU to measure
        if len(ds) and not np.any(ds.masks == 1):
            raise DataError(f"the {ds.split} split of {ds.root} ('{cfg.filter}' filter, "
                            f"{len(ds)} images) has no person pixel in its masks: do the "
                            f"person outlines lie inside their pictures?")
    return train, val


def _limit(ds, n: Optional[int]):
    if n is None or n >= len(ds):
        return ds
    ds.images, ds.masks, ds.ids = ds.images[:n], ds.masks[:n], ds.ids[:n]
    ds.boxes = ds.boxes[:n]
    return ds


def stream_indices(seed: int, n: int, start: int, count: int) -> np.ndarray:
    """Positions ``start … start+count−1`` of the endless stream of shuffled passes.

    Pass ``q`` (positions ``qn … qn+n−1``) is a permutation of ``0 … n−1`` drawn from a
    generator seeded by ``(seed, q)``: every image once per pass, a new order each pass,
    and any stretch of the stream can be produced without the ones before it.
    """
    out = []
    pos, end = start, start + count
    while pos < end:
        q, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, _ORDER, q]).permutation(n)
        take = min(n - offset, end - pos)
        out.append(perm[offset:offset + take])
        pos += take
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def make_batch(dataset, idx: np.ndarray, mean, std, augment: bool,
               rng: Optional[np.random.Generator]):
    """``(x float32 (B, 3, S, S), y int64 (B, S, S))`` of images ``idx``, augmented if asked."""
    images = dataset.images[idx]
    masks = dataset.masks[idx]
    if augment:
        images, masks = images.copy(), masks.copy()
        for k in range(len(idx)):
            images[k], masks[k] = augment_pair(images[k], masks[k], rng, AugmentConfig())
    return normalize(images, mean, std), masks.astype(np.int64)


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------
class Divergence(RuntimeError):
    """The loss (or a weight) stopped being a finite number."""


class Stopped(Exception):
    """Raised inside the loop when a stop was requested (Ctrl-C, time budget)."""


def build_model(cfg: TrainConfig) -> Tiramisu:
    overrides = dict(cfg.model_overrides)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    rng = np.random.default_rng([cfg.seed, _MODEL])
    try:
        model = MODEL_PRESETS[cfg.model](num_classes=2, rng=rng, **overrides)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build model '{cfg.model}' with {overrides}: {e}") from None
    reach = 2 ** model.config["pools"]
    if reach > cfg.size:
        raise UserError(f"--size {cfg.size} is smaller than 2^pools = {reach} ('{cfg.model}' "
                        f"pools {model.config['pools']} times): every image would be padded to "
                        f"{reach}x{reach}; use --size {reach} or more, or fewer pools")
    return model


def start_from(model: Tiramisu, path: str) -> None:
    """Load the weights of checkpoint ``path`` into ``model`` (``--init``: fine-tuning), with
    :meth:`Tiramisu.load`'s checks: the network's shape must match (``ARCH_KEYS``); dropout
    and the implementation stay this run's.  Optimiser, schedule and normalisation start
    afresh."""
    from .ensemble import is_ensemble_file
    if is_ensemble_file(path):
        member = Path(path).parent / "member0" / "best.npz"
        raise UserError(f"--init: {path} holds an ensemble of several networks; give one of "
                        + (f"them, e.g. {member}" if member.is_file() else
                           "the checkpoints it was joined from"))
    try:
        model.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"--init: {e}; give a best.npz of a run with the same --model and "
                        "--model-overrides") from None


@dataclass
class EpochSums:
    """Running sums of the epoch in progress (saved in last.npz when stopped mid-epoch)."""

    loss: float = 0.0
    images: int = 0
    cm: List[List[int]] = field(default_factory=lambda: [[0, 0], [0, 0]])
    train_time: float = 0.0


class Trainer:
    """The training loop, without the command line (tests and lessons drive it directly).

    ``Trainer(cfg, train, val, run_dir).run()`` trains to ``cfg.epochs`` and returns a
    summary dict; ``Trainer.resume(run_dir)`` rebuilds a trainer from ``last.npz``.
    ``report`` receives progress lines (default: stderr); ``on_batch(trainer)`` is called
    after every batch (tests use it to stop a run at a given place).
    """

    def __init__(self, cfg: TrainConfig, train, val, run_dir, *,
                 report: Optional[Callable[[str, bool], None]] = None,
                 on_batch: Optional[Callable[["Trainer"], None]] = None,
                 max_seconds: Optional[float] = None, threads: Optional[int] = None,
                 init_weights: bool = True) -> None:
        cfg.check()
        if cfg.members != 1:
            raise ValueError("Trainer trains one network; an ensemble (members > 1) is trained "
                             "by tinyseg.train_ensemble, one Trainer per member")
        self.cfg = cfg
        self.train_data, self.val_data = train, val
        self.run_dir = Path(run_dir)
        self.mean = np.asarray(train.mean, np.float32)
        self.std = np.asarray(train.std, np.float32)
        self.model = build_model(cfg)
        if cfg.init and init_weights:       # not when resuming: last.npz has the weights
            start_from(self.model, cfg.init)
        self.model.train()
        self.optimizer = RMSprop(list(self.model.named_parameters()), lr=cfg.lr,
                                 alpha=cfg.rms_alpha, eps=cfg.rms_eps,
                                 weight_decay=cfg.weight_decay)
        self.scheduler = ExponentialLR(self.optimizer, gamma=cfg.lr_decay)
        self.steps = cfg.steps_per_epoch(len(train))
        self.epoch = 0              # epochs completed
        self.batch = 0              # batches completed in the current epoch
        self.sums = EpochSums()
        self.best_iou = -math.inf
        self.best_epoch = 0
        self.elapsed = 0.0          # wall seconds over all sessions of this run
        self.history: List[dict] = []
        self.report = report or _stderr_report
        self.on_batch = on_batch
        self.max_seconds = max_seconds
        self.threads = threads
        self._stop_reason: Optional[str] = None
        self._session_start = time.perf_counter()
        self._session_images = 0
        self._session_train_time = 0.0
        self._val_time = 0.0
        n_pic = min(cfg.pictures, len(val))
        self.picture_idx = np.unique(np.linspace(0, len(val) - 1, n_pic).round().astype(int)) \
            if n_pic else np.zeros(0, dtype=int)

    # -- paths ----------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.npz"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.npz"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    # -- stopping -------------------------------------------------------------------------
    def request_stop(self, reason: str = "interrupted") -> None:
        """Stop after the current batch, writing last.npz (what Ctrl-C does)."""
        self._stop_reason = reason

    def _check_stop(self) -> None:
        if self._stop_reason is None and self.max_seconds is not None \
                and self.elapsed + self._session_seconds() >= self.max_seconds:
            self._stop_reason = (f"time budget reached: the run has taken "
                                 f"{(self.elapsed + self._session_seconds()) / 60:.1f} of its "
                                 f"--max-minutes {self.max_seconds / 60:g}, earlier sessions "
                                 f"counted; raise it to go on")
        if self._stop_reason is not None:
            raise Stopped(self._stop_reason)

    def _session_seconds(self) -> float:
        return time.perf_counter() - self._session_start

    # -- saving ---------------------------------------------------------------------------
    def meta(self, val_iou: Optional[float] = None) -> dict:
        return make_meta(self.cfg.size, self.mean, self.std, train=self.cfg.to_dict(),
                         epoch=self.epoch, val_iou=val_iou, tinyseg_version=__version__)

    def state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "sums": asdict(self.sums),
                "best_iou": None if self.best_iou == -math.inf else self.best_iou,
                "best_epoch": self.best_epoch, "elapsed": self.elapsed + self._session_seconds(),
                "scheduler": self.scheduler.state_dict(),
                "generators": generator_states(self.model)}

    def save_last(self) -> Path:
        return save_training(self.last_path, self.model, self.meta(), self.state(),
                             self.optimizer)

    def load_state(self, path: Path) -> None:
        """Restore model, optimiser, schedule, generators and counters from a training file."""
        config, weights, meta, state, optim = read(path)
        if state is None:
            raise UserError(f"{path}: not a training checkpoint (no training state): "
                            "resume needs last.npz")
        if config != self.model.config:
            raise UserError(f"{path}: the model in the checkpoint differs from the run's "
                            "configuration")
        self.model.load_state_dict(weights)
        opt = dict(state["optimizer"])
        opt.update({f"square_avg.{k[len('square_avg.'):]}": v for k, v in optim.items()})
        self.optimizer.load_state_dict(opt)
        self.scheduler.load_state_dict(state["scheduler"])
        set_generator_states(self.model, state["generators"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.sums = EpochSums(**state["sums"])
        self.best_iou = -math.inf if state["best_iou"] is None else float(state["best_iou"])
        self.best_epoch = int(state["best_epoch"])
        self.elapsed = float(state["elapsed"])
        if min(self.epoch, self.batch, self.best_epoch) < 0 or self.best_epoch > self.epoch \
                or not (math.isfinite(self.elapsed) and self.elapsed >= 0):
            raise ValueError(f"damaged training state: epoch {self.epoch}, batch {self.batch}, "
                             f"best epoch {self.best_epoch}, elapsed {self.elapsed}")
        mean, std = np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)
        if not (np.array_equal(mean, self.mean) and np.array_equal(std, self.std)):
            raise UserError(f"{path}: the training data changed since the run started (its "
                            "mean/std differ); resume needs the same data")

    # -- one batch, one epoch ---------------------------------------------------------------
    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """Forward, loss, backward, RMSprop step; returns the loss (raises on nan/inf)."""
        self.optimizer.zero_grad()
        logits = self.model.forward(x)
        w = self.cfg.person_weight   # 1: no weights passed, the plain loss bit for bit
        loss, dlogits = softmax_cross_entropy(logits, y, weight=None if w == 1.0 else [1.0, w])
        if self.cfg.lovasz:          # 0: the cross-entropy alone
            iou_loss, d_iou = lovasz_softmax(logits, y, classes=[1])
            loss += self.cfg.lovasz * iou_loss
            dlogits += self.cfg.lovasz * d_iou
        if not math.isfinite(loss):
            raise Divergence(self._divergence_message(loss))
        self.model.backward(dlogits)
        self.optimizer.step()
        pred = logits.argmax(axis=1)
        cm = np.asarray(self.sums.cm) + confusion_matrix(pred, y, 2)
        self.sums.cm = cm.tolist()
        return loss

    def _divergence_message(self, loss) -> str:
        where = f"epoch {self.epoch + 1}, batch {self.batch + 1} of {self.steps}"
        if self.last_path.is_file():
            keep = f"{self.last_path} still holds the last good state"
        else:
            keep = "no checkpoint had been written yet"
        return (f"training diverged: the loss is {loss} at {where} (learning rate "
                f"{self.optimizer.lr:g}); {keep}. Try a smaller --lr.")

    def _train_epoch(self) -> None:
        cfg = self.cfg
        B = cfg.batch_size
        start = self.epoch * self.steps * B
        order = stream_indices(cfg.seed, len(self.train_data), start, self.steps * B)
        self.model.train()
        while self.batch < self.steps:
            self._check_stop()
            b = self.batch
            idx = order[b * B:(b + 1) * B]
            rng = np.random.default_rng([cfg.seed, _AUGMENT, self.epoch, b])
            x, y = make_batch(self.train_data, idx, self.mean, self.std, cfg.augment, rng)
            t0 = time.perf_counter()
            # a diverging step overflows somewhere first: the NaN check in train_step says
            # so in one line, naming epoch and batch, instead of NumPy's warnings before it
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                loss = self.train_step(x, y)
            dt = time.perf_counter() - t0
            self.sums.loss += loss * len(idx)
            self.sums.images += len(idx)
            self.sums.train_time += dt
            self._session_images += len(idx)
            self._session_train_time += dt
            self.batch += 1
            self._progress(loss)
            if self.on_batch is not None:
                self.on_batch(self)

    def recompute_bn(self) -> None:
        """Batch-norm running statistics from the first ``cfg.recompute_bn`` training images
        (un-augmented, in batches of ``batch_size``), so that what is validated and saved
        depends on the weights, not on the last few random batches.  A last batch of a
        single image is left out (at the coarsest level it can have one value per channel,
        too few for batch statistics); with no batch left the running averages stay."""
        if min(self.cfg.recompute_bn, len(self.train_data)) >= 2:   # at least one batch
            recompute_running_stats(self.model, statistics_batches(
                self.train_data.images, self.cfg.batch_size, self.mean, self.std,
                self.cfg.recompute_bn))

    def validate(self):
        """Loss and IoUs of the current model on the validation split (eval mode); with
        ``cfg.recompute_bn`` the batch-norm statistics are recomputed first (timed with it)."""
        t0 = time.perf_counter()
        if self.cfg.recompute_bn:
            self.recompute_bn()
        v = self.val_data
        result = evaluate_dataset(self.model, v.images, v.masks, v.boxes, self.mean, self.std,
                                  batch_size=max(self.cfg.batch_size, 8))
        self._val_time = time.perf_counter() - t0
        return result

    def _finish_epoch(self, epoch_start: float) -> dict:
        with np.errstate(over="ignore", invalid="ignore"):    # checked: val.finite
            val = self.validate()
        lr_used = self.optimizer.lr
        self.scheduler.step()
        kept = (f"{self.last_path} still holds the last good state" if self.last_path.is_file()
                else "no checkpoint had been written yet")
        for name, p, _ in self.model.named_parameters():
            if not np.all(np.isfinite(p)):
                raise Divergence(f"training diverged: parameter '{name}' is not finite after "
                                 f"epoch {self.epoch + 1} (learning rate {lr_used:g}); {kept}")
        if not val.finite:      # finite weights so large that the output overflows
            raise Divergence(f"training diverged: the network's output on the validation "
                             f"split is NaN or infinite after epoch {self.epoch + 1} (learning "
                             f"rate {lr_used:g}); {kept}")
        s = self.sums
        train_iou = float(iou_per_class(np.asarray(s.cm))[1])
        self.epoch += 1
        self.batch = 0
        improved = math.isfinite(val.person_iou) and val.person_iou > self.best_iou
        if improved:
            self.best_iou, self.best_epoch = val.person_iou, self.epoch
        elapsed = self.elapsed + self._session_seconds()
        record = {
            "epoch": self.epoch, "images": s.images, "loss": s.loss / max(s.images, 1),
            "train_iou": train_iou, "val_loss": val.loss, "val_iou": val.person_iou,
            "val_mean_iou": val.mean_iou, "val_pixel_accuracy": val.pixel_accuracy,
            "lr": lr_used, "images_per_s": s.images / max(s.train_time, 1e-9),
            "train_time": s.train_time, "val_time": self._val_time,
            "epoch_time": time.perf_counter() - epoch_start, "elapsed": elapsed,
            "best": improved, "best_iou": self.best_iou, "best_epoch": self.best_epoch,
        }
        self.sums = EpochSums()
        self.history.append(record)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if improved:
            save_model(self.best_path, self.model, self.meta(val.person_iou))
        self.save_last()
        self._draw()
        return record

    # -- the loop -------------------------------------------------------------------------
    def run(self, handle_sigint: bool = True) -> dict:
        """Train until ``cfg.epochs``; returns ``{"status": "done" | "stopped", ...}``.

        ``Divergence`` propagates (``last.npz`` is left as it was).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.refuse_read_only_files()
        restore = None
        if handle_sigint and _main_thread():
            restore = signal.signal(signal.SIGINT, self._on_sigint)
        self._session_start = time.perf_counter()
        try:
            while self.epoch < self.cfg.epochs:
                epoch_start = time.perf_counter() - self.sums.train_time
                try:
                    self._train_epoch()
                except Stopped as e:
                    self.save_last()
                    return self._summary("stopped", str(e))
                record = self._finish_epoch(epoch_start)
                self.report(_epoch_line(record, self.cfg.epochs), True)
                if self._stop_reason is not None and self.epoch < self.cfg.epochs:
                    return self._summary("stopped", self._stop_reason)
            return self._summary("done", "")
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)

    def refuse_read_only_files(self) -> None:
        """``PermissionError`` naming the first run file that will be replaced and that its
        owner made read-only: before any work, not after an epoch of it (``tinyseg/io.py``)."""
        for name in ("last.npz", "best.npz", "config.json", "curves.png", "test.json"):
            if (self.run_dir / name).is_file():
                writable_path(self.run_dir / name)

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_reason is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_reason = "interrupted"
        self.report("\nCtrl-C: finishing this batch and saving last.npz (Ctrl-C again to "
                    "quit at once)", True)

    def _summary(self, status: str, reason: str) -> dict:
        return {"status": status, "reason": reason, "epoch": self.epoch, "batch": self.batch,
                "best_iou": None if self.best_iou == -math.inf else self.best_iou,
                "best_epoch": self.best_epoch, "run_dir": str(self.run_dir),
                "elapsed": self.elapsed + self._session_seconds()}

    # -- output ---------------------------------------------------------------------------
    def _progress(self, loss: float) -> None:
        rate = self._session_images / max(self._session_train_time, 1e-9)
        remaining_batches = (self.cfg.epochs - self.epoch) * self.steps - self.batch
        remaining_epochs = self.cfg.epochs - self.epoch
        eta = remaining_batches * self.cfg.batch_size / max(rate, 1e-9) \
            + remaining_epochs * self._val_time
        # until this session's first validation is timed, the ETA counts training only
        later = " + validation" if remaining_epochs and not self._val_time else ""
        self.report(f"epoch {self.epoch + 1}/{self.cfg.epochs}  batch {self.batch}/{self.steps}"
                    f"  loss {loss:.4f}  {rate:.1f} img/s  ETA {_clock(eta)}{later}", False)

    def _draw(self) -> None:
        """The epoch's picture of fixed validation images and the curves."""
        from .plot import line_plot
        from .viz import grid, overlay, save_png

        if len(self.picture_idx):
            v = self.val_data
            idx = self.picture_idx
            x = normalize(v.images[idx], self.mean, self.std)
            pred = predict_labels(self.model, x, batch_size=len(idx))
            tiles, labels = [], []
            zoom = max(1, 192 // self.cfg.size)
            for k, i in enumerate(idx):
                img = v.images[i]
                p = pred[k] * eval_inside(v.boxes[i], img.shape[0])
                iou = _iou(p, v.masks[i])
                for t, lab in ((img, f"id {int(v.ids[i])}"),
                               (overlay(img, v.masks[i]), "truth"),
                               (overlay(img, p), f"prediction, IoU {iou:.2f}")):
                    tiles.append(np.kron(t, np.ones((zoom, zoom, 1), dtype=np.uint8)))
                    labels.append(lab)
            pic = grid(tiles, ncols=3, labels=labels)
            save_png(self.run_dir / "pictures" / f"epoch_{self.epoch:04d}.png", pic)
        hist = self.history
        if hist:
            ep = [h["epoch"] for h in hist]
            train_loss, title = loss_names(self.cfg)
            line_plot({train_loss: (ep, [h["loss"] for h in hist]),
                       "val loss (cross-entropy)": (ep, [h["val_loss"] for h in hist]),
                       "train IoU (padding counted)": (ep, [h["train_iou"] for h in hist]),
                       "val IoU": (ep, [h["val_iou"] for h in hist])},
                      self.run_dir / "curves.png", xlabel="epoch", ylabel="loss / IoU",
                      title=f"{self.cfg.preset}: {title} and person IoU")

    # -- resuming -------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir, data: Optional[str] = None, epochs: Optional[int] = None,
               cache_dir=None, progress: bool = True, **kwargs) -> "Trainer":
        """A trainer that goes on from ``run_dir/last.npz`` (config from ``config.json``)."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"{run_dir}: not a run directory (no config.json)")
        if not (run_dir / "last.npz").is_file():
            raise UserError(f"{run_dir}: nothing to resume (no last.npz: the run stopped "
                            "before its first checkpoint); delete the folder and start the run "
                            "again, or start it with another --out")
        try:
            saved = json.loads(cfg_path.read_text())
            cfg = TrainConfig.from_dict(saved["train"])
            cfg.check()
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
            raise UserError(f"{cfg_path}: damaged, cannot resume from it ({type(e).__name__}: "
                            f"{e})") from None
        if data is not None:
            cfg.data = str(data)
        if epochs is not None:
            cfg.epochs = int(epochs)
        train, val = load_data(cfg, cache_dir, progress)
        trainer = cls(cfg, train, val, run_dir, init_weights=False, **kwargs)
        try:
            trainer.load_state(run_dir / "last.npz")
        except (CheckpointError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{run_dir / 'last.npz'}: cannot resume from it ({e})") from None
        trainer.refuse_read_only_files()          # before config.json is rewritten below
        if epochs is not None and cfg.epochs < trainer.epoch:   # config.json would then lie
            raise UserError(f"{run_dir} has already done {trainer.epoch} epochs: --epochs "
                            f"{cfg.epochs} cannot shorten it (give at least {trainer.epoch})")
        trainer.history = _read_log(trainer.log_path, trainer.epoch)
        # config.json says what the finished run will be: a longer run (more --epochs) is
        # exactly the run that was started with that many (the schedule is per epoch)
        saved["train"] = cfg.to_dict()
        saved["command"] = command_line(cfg, str(run_dir), trainer.threads)
        saved.setdefault("resumed", []).append(
            {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epoch": trainer.epoch,
             "batch": trainer.batch, "argv": sys.argv})
        atomic_write_bytes(cfg_path, (json.dumps(saved, indent=2) + "\n").encode())
        return trainer

    def write_config(self, extra: Optional[dict] = None) -> Path:
        """``config.json``: the settings, the model, the data, the versions, the command."""
        t, v = self.train_data, self.val_data
        doc = {
            "tinyseg_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(self.cfg, str(self.run_dir), self.threads),
            "argv": sys.argv,
            "train": self.cfg.to_dict(),
            "model": self.model.config,
            "parameters": self.model.num_parameters(),
            "steps_per_epoch": self.steps,
            "data": {"root": str(t.root), "filter": self.cfg.filters().to_dict(),
                     "filter_name": self.cfg.filter, "size": self.cfg.size,
                     "train_images": len(t), "val_images": len(v),
                     "mean": self.mean.tolist(), "std": self.std.tolist(),
                     "resize_policy": t.resize_policy, "filter_steps": t.steps,
                     "train_cache": str(t.cache_path), "val_cache": str(v.cache_path)},
            "runtime": {"threads": self.threads, "python": platform.python_version(),
                        "numpy": np.__version__, "numba": _numba_version(),
                        "platform": platform.platform(), "cpus": os.cpu_count()},
        }
        if extra:
            doc.update(extra)
        path = self.run_dir / "config.json"
        atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
        return path


def statistics_batches(images: np.ndarray, batch_size: int, mean, std,
                       limit: Optional[int] = None) -> Iterator[np.ndarray]:
    """The batches ``recompute_bn`` averages batch-norm statistics over, one at a time: the
    first ``limit`` (default: all) letterboxed ``images``, un-augmented and normalised,
    ``batch_size`` at a time; a last batch of a single image is left out (too few values per
    channel at the coarsest level), so there is none at all when fewer than 2 images."""
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(0, n, batch_size):
        if min(i + batch_size, n) - i >= 2:
            yield normalize(images[i:min(i + batch_size, n)], mean, std)


def eval_inside(box, size: int) -> np.ndarray:
    """(S, S) uint8: 1 inside the picture's box, 0 on the letterbox padding."""
    top, left, h, w = (int(v) for v in box)
    m = np.zeros((size, size), dtype=np.uint8)
    m[top:top + h, left:left + w] = 1
    return m


def _iou(pred: np.ndarray, target: np.ndarray) -> float:
    p, t = pred != 0, target != 0
    union = np.sum(p | t)
    return float(np.sum(p & t) / union) if union else float("nan")


def _read_log(path: Path, upto_epoch: int) -> List[dict]:
    """The log's records up to ``upto_epoch``; later lines (written after the checkpoint
    the run resumes from) are dropped from the file too."""
    if not path.is_file():
        return []
    keep = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
                epoch = rec.get("epoch", 0)
            except (json.JSONDecodeError, AttributeError):
                raise UserError(f"{path}: line {number} is damaged ({line[:60]!r}); remove it "
                                f"to resume") from None
            if epoch <= upto_epoch:
                keep.append(rec)
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())
    return keep


def _numba_version() -> str:
    import numba
    return numba.__version__


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _epoch_line(r: dict, epochs: int) -> str:
    star = "  *best*" if r["best"] else ""
    return (f"epoch {r['epoch']}/{epochs}  loss {r['loss']:.4f}  train IoU {r['train_iou']:.3f}"
            f"  val loss {r['val_loss']:.4f}  val IoU {r['val_iou']:.3f}  lr {r['lr']:.2e}"
            f"  {r['images_per_s']:.1f} img/s  {r['epoch_time']:.0f}s"
            f"  (elapsed {_clock(r['elapsed'])}){star}")


class _StderrReporter:
    """Progress on stderr (rewritten in place on a terminal, else a line every 30 s); final
    lines (one per epoch, messages) on stdout."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = -1e9
        self.dirty = False

    def __call__(self, text: str, final: bool) -> None:
        now = time.perf_counter()
        if final:
            if self.tty and self.dirty:
                self.stream.write("\r\033[K")
            print(text, flush=True)
            self.dirty = False
            return
        if now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.dirty = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


_stderr_report = _StderrReporter()


# ---------------------------------------------------------------------------------------
# Test-split figures at the end of a run
# ---------------------------------------------------------------------------------------
def test_report(checkpoint: Path, cfg: TrainConfig, cache_dir=None,
                filters: Sequence[str] = ("default", "wide")) -> dict:
    """Person IoU etc. of ``checkpoint`` on the test split of each filter in ``filters``."""
    model, info = load_model(checkpoint)
    out = {}
    for name in filters:
        ds = load_split(cfg.data, "test", cfg.size, FILTER_PRESETS[name], cache_dir,
                        progress=False)
        if len(ds) == 0:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            ev = evaluate_dataset(model, ds.images, ds.masks, ds.boxes, info["mean"],
                                  info["std"])
        if not ev.finite:
            raise CheckpointError(f"{checkpoint}: {NonFiniteOutput()}")
        order = np.argsort(ds.ids, kind="stable")         # by image id, as evaluate
        inter, union = ev.intersection[order], ev.union[order]
        out[name] = {"images": len(ds), **ev.summary(),
                     # the counts that make the person IoU, and how far it moves on other
                     # draws of these images (as evaluate reports it; redone from this file
                     # with tinyseg.metrics.bootstrap_range)
                     "person_iou_bootstrap": bootstrap_range(inter, union),
                     "ids": [int(i) for i in np.asarray(ds.ids)[order]],
                     "intersection": inter.tolist(), "union": union.tolist()}
    return out


def write_test_report(run_dir: Path, checkpoint: Path, cfg: TrainConfig,
                      cache_dir=None) -> None:
    """``test_report`` into ``run_dir/test.json``, one line per filter on stdout (a missing
    test split is reported, not an error: the run itself is done)."""
    try:
        tests = test_report(checkpoint, cfg, cache_dir)
    except DataError as e:
        print(f"test split not evaluated: {e}", file=sys.stderr)
        return
    atomic_write_bytes(Path(run_dir) / "test.json", (json.dumps(tests, indent=2) + "\n").encode())
    for name, r in tests.items():
        print(f"test split, '{name}' filter ({r['images']} images): person IoU "
              f"{r['person_iou']:.4f}, mean IoU {r['mean_iou']:.4f}, pixel accuracy "
              f"{r['pixel_accuracy']:.4f}", flush=True)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
def _preset_values(key: str, none: str = "all") -> str:
    """``tiny 32, small 64, ...``: each preset's value of ``key`` (for --help)."""
    vals = []
    for name, p in PRESETS.items():
        v = p.get(key, getattr(TrainConfig, key, None))
        vals.append(f"{name} {v if v is not None else none}")
    return ", ".join(vals)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tinyseg.train",
        description="Train a Tiramisu person/background segmenter on COCO persons. Every "
                    "setting not given comes from --preset; the run directory gets the full "
                    "config, a JSON-lines log, best.npz, last.npz, a picture per epoch and "
                    "the curves.",
        epilog="Exit codes: 0 done, 1 error (bad data, diverged: message on stderr), 2 bad "
               "flags, 130 stopped by Ctrl-C or --max-minutes (last.npz written: continue "
               "with --resume RUN_DIR). Presets: "
               + "; ".join(f"{n}: {', '.join(f'{k}={v}' for k, v in p.items())}"
                           for n, p in PRESETS.items()),
        formatter_class=HelpFormatter)
    a = p.add_argument
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", default="small", choices=list(PRESETS),
                       help="starting point for every setting below")
    for name in PRESETS:
        which.add_argument(f"--{name}", dest="preset", action="store_const", const=name,
                           help=f"same as --preset {name}")
    a("--data", metavar="DIR", default=None, type=data_dir,
      help="COCO data root (annotations/*.json + images), or one COCO .json file with its "
           "images beside it (default: $TINYSEG_DATA)")
    a("--filter", choices=list(FILTER_PRESETS), default=None,
      help=f"which images to use: default = the original's (1-2 persons covering 20-70 %%), "
           f"wide = 1-2 persons covering 5-90 %%, all (default: the preset's: "
           f"{_preset_values('filter')})")
    a("--out", metavar="DIR", default=None,
      help="run directory, holding none of a run's files (default: "
           "runs/<preset>-<date>-<time>)")
    a("--resume", metavar="RUN_DIR", default=None,
      help="continue the run in RUN_DIR from its last.npz (its config is used; only --epochs "
           "(at least the epochs done), --data, --threads, --max-minutes, --cache, --no-test "
           "and --quiet may be given too, and any other flag only with its saved value; an "
           "ensemble run also takes --jobs, and refuses --epochs and --max-minutes)")
    a("--model", choices=list(MODEL_PRESETS), default=None,
      help=f"network preset (default: the preset's: {_preset_values('model')})")
    a("--model-overrides", metavar="JSON", default=None,
      help='Tiramisu arguments that replace the model preset\'s, e.g. \'{"growth_rate": 16}\'')
    a("--size", type=int, metavar="S", default=None,
      help=f"image side in pixels, at most {MAX_SIZE} (default: the preset's: "
           f"{_preset_values('size')})")
    a("--batch-size", type=int, metavar="N", default=None,
      help=f"images per step (default: the preset's: {_preset_values('batch_size')})")
    a("--epochs", type=int, metavar="N", default=None,
      help=f"number of epochs (default: the preset's: {_preset_values('epochs')})")
    a("--epoch-images", type=int, metavar="N", default=None,
      help="images per epoch, rounded up to whole batches; 0 = one pass over the training "
           f"split (default: the preset's: {_preset_values('epoch_images')})")
    a("--lr", type=float, default=None,
      help=f"initial RMSprop learning rate (default: the preset's: {_preset_values('lr')})")
    a("--lr-decay", type=float, metavar="GAMMA", default=None,
      help="learning-rate factor per epoch: epoch e (from 1) trains at LR * GAMMA^(e-1) "
           "(the paper: 0.995) "
           f"(default: the preset's: {_preset_values('lr_decay')})")
    a("--weight-decay", type=float, metavar="L", default=None,
      help="L2 weight decay added to the gradient (the paper: 1e-4) (default: 1e-4)")
    a("--person-weight", type=float, metavar="W", default=None,
      help="weight of the person pixels in the training loss, background 1 (PyTorch's "
           "CrossEntropyLoss weight=[1, W]); the validation loss and IoU are unweighted "
           "(default: 1)")
    a("--lovasz", type=float, metavar="BETA", default=None,
      help="add BETA times the Lovász-Softmax loss of the person class, a surrogate of "
           "1 - IoU (Berman et al. 2018), to the training loss; the validation loss stays the "
           "cross-entropy; 0: the cross-entropy alone "
           f"(default: the preset's: {_preset_values('lovasz')})")
    a("--rms-alpha", type=float, metavar="A", default=None,
      help="RMSprop smoothing constant of the squared-gradient average (default: 0.99)")
    a("--rms-eps", type=float, metavar="E", default=None,
      help="RMSprop epsilon in g / (sqrt(v) + eps) (default: 1e-8)")
    a("--dropout", type=float, default=None,
      help="dropout probability in the dense blocks (default: the preset's: "
           f"{_preset_values('dropout', none='0.2')})")
    a("--augment", action=argparse.BooleanOptionalAction, default=None,
      help="random flips, zooms, brightness/contrast/gamma on training images (default: on)")
    a("--init", metavar="CHECKPOINT", default=None,
      help="start from the weights of this checkpoint (best.npz or last.npz of an earlier "
           "single-network run, or member<k>/best.npz of an ensemble run: fine-tuning); the "
           "network must have the same shape (default: random weights)")
    a("--recompute-bn", type=int, metavar="N", default=None,
      help="before each validation, set the batch-norm running statistics to averages over "
           "the first N training images, un-augmented; 0 keeps the running averages of the "
           f"last batches (default: the preset's: {_preset_values('recompute_bn')})")
    a("--seed", type=int, default=None,
      help="seed of everything random: weights, order, augmentation, dropout (default: 0)")
    a("--train-limit", type=int, metavar="N", default=None,
      help="use only the first N training images (quick experiments) (default: all)")
    a("--val-limit", type=int, metavar="N", default=None,
      help="validate on the first N validation images (default: all)")
    a("--pictures", type=int, metavar="N", default=None,
      help=f"validation images drawn in each epoch's picture (default: the preset's: "
           f"{_preset_values('pictures')})")
    a("--members", type=int, metavar="K", default=None,
      help="train an ensemble of K networks, seeds SEED … SEED+K-1, each an ordinary run in "
           "OUT/member<k>, and join them in OUT/best.npz; their probabilities are averaged "
           f"(tinyseg/ensemble.py) (default: the preset's: {_preset_values('members', none='1')})")
    a("--jobs", type=int, metavar="J", default=None,
      help="with --members: how many members train at once, sharing the threads (at least "
           "one each) (default: all of them, at most two per thread)")
    a("--threads", type=int, metavar="N", default=None,
      help="threads for the numba kernels; BLAS keeps one thread, see tinyseg/cli.py (default: all cores)")
    a("--cache", metavar="DIR", default=None,
      help="where the resized data is cached (default: $TINYSEG_CACHE or ~/.cache/tinyseg)")
    a("--max-minutes", type=float, metavar="M", default=None,
      help="stop (as with Ctrl-C, resumable) once the run has taken M minutes in all, its "
           "earlier sessions counted (default: no limit)")
    a("--no-test", action="store_true",
      help="skip the test-split evaluation of best.npz at the end")
    a("--quiet", action="store_true", help="no progress line (epoch lines still printed)")
    return p


#: What a run (or an ensemble run) writes into its folder: --out refuses a folder that
#: holds any of these, so that nothing of the user's is replaced.
RUN_FILES = ("config.json", "log.jsonl", "best.npz", "last.npz", "curves.png", "pictures",
             "test.json", ENSEMBLE_MANIFEST)


def run_files_in(folder: Path) -> List[str]:
    """The entries of ``folder`` that a run would write over (``RUN_FILES``, ``member<k>``)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name in RUN_FILES or (p.name.startswith("member")
                                             and p.name[len("member"):].isdigit()))


def _config_from_args(args) -> TrainConfig:
    overrides = None
    if args.model_overrides:
        try:
            overrides = json.loads(args.model_overrides)
        except json.JSONDecodeError as e:
            raise UserError(f"--model-overrides is not valid JSON ({e})") from None
        if not isinstance(overrides, dict):
            raise UserError("--model-overrides must be a JSON object, e.g. '{\"pools\": 4}'")
    epoch_images = args.epoch_images
    cfg = preset_config(
        args.preset, model=args.model, model_overrides=overrides, size=args.size,
        batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, lr_decay=args.lr_decay,
        weight_decay=args.weight_decay, person_weight=args.person_weight, lovasz=args.lovasz,
        rms_alpha=args.rms_alpha, rms_eps=args.rms_eps,
        dropout=args.dropout, augment=args.augment, init=args.init,
        recompute_bn=args.recompute_bn,
        seed=args.seed, filter=args.filter,
        train_limit=args.train_limit, val_limit=args.val_limit, pictures=args.pictures,
        members=args.members)
    if epoch_images is not None:
        cfg.epoch_images = epoch_images or None
    cfg.check()
    return cfg


_RESUME_OK = {"resume", "epochs", "data", "threads", "max_minutes", "cache", "no_test", "quiet",
              "jobs"}


def _given_flags(parser, argv: Optional[Sequence[str]]) -> set:
    """The destinations of the flags written on the command line, whatever their value.

    argparse fills in a default only where the namespace has no value yet, so parsing into a
    namespace that holds a marker everywhere leaves the marker on every flag not given.
    (``args.x == default`` cannot tell ``--small`` from no preset flag at all.)"""
    marker = object()
    ns = argparse.Namespace(**{a.dest: marker for a in parser._actions
                               if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, namespace=ns)
    return {k for k, v in vars(ns).items() if v is not marker}


def _resume_changes(args, parser, run_dir: Path, given: Optional[set] = None) -> List[str]:
    """The flags given with ``--resume`` (other than ``_RESUME_OK``) whose value differs from
    the run's saved config: those would silently be ignored.  Repeating a saved value is
    fine.  (Any flag counts as a change when the saved config cannot be read.)  ``given``:
    the flags written on the command line (``_given_flags``); without it, every value
    other than the default counts as given."""
    saved = {}
    for name in ("config.json", ENSEMBLE_MANIFEST):
        try:
            saved = json.loads((Path(run_dir) / name).read_text())["train"]
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    changes = []
    for key, value in vars(args).items():
        was_given = key in given if given is not None else value != parser.get_default(key)
        if key in _RESUME_OK or value is None or not was_given:
            continue
        if key == "model_overrides":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        elif key == "init":
            value = str(Path(value).resolve())
        if not isinstance(saved, dict) or key not in saved or saved[key] != value:
            changes.append(key)
    return changes


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command; the run folder is locked while it trains (``tinyseg.io.folder_lock``)."""
    with contextlib.ExitStack() as locks:
        try:
            return _main(argv, lambda folder: locks.enter_context(folder_lock(folder)))
        except FolderBusy as e:
            raise UserError(str(e)) from None


def _main(argv: Optional[Sequence[str]], lock) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    report = (lambda text, final: _stderr_report(text, final) if final else None) \
        if args.quiet else _stderr_report
    if args.max_minutes is not None and not 0 < args.max_minutes < math.inf:
        raise UserError(f"--max-minutes must be a number of minutes > 0, got {args.max_minutes}")
    max_seconds = None if args.max_minutes is None else 60.0 * args.max_minutes
    trainer = None
    try:
        if args.resume:
            given = _resume_changes(args, parser, Path(args.resume),
                                    _given_flags(parser, argv))
            if given:
                raise UserError(f"--{given[0].replace('_', '-')} cannot be changed when "
                                "resuming (the run's saved config decides it)")
            if Path(args.resume).is_dir():
                lock(Path(args.resume))
            if (Path(args.resume) / ENSEMBLE_MANIFEST).is_file():
                if args.epochs is not None or args.max_minutes is not None:
                    raise UserError("--epochs and --max-minutes cannot be given when resuming "
                                    "an ensemble run")
                return resume_ensemble(Path(args.resume), jobs=args.jobs, threads=args.threads,
                                       cache=args.cache, no_test=args.no_test, report=report,
                                       data=args.data)
            if args.jobs is not None:
                raise UserError("--jobs is for ensembles (--members K with K > 1)")
            trainer = Trainer.resume(args.resume, data=args.data, epochs=args.epochs,
                                     cache_dir=args.cache, report=report,
                                     max_seconds=max_seconds, threads=args.threads)
            if trainer.epoch >= trainer.cfg.epochs:
                print(f"{trainer.run_dir} has already done {trainer.epoch} of "
                      f"{trainer.cfg.epochs} epochs: nothing to train (raise --epochs to go on)")
                if (not args.no_test and trainer.best_path.is_file()
                        and not (trainer.run_dir / "test.json").is_file()):
                    return _test_report(trainer, args.cache)    # stopped before it last time
                return 0
            print(f"resuming {trainer.run_dir} at epoch {trainer.epoch + 1}, batch "
                  f"{trainer.batch + 1} (of {trainer.cfg.epochs} epochs)", flush=True)
        else:
            cfg = _config_from_args(args)
            root, files = data_source(args.data)    # --data, else $TINYSEG_DATA: a folder
            cfg.data = str(files[0] if files else root)     # or one COCO .json file
            if cfg.init:
                cfg.init = str(Path(cfg.init).resolve())
            out = Path(args.out) if args.out else \
                Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
            if out.exists() and not out.is_dir():
                raise UserError(f"--out {out}: is a file, not a folder")
            # the lock first: a run another process is training now is said to be that, not
            # "a run that stopped before its first checkpoint: delete the folder"
            lock(out)
            if (out / "config.json").exists() and not (out / "last.npz").exists():
                raise UserError(f"{out} holds a run that stopped before its first checkpoint "
                                "(no last.npz, nothing to resume): delete the folder to start "
                                "it again there, or choose another --out")
            if (out / "config.json").exists() or (out / ENSEMBLE_MANIFEST).exists():
                raise UserError(f"{out} already holds a run: continue it with --resume {out} "
                                "or choose another --out")
            taken = run_files_in(out)
            if taken:
                raise UserError(f"--out {out}: holds {', '.join(taken)}, which a run would "
                                "replace; choose a new or empty folder")
            t0 = time.perf_counter()
            train, val = load_data(cfg, args.cache, progress=not args.quiet)
            if cfg.members > 1:
                if args.max_minutes is not None:
                    raise UserError("--max-minutes is for single runs; stop an ensemble run "
                                    "with Ctrl-C and go on with --resume")
                if cfg.init:                # refused here, not once per member
                    start_from(build_model(cfg), cfg.init)
                return train_ensemble(cfg, out, jobs=args.jobs, threads=args.threads,
                                      cache=args.cache, no_test=args.no_test, report=report)
            if args.jobs is not None:
                raise UserError("--jobs is for ensembles (--members K with K > 1)")
            trainer = Trainer(cfg, train, val, out, report=report, max_seconds=max_seconds,
                              threads=args.threads)
            out.mkdir(parents=True, exist_ok=True)
            trainer.write_config()
            print(f"{cfg.preset}: {cfg.model}, {trainer.model.num_parameters():,} parameters, "
                  f"{cfg.size}x{cfg.size}, {len(train)} training / {len(val)} validation images "
                  f"('{cfg.filter}' filter), {cfg.epochs} epochs of {trainer.steps} batches of "
                  f"{cfg.batch_size}; data ready in {time.perf_counter() - t0:.0f}s; "
                  f"writing to {out}", flush=True)
        result = trainer.run()
    except DataError as e:
        raise UserError(str(e)) from None
    except Divergence as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        print("\nstopped at once (second Ctrl-C); last.npz, if any, holds the last state "
              "saved" if trainer is not None else
              "\nstopped (Ctrl-C) before training started; nothing was saved",
              file=sys.stderr, flush=True)
        return 130
    if result["status"] == "stopped":
        where = (f"after epoch {result['epoch']}" if result["batch"] == 0 else
                 f"in epoch {result['epoch'] + 1} after batch {result['batch']} of "
                 f"{trainer.steps}")
        print(f"stopped ({result['reason']}) {where}; saved {trainer.last_path}. Continue "
              f"with: python -m tinyseg.train --resume {shlex.quote(str(trainer.run_dir))}",
              flush=True)
        return 130
    best = result["best_iou"]
    print(f"done: {result['epoch']} epochs in {_clock(result['elapsed'])}; best validation IoU "
          f"{best:.4f} at epoch {result['best_epoch']} ({trainer.best_path})"
          if best is not None else f"done: {result['epoch']} epochs", flush=True)
    if not args.no_test and trainer.best_path.is_file():
        return _test_report(trainer, args.cache)
    return 0


def _test_report(trainer, cache) -> int:
    """The test-split figures of a finished run; Ctrl-C here leaves the run as it is (done)
    and ``--resume`` writes them later."""
    try:
        write_test_report(trainer.run_dir, trainer.best_path, trainer.cfg, cache)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        print(f"\nstopped (Ctrl-C) during the test-split evaluation; the run itself is done. "
              f"Get the test figures with: python -m tinyseg.train --resume "
              f"{shlex.quote(str(trainer.run_dir))}", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
