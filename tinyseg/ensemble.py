"""An ensemble: several networks trained alike from different seeds, their probabilities averaged.

With 170 training images one network's answer depends a good deal on its seed: five seeds
of the ``small`` preset validate between 0.508 and 0.547 (README, "Training results").
Their mistakes differ, so their *average* is better than a typical member (Lakshminarayanan
et al. 2017, "deep ensembles").  For members ``k = 1 … K`` with logits ``z_k``::

    p(x) = (1/K) Σ_k softmax(z_k(x))          (per pixel and class)

:meth:`Ensemble.forward` returns ``log p``.  Used as logits, ``log p`` gives back ``p``
under the softmax (``softmax(log p) = p / Σ p = p``), so the ensemble can stand wherever a
single network does: the loss, :func:`tinyseg.infer.softmax_person`, ``evaluate``,
``cutout``.  Averaging probabilities, not logits, is the usual choice: a member that is
very sure cannot outvote the others by the size of its logits alone.

The file: one ``.npz`` holding every member's weight file under a prefix ``member<k>/``
(``member0/__format__``, ``member0/__config__``, ``member0/<parameter name>``, …), the
first member's ``__meta__`` (training size, mean and std, which every member must share,
and member 0's own training config, epoch and validation IoU) and ``__ensemble__`` (JSON: the
number of members and where they came from).  ``tinyseg.checkpoint.load_model`` opens it
like any other checkpoint.

Join checkpoints from the command line (the same as :func:`save_ensemble`)::

    python -m tinyseg.ensemble ens.npz runs/a/best.npz runs/b/best.npz
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .checkpoint import (META as _META, CheckpointError, build_model, check_rgb,
                         checked_normalisation, read)
from .cli import HelpFormatter, UserError, run_main
from .io import atomic_save_npz, read_npz
from .tiramisu import FORMAT_VERSION

PathLike = Union[str, os.PathLike]

__all__ = ["Ensemble", "save_ensemble", "is_ensemble_file", "load_ensemble", "ENSEMBLE"]

ENSEMBLE = "__ensemble__"


class Ensemble:
    """Members with the same input size and classes; ``forward`` = log of the mean softmax."""

    def __init__(self, members: Sequence):
        if not members:
            raise ValueError("Ensemble: needs at least one member")
        shapes = [(k, (m.config["in_channels"], m.config["num_classes"]))
                  for k, m in enumerate(members) if hasattr(m, "config")]   # Tiramisus
        odd = [(k, s) for k, s in shapes if s != shapes[0][1]]
        if odd:
            (j, first), (k, other) = shapes[0], odd[0]
            raise ValueError(f"Ensemble: member {k} takes {other[0]} input channels and gives "
                             f"{other[1]} classes, member {j} {first[0]} and {first[1]}: the "
                             f"members' probabilities cannot be averaged")
        self.members = list(members)
        self.training = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) inputs -> (N, K, H, W) ``log`` of the members' mean class probabilities."""
        p = None
        for m in self.members:
            z = m.forward(x).astype(np.float64)
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            e /= e.sum(axis=1, keepdims=True)
            p = e if p is None else p + e
        p /= len(self.members)
        # the smallest positive float32 keeps log finite where every member is certain
        return np.log(np.maximum(p, np.finfo(np.float32).tiny)).astype(np.float32)

    __call__ = forward

    @property
    def config(self) -> dict:
        """The first member's Tiramisu configuration (members share input channels and
        classes), so that code reading ``model.config`` takes an ensemble as well."""
        return self.members[0].config

    def eval(self) -> "Ensemble":
        return self.train(False)

    def train(self, mode: bool = True) -> "Ensemble":
        for m in self.members:
            m.train(mode)
        self.training = bool(mode)
        return self

    def num_parameters(self) -> int:
        return sum(m.num_parameters() for m in self.members)

    def __len__(self) -> int:
        return len(self.members)


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(f"{path}: " + ("is a directory, not a checkpoint file"
                                              if path.is_dir() else "file not found"))
    try:
        return read_npz(path)
    except Exception as e:  # not an npz, truncated, pickled objects...
        reason = str(e) if type(e) is ValueError else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: cannot read it as a tinyseg checkpoint "
                              f"({reason})") from None


