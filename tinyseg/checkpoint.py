"""Checkpoints: a model file plus everything needed to use it, or to go on training it.

tinyseg has one weight-file format, the Tiramisu's (``Tiramisu.save``): an ``.npz`` with
``__format__``, ``__config__`` (the JSON that rebuilds the network) and one array per
parameter and buffer under its PyTorch name.  A checkpoint is that same file with more
entries, all named ``__…__`` so they can never clash with a parameter name:

``__meta__``
    JSON: what a *user* of the model needs -- the training image size ``size`` (photos are
    letterboxed to it), the normalisation ``mean``/``std`` (per RGB channel, on pixel / 255;
    they travel with the weights so ``cutout`` works without the data), the training
    configuration, the epoch and its validation IoU.
``__state__``
    JSON, training checkpoints only: what *resuming* needs -- the epoch and batch reached,
    the best validation IoU so far, the optimiser's scalars and the learning-rate schedule,
    the state of every random generator (``Generator.bit_generator.state``, by name), and
    the running sums of a half-finished epoch.
``__optim__.square_avg.<parameter name>``
    training checkpoints only: RMSprop's running average of each squared gradient.

``best.npz`` of a run is a *model checkpoint* (weights + ``__meta__``: about 0.6 MB for one
``tiramisu_tiny`` network, each ``member<k>/best.npz`` of the ``small`` preset, whose joined
``best.npz`` is an ensemble file of 1.7 MB; 3.3 MB for ``tiramisu_small``; a run's
``best.npz`` is what ships as the bundled model); ``last.npz`` is a *training checkpoint*
(all of the above).
:func:`load_model` opens either, or a plain
``Tiramisu.save`` file together with a separate mean/std.  Everything is written with
:func:`tinyseg.io.atomic_save_npz`: an interrupted save leaves the previous file intact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from .data.batches import checked_statistics
from .data.images import MAX_SIZE
from .io import atomic_save_npz
from .tiramisu import Tiramisu, damaged_weights

PathLike = Union[str, os.PathLike]

__all__ = ["CheckpointError", "model_arrays", "save_model", "save_training", "read",
           "load_model", "generator_states", "set_generator_states", "default_weights",
           "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1
META = "__meta__"
STATE = "__state__"
OPTIM = "__optim__."
_RESERVED = ("__format__", "__config__")


class CheckpointError(ValueError):
    """A file that is not a usable tinyseg checkpoint; the message names the file and why."""


def default_weights() -> Path:
    """Where the bundled model lives: ``tinyseg/weights/person.npz`` inside the package."""
    return Path(__file__).resolve().parent / "weights" / "person.npz"


# -- random generators, by name ---------------------------------------------------------------
def generator_states(model) -> Dict[str, dict]:
    """``{layer name: bit_generator.state}`` of every ``numpy.random.Generator`` a layer holds
    (the Dropout layers' ``rng``), JSON-able."""
    out = {}
    for lname, layer in model.named_layers():
        for attr, value in vars(layer).items():
            if isinstance(value, np.random.Generator):
                out[f"{lname}.{attr}" if lname else attr] = value.bit_generator.state
    return out


def set_generator_states(model, states: Dict[str, dict]) -> None:
    """Put back what :func:`generator_states` returned (names must match exactly)."""
    own = {}
    for lname, layer in model.named_layers():
        for attr, value in vars(layer).items():
            if isinstance(value, np.random.Generator):
                own[f"{lname}.{attr}" if lname else attr] = value
    if set(own) != set(states):
        missing = sorted(set(own) - set(states)) or sorted(set(states) - set(own))
        raise CheckpointError(f"the checkpoint's random generators do not match the model's "
                              f"(first difference: '{missing[0]}')")
    for name, gen in own.items():
        gen.bit_generator.state = states[name]


# -- writing -------------------------------------------------------------------------------
def model_arrays(model: Tiramisu) -> Dict[str, np.ndarray]:
    """The arrays of ``Tiramisu.save``: format version, config JSON, parameters and buffers."""
    return model.arrays()


def _json(obj) -> np.ndarray:
    return np.array(json.dumps(obj, sort_keys=True, allow_nan=True))


def make_meta(size: int, mean, std, **extra) -> dict:
    """The ``__meta__`` dict: ``size``, ``mean``, ``std`` (lists of 3 floats) and ``extra``."""
    return {"checkpoint_version": CHECKPOINT_VERSION, "size": int(size),
            "mean": [float(v) for v in np.asarray(mean, np.float32).reshape(3)],
            "std": [float(v) for v in np.asarray(std, np.float32).reshape(3)], **extra}


def save_model(path: PathLike, model: Tiramisu, meta: dict) -> Path:
    """A model checkpoint: the Tiramisu's arrays plus ``__meta__`` (see :func:`make_meta`)."""
    arrays = model_arrays(model)
    arrays[META] = _json(meta)
    return atomic_save_npz(path, arrays)


def save_training(path: PathLike, model: Tiramisu, meta: dict, state: dict,
                  optimizer) -> Path:
    """A training checkpoint: model checkpoint + ``__state__`` + RMSprop's running averages.

    ``state`` must be JSON-able; the optimiser's scalars and its step count are added to it
    under ``"optimizer"``.
    """
    arrays = model_arrays(model)
    arrays[META] = _json(meta)
    opt = optimizer.state_dict()
    scalars = {k: v for k, v in opt.items() if not k.startswith("square_avg.")}
    arrays[STATE] = _json({**state, "optimizer": scalars})
    for k, v in opt.items():
        if k.startswith("square_avg."):
            arrays[OPTIM + k] = v
    return atomic_save_npz(path, arrays)


# -- reading -------------------------------------------------------------------------------
def read(path: PathLike) -> Tuple[dict, Dict[str, np.ndarray], dict, Optional[dict],
                                   Dict[str, np.ndarray]]:
    """``(config, model_state, meta, state, optim)`` of a checkpoint or plain weight file.

    ``meta`` is ``{}`` for a plain ``Tiramisu.save`` file; ``state`` is ``None`` unless it is
    a training checkpoint; ``optim`` maps ``square_avg.<name>`` to arrays.  Raises
    :class:`CheckpointError` naming the file when it cannot be used.
    """
    path = Path(path)
    try:
        config, data = Tiramisu.read_file(path)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except ValueError as e:
        raise CheckpointError(str(e).replace("Tiramisu: ", "")) from None
    try:
        meta = json.loads(str(data.pop(META))) if META in data else {}
        state = json.loads(str(data.pop(STATE))) if STATE in data else None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: damaged metadata ({e})") from None
    if not isinstance(meta, dict) or not (state is None or isinstance(state, dict)):
        raise CheckpointError(f"{path}: damaged metadata (not a JSON object)")
    optim = {k[len(OPTIM):]: data.pop(k) for k in list(data) if k.startswith(OPTIM)}
    unknown = [k for k in data if k.startswith("__") and k not in _RESERVED]
    if unknown:
        raise CheckpointError(f"{path}: unknown entry '{unknown[0]}' (written by a newer "
                              f"tinyseg?)")
    try:
        version = int(meta.get("checkpoint_version", 0)) if meta else 0
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: damaged metadata (checkpoint_version "
                              f"{meta.get('checkpoint_version')!r})") from None
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta['checkpoint_version']} is "
                              f"newer than this tinyseg reads ({CHECKPOINT_VERSION})")
    return config, data, meta, state, optim