def is_ensemble_file(path: PathLike) -> bool:
    """True if ``path`` is an ``.npz`` with an ``__ensemble__`` entry (False if unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return ENSEMBLE in f.files
    except Exception:
        return False


def save_ensemble(path: PathLike, member_paths: Sequence[PathLike], **extra) -> Path:
    """Join the model checkpoints ``member_paths`` (each a run's ``best.npz``) into one file.

    The members must share the training size, mean and std (they were trained on the same
    data); anything else in ``extra`` goes into ``__ensemble__``.
    """
    arrays: Dict[str, np.ndarray] = {}
    meta = None
    sources: List[str] = []
    for k, mp in enumerate(member_paths):
        mp = Path(mp)
        data = _load_npz(mp)
        if ENSEMBLE in data:
            raise CheckpointError(f"{mp}: is itself an ensemble; give its members instead")
        if "__format__" not in data or _META not in data:
            raise CheckpointError(f"{mp}: not a model checkpoint (best.npz or last.npz of a "
                                  f"run)")
        config, weights, m, _, _ = read(mp)   # the checks load_model makes: format version,
        net = build_model(config, weights, mp)  # metadata, weights that fit the network
        checked_normalisation(mp, m)
        check_rgb(net, mp)
        if k and (net.config["in_channels"], net.config["num_classes"]) != shape:
            raise CheckpointError(f"{mp}: takes {net.config['in_channels']} input channels and "
                                  f"gives {net.config['num_classes']} classes, {member_paths[0]} "
                                  f"{shape[0]} and {shape[1]}: members must predict the same "
                                  f"classes from the same pictures")
        shape = (net.config["in_channels"], net.config["num_classes"])
        key = {n: m.get(n) for n in ("size", "mean", "std")}
        if meta is None:
            meta = m
            first = (mp, key)
        elif key != first[1]:
            differ = next(n for n in key if key[n] != first[1][n])
            shown = (lambda v: v) if differ == "size" else \
                (lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")" if v else v)
            raise CheckpointError(f"{mp}: its {differ} {shown(key[differ])} differs from "
                                  f"{first[0]}'s {shown(first[1][differ])}: members must be "
                                  f"trained on the same data")
        for name, v in data.items():
            if name.startswith("__") and name not in ("__format__", "__config__"):
                continue  # __meta__ goes in once; a training checkpoint's optimiser state is dropped
            arrays[f"member{k}/{name}"] = v
        sources.append(str(mp))
    if meta is None:
        raise CheckpointError("save_ensemble: no member checkpoints given")
    arrays[_META] = np.array(json.dumps(meta, sort_keys=True, allow_nan=True))
    arrays[ENSEMBLE] = np.array(json.dumps({"members": len(sources), "sources": sources,
                                            **extra}, sort_keys=True))
    return atomic_save_npz(path, arrays)


def load_ensemble(path: PathLike) -> Tuple[Ensemble, dict, dict]:
    """``(Ensemble in eval mode, meta, ensemble_info)`` from a file of :func:`save_ensemble`."""
    path = Path(path)
    data = _load_npz(path)
    try:
        info = json.loads(str(data.pop(ENSEMBLE)))
        meta = json.loads(str(data.pop(_META))) if _META in data else {}
        if not isinstance(info, dict) or not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        k_members = info["members"]
        # a whole number, and no more members than the file has entries for (two each): a
        # damaged count must not make us build a list of a billion names
        if isinstance(k_members, bool) or not isinstance(k_members, int) \
                or not 1 <= k_members <= len(data) // 2:
            raise ValueError(f"{k_members!r} members")
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged ensemble entry ({e})") from None
    expected = {f"member{k}/" for k in range(k_members)}
    stray = sorted(n for n in data if n[:n.find("/") + 1] not in expected)
    if stray:       # a single checkpoint refuses unknown entries too
        raise CheckpointError(f"{path}: entries that belong to none of its {k_members} "
                              f"members: {', '.join(stray[:5])}"
                              + (f" and {len(stray) - 5} more" if len(stray) > 5 else ""))
    members = []
    for k in range(k_members):
        prefix = f"member{k}/"
        part = {n[len(prefix):]: v for n, v in data.items() if n.startswith(prefix)}
        if "__format__" not in part or "__config__" not in part:
            raise CheckpointError(f"{path}: member {k} of {k_members} is missing")
        try:
            version = part.pop("__format__")
            if version.shape != () or version.dtype.kind not in "iu":   # as a single file
                raise ValueError(f"__format__ {version!r}")
            config = json.loads(str(part.pop("__config__")))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: member {k} has a damaged __format__ or __config__ "
                                  f"entry ({e})") from None
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: member {k} has another weight-file format version")
        members.append(build_model(config, part, f"{path} (member {k})"))
    try:
        ens = Ensemble(members)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    ens.eval()
    return ens, meta, info


PROG = "tinyseg.ensemble"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Join model checkpoints into one ensemble file that ``evaluate`` and ``cutout`` take."""
    parser = argparse.ArgumentParser(
        prog="python -m tinyseg.ensemble", formatter_class=HelpFormatter,
        description="Join model checkpoints (each a run's best.npz) into one ensemble file; "
                    "evaluate and cutout average the members' probabilities.",
        epilog="Exit codes: 0 done, 1 error (message on stderr), 2 bad flags.")
    parser.add_argument("out", metavar="OUT.npz", help="the ensemble file to write")
    parser.add_argument("members", metavar="MEMBER.npz", nargs="+",
                        help="checkpoints trained on the same data (same size, mean, std)")
    args = parser.parse_args(argv)
    members = [Path(m).resolve() for m in args.members]
    if Path(args.out).resolve() in members:
        raise UserError(f"{args.out}: the output would overwrite one of its members")
    twice = next((m for k, m in enumerate(args.members) if members[k] in members[:k]), None)
    if twice is not None:
        raise UserError(f"{twice}: given twice; an ensemble averages different networks")
    if Path(args.out).exists() and not is_ensemble_file(args.out):
        raise UserError(f"{args.out}: exists and is not an ensemble file; not overwriting it "
                        "(the first name is the file to write: OUT.npz MEMBER.npz ...)")
    try:
        path = save_ensemble(args.out, args.members)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    print(f"{path}: an ensemble of {len(args.members)} network"
          + ("s" if len(args.members) != 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