def build_model(config: dict, state: Dict[str, np.ndarray], path: PathLike = "",
                rng=None) -> Tiramisu:
    """A Tiramisu with ``config`` and the weights ``state`` (``CheckpointError`` on mismatch)."""
    try:
        model = Tiramisu(**config, rng=rng)
        model.load_state_dict(state)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the weights do not fit the stored configuration "
                              f"({e})") from None
    damage = damaged_weights(state)
    if damage:
        raise CheckpointError(f"{path}: {damage}")
    return model


def check_rgb(model, path) -> None:
    """``CheckpointError`` unless the network (an Ensemble: its members) takes 3 channels."""
    channels = model.config["in_channels"]
    if channels != 3:
        raise CheckpointError(f"{path}: the network takes {channels} input channels; photos "
                              f"and the data sets here have 3 (RGB)")


def checked_normalisation(path, info: dict):
    """``(size, mean, std)`` of a checkpoint's metadata, checked: a positive integer size,
    three finite means, three positive finite stds (``CheckpointError`` otherwise)."""
    try:
        size = info["size"]
        if isinstance(size, bool) or int(size) != size or not 1 <= int(size) <= MAX_SIZE:
            raise ValueError(f"size {size!r}")
        mean = np.asarray(info["mean"], dtype=np.float32)
        std = np.asarray(info["std"], dtype=np.float32)
        if mean.shape != (3,) or not np.all(np.isfinite(mean)):
            raise ValueError(f"mean {info['mean']!r}")
        if std.shape != (3,) or not np.all(np.isfinite(std)) or np.any(std <= 0):
            raise ValueError(f"std {info['std']!r}")
        checked_statistics(mean, std)      # the 0-1 scale that normalize expects
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged metadata ({e}: the training size must be an "
                              f"integer from 1 to {MAX_SIZE}, mean and std three numbers, "
                              f"std > 0)") from None
    return int(size), mean, std


def load_model(path: PathLike, mean=None, std=None, size: Optional[int] = None
               ) -> Tuple[Tiramisu, dict]:
    """``(model in eval mode, info)`` from a checkpoint (or a weight file plus mean/std/size).

    An ensemble file (``tinyseg.ensemble``) gives an :class:`~tinyseg.ensemble.Ensemble`,
    which predicts like a single network; ``info["ensemble"]`` then says what it holds.

    ``info`` holds ``size``, ``mean``, ``std`` (from the file's ``__meta__`` unless given
    here) and the rest of ``__meta__``.  A plain weight file without them is refused with a
    message saying what is missing.
    """
    from .ensemble import is_ensemble_file, load_ensemble
    if is_ensemble_file(path):
        model, meta, ens = load_ensemble(path)
        info = {**meta, "ensemble": ens}
    else:
        config, weights, meta, _, _ = read(path)
        info = dict(meta)
        model = None
    for key, value in (("mean", mean), ("std", std), ("size", size)):
        if value is not None:
            info[key] = value
    missing = [k for k in ("size", "mean", "std") if k not in info]
    if missing:
        raise CheckpointError(f"{path}: no {', '.join(missing)} stored" +
                              (": a plain weight file" if len(missing) == 3 else "") +
                              "; use a checkpoint written by 'python -m tinyseg.train' "
                              "(best.npz or last.npz)")
    info["size"], info["mean"], info["std"] = checked_normalisation(path, info)
    if model is None:
        model = build_model(config, weights, path)
    check_rgb(model, path)
    model.eval()
    return model, info
