"""What to benchmark: the kernel calls a Tiramisu training step really makes, and how to run
each one three ways (tinyseg's numba kernel, its NumPy reference twin, PyTorch).

Shapes are not invented: :func:`record_step` runs one real training step of a preset
(``forward``, softmax cross-entropy, ``backward``, RMSprop) with every kernel function
replaced, for the duration of the step, by a wrapper that writes down its arguments (shape,
dtype and memory layout of every array, the value of every scalar).  The wrappers are
installed wherever tinyseg modules hold a reference to a kernel (``tinyseg.tiramisu``,
``tinyseg.layers.*``, ``tinyseg.losses``, ``tinyseg.optim`` and the kernel modules
themselves), so the record is exactly what
the model calls, in order, including the BatchNorm + ReLU that the memory-efficient dense
layers recompute in the backward pass.  The step runs at batch 1 (cheap) and the batch
dimension is then set to the benchmark's batch (every other dimension is independent of the
batch).  A second step with the naive dense blocks records the concatenations.

A *call* is a JSON-able dict ``{"kernel": "conv.conv2d_forward", "args": {...}}``; an *op*
is the name a table row uses (``conv3x3 fwd``, ``bn+relu bwd``, ...).  For every call,
:func:`make_inputs` builds random inputs of the recorded shapes (the same for the three
implementations), :func:`implementations` gives the kernel and its reference twin, and
:func:`torch_callable` the PyTorch operation that does the same job.

Everything here is also used by the lesson and the tests; the timing, the checks and the
processes are in ``benchmarks.run``.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import sys
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["training_presets", "KERNEL_FAMILIES", "OP_ORDER", "recording", "record_step",
           "training_step", "op_name", "with_batch", "group_calls", "make_inputs",
           "implementations", "run_impl", "torch_callable", "work", "shape_label",
           "concat_reference", "call_key"]



def training_presets() -> Dict[str, dict]:
    """``{name: {"model", "size", "batch_size"}}``: the training presets of
    ``tinyseg.train.PRESETS`` (``python -m tinyseg.train --preset NAME``), i.e. which network
    is trained at which image size and batch size.  The benchmarks take their shapes from
    these."""
    from tinyseg.train import PRESETS
    return {name: {"model": p["model"], "size": int(p["size"]),
                   "batch_size": int(p["batch_size"])} for name, p in PRESETS.items()}


KERNEL_FAMILIES = ("conv", "norm", "pool", "loss", "optim")

# Row order of the tables (ops not listed go last, alphabetically).
OP_ORDER = ["conv3x3 fwd", "conv3x3 bwd", "conv1x1 fwd", "conv1x1 bwd",
            "convT3x3s2 fwd", "convT3x3s2 bwd", "bn stats", "bn+relu fwd", "bn+relu bwd",
            "bn fwd", "bn bwd", "maxpool fwd", "maxpool bwd", "concat", "softmax CE",
            "rmsprop step"]

# Arguments whose first dimension is the batch (``x_shape`` is a tuple value).
_BATCHED = {"x", "dout", "logits", "target", "xs"}

# Hyper-parameters of the benchmarked training step (the Tiramisu paper's).
LR, WEIGHT_DECAY = 1e-3, 1e-4


# ------------------------------------------------------------------------------------------
# Recording the calls of a training step
# ------------------------------------------------------------------------------------------

def _kernel_functions() -> Dict[int, Tuple[str, Any]]:
    """``id(function) -> ("family.name", function)`` for every public kernel, plus
    ``tinyseg.layers.concat.concat`` (the one concatenation the naive blocks call)."""
    found = {}
    for fam in KERNEL_FAMILIES:
        mod = importlib.import_module(f"tinyseg.kernels.{fam}")
        for name, obj in vars(mod).items():
            if name.startswith("_") or not callable(obj):
                continue
            py = getattr(obj, "py_func", obj)  # numba dispatcher -> the Python function
            if getattr(py, "__module__", None) == mod.__name__:
                found[id(obj)] = (f"{fam}.{name}", obj)
    concat_mod = importlib.import_module("tinyseg.layers.concat")
    found[id(concat_mod.concat)] = ("concat.concat", concat_mod.concat)
    return found


def _describe(value: Any) -> dict:
    """A JSON-able description of one argument: an array's shape / dtype / layout, a list of
    arrays, or a plain value."""
    if isinstance(value, np.ndarray):
        d = {"shape": list(value.shape), "dtype": value.dtype.name}
        if value.ndim == 4:
            # judged from the strides, not the flags: at batch 1 a channel slice counts as
            # C-contiguous, but at the benchmark's batch it is not
            n, c, h, w = value.shape
            s = [st // value.itemsize for st in value.strides]
            if s[1:] == [h * w, w, 1] and s[0] % (h * w) == 0 and s[0] > c * h * w:
                # a channel slice of a C-contiguous (N, C_total, H, W) buffer (dense blocks)
                d["base_channels"] = s[0] // (h * w)
            elif s != [c * h * w, h * w, w, 1] and not value.flags.c_contiguous:
                d["strided"] = True
        return d
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray)
                                                          for v in value):
        return {"list": [_describe(v) for v in value]}
    if isinstance(value, tuple):
        return {"value": [int(v) if isinstance(v, (int, np.integer)) else v for v in value]}
    if isinstance(value, (np.integer,)):
        return {"value": int(value)}
    if isinstance(value, (np.floating,)):
        return {"value": float(value)}
    return {"value": value}


def _signature(fn) -> inspect.Signature:
    return inspect.signature(getattr(fn, "py_func", fn))


@contextlib.contextmanager
def recording(calls: List[dict], timer: bool = False) -> Iterator[List[dict]]:
    """Within the block, append ``{"kernel", "args"}`` to ``calls`` for every kernel call a
    tinyseg module makes (plus, when ``timer``, ``"seconds"`` of wall time and ``"cpu"``
    seconds of the calling thread, which is where numba compiles); restore everything on
    exit."""
    kernels = _kernel_functions()
    patched = []
    depth = [0]  # record only the outermost call if a kernel ever calls another one

    def wrap(qualname, fn):
        sig = _signature(fn)

        def wrapper(*args, **kwargs):
            if depth[0]:
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            entry = {"kernel": qualname,
                     "args": {k: _describe(v) for k, v in bound.arguments.items()}}
            depth[0] += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                out = fn(*args, **kwargs)
            finally:
                depth[0] -= 1
            if timer:
                entry["seconds"] = time.perf_counter() - t0
                entry["cpu"] = time.thread_time() - c0  # this thread only: compilation
            calls.append(entry)
            return out
        wrapper.__wrapped__ = fn
        return wrapper

    # every tinyseg module that holds a kernel: ``from ..kernels.pool import f`` puts it in
    # the importing module, ``from ..kernels import conv as _k; _k.f(...)`` looks it up in
    # the kernel module itself, so both are patched
    for mname, mod in list(sys.modules.items()):
        if not mname.startswith("tinyseg") or mod is None:
            continue
        for attr, val in list(vars(mod).items()):
            if id(val) in kernels and kernels[id(val)][1] is val:
                setattr(mod, attr, wrap(kernels[id(val)][0], val))
                patched.append((mod, attr, val))
    try:
        yield calls
    finally:
        for mod, attr, val in patched:
            setattr(mod, attr, val)


def training_step(model, lr: float = LR, weight_decay: float = WEIGHT_DECAY):
    """``(step, optimizer)``: ``step(x, target) -> loss`` does one training step of ``model``
    (zero the gradients, forward, softmax cross-entropy, backward, RMSprop), as training
    does."""
    from tinyseg.losses import softmax_cross_entropy
    from tinyseg.optim import RMSprop

    opt = RMSprop(list(model.named_parameters()), lr=lr, weight_decay=weight_decay)

    def step(x: np.ndarray, target: np.ndarray) -> float:
        opt.zero_grad()
        logits = model.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, target)
        del logits
        model.backward(dlogits)
        del dlogits
        opt.step()
        return loss

    return step, opt


def make_model(preset: str, seed: int = 0, **overrides):
    from tinyseg.tiramisu import PRESETS
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    return PRESETS[preset](rng=np.random.default_rng(seed), **overrides)


def make_batch(batch: int, size: int, num_classes: int = 2, in_channels: int = 3,
               seed: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """A random float32 image batch (N, 3, S, S) and random targets (N, S, S) in [0, K)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, in_channels, size, size), dtype=np.float32)
    t = rng.integers(0, num_classes, (batch, size, size), dtype=np.int64)
    return x, t


def record_step(preset: str, size: int, batch: int = 1, timer: bool = False,
                memory_efficient: bool = True, seed: int = 0) -> dict:
    """Run one training step of ``preset`` on ``batch`` random ``size × size`` images and
    return ``{"preset", "size", "batch", "memory_efficient", "num_parameters", "calls"}``,
    ``calls`` the kernel calls in order (see :func:`recording`)."""
    model = make_model(preset, seed, memory_efficient=memory_efficient)
    step, _ = training_step(model)
    x, t = make_batch(batch, size, model.num_classes)
    calls: List[dict] = []
    with recording(calls, timer=timer):
        step(x, t)
    return {"preset": preset, "size": size, "batch": batch,
            "memory_efficient": memory_efficient, "num_parameters": model.num_parameters(),
            "calls": calls}


# ------------------------------------------------------------------------------------------
# From calls to table rows
# ------------------------------------------------------------------------------------------

def _shape(call: dict, arg: str) -> List[int]:
    return call["args"][arg]["shape"]


def op_name(call: dict) -> str:
    """The row name of a call: ``conv3x3 fwd``, ``convT3x3s2 bwd``, ``bn+relu fwd``..."""
    k = call["kernel"]
    fam, name = k.split(".", 1)
    if name in ("conv2d_forward", "conv2d_backward"):
        kh, kw = _shape(call, "weight")[2:]
        s = call["args"]["stride"]["value"]
        tag = f"conv{kh}x{kw}" + (f"s{s}" if s != 1 else "")
        return f"{tag} {'fwd' if name.endswith('forward') else 'bwd'}"
    if name in ("conv_transpose2d_forward", "conv_transpose2d_backward"):
        kh, kw = _shape(call, "weight")[2:]
        s = call["args"]["stride"]["value"]
        return f"convT{kh}x{kw}s{s} {'fwd' if name.endswith('forward') else 'bwd'}"
    table = {"batchnorm2d_stats": "bn stats", "batchnorm_relu_forward": "bn+relu fwd",
             "batchnorm_relu_backward": "bn+relu bwd", "batchnorm2d_forward": "bn fwd",
             "batchnorm2d_backward": "bn bwd", "maxpool2d_forward": "maxpool fwd",
             "maxpool2d_backward": "maxpool bwd", "softmax_cross_entropy": "softmax CE",
             "rmsprop_step": "rmsprop step", "concat": "concat"}
    return table.get(name, name)


def with_batch(call: dict, batch: int) -> dict:
    """A copy of ``call`` with the batch dimension of every batched argument set to
    ``batch``."""
    call = json.loads(json.dumps(call))
    for name, desc in call["args"].items():
        if name in _BATCHED:
            for d in desc.get("list", [desc]):
                if "shape" in d:
                    d["shape"][0] = batch
        elif name == "x_shape":
            desc["value"][0] = batch
    call.pop("seconds", None)
    call.pop("cpu", None)
    return call


def call_key(call: dict) -> str:
    return json.dumps({"kernel": call["kernel"], "args": call["args"]}, sort_keys=True)


def _merge_rmsprop(calls: List[dict]) -> List[dict]:
    """The optimiser calls ``rmsprop_step`` once per parameter array; the benchmark times one
    whole step over all of them (as ``RMSprop.step`` runs it), so merge them into one call
    with a list of sizes."""
    steps = [c for c in calls if c["kernel"] == "optim.rmsprop_step"]
    if not steps:
        return calls
    first = steps[0]["args"]
    merged = {"kernel": "optim.rmsprop_step",
              "args": {"param": {"list": [c["args"]["param"] for c in steps]},
                       **{k: first[k] for k in ("lr", "alpha", "eps", "weight_decay")}}}
    return [c for c in calls if c["kernel"] != "optim.rmsprop_step"] + [merged]


def group_calls(calls: Sequence[dict], batch: Optional[int] = None
                ) -> "OrderedDict[str, List[Tuple[dict, int]]]":
    """``{op: [(call, count), ...]}``: the distinct calls of each op (first-seen order) and
    how many times one training step makes each; ops in :data:`OP_ORDER` order."""
    calls = _merge_rmsprop(list(calls))
    groups: Dict[str, "OrderedDict[str, list]"] = {}
    for c in calls:
        c = with_batch(c, batch) if batch is not None else {"kernel": c["kernel"],
                                                             "args": c["args"]}
        g = groups.setdefault(op_name(c), OrderedDict())
        key = call_key(c)
        if key in g:
            g[key][1] += 1
        else:
            g[key] = [c, 1]
    order = sorted(groups, key=lambda o: (OP_ORDER.index(o) if o in OP_ORDER else 99, o))
    return OrderedDict((op, [(c, n) for c, n in groups[op].values()]) for op in order)


def shape_label(call: dict) -> str:
    """A short description of a call's shapes for a table cell."""
    a = call["args"]
    op = op_name(call)

    def dims(s):
        return "×".join(str(v) for v in s)
    if op.startswith("conv"):
        n, c, h, w = a["x"]["shape"]
        o = a["weight"]["shape"][1] if op.startswith("convT") else a["weight"]["shape"][0]
        return f"{n}×{c}×{h}×{w} → {o}"
    if op == "concat":
        parts = [d["shape"][1] for d in a["xs"]["list"]]
        n, _, h, w = a["xs"]["list"][0]["shape"]
        return f"{n}×({'+'.join(map(str, parts))})×{h}×{w}"
    if op == "softmax CE":
        return dims(a["logits"]["shape"])
    if op == "rmsprop step":
        sizes = [d["shape"] for d in a["param"]["list"]]
        return f"{len(sizes)} arrays, {sum(int(np.prod(s)) for s in sizes):,} values"
    for name in ("x", "dout"):
        if name in a and "shape" in a[name]:
            return dims(a[name]["shape"])
    return "?"


# ------------------------------------------------------------------------------------------
# Inputs and the three implementations
# ------------------------------------------------------------------------------------------

def _array(desc: dict, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(desc["shape"])
    dtype = np.dtype(desc["dtype"])
    if "base_channels" in desc:  # a channel-slice view, as the dense blocks pass
        n, c, h, w = shape
        base = rng.standard_normal((n, desc["base_channels"], h, w)).astype(dtype)
        return base[:, :c]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def make_inputs(call: dict, seed: int = 0) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(kwargs, aux)``: random arguments of the recorded shapes for ``call``'s kernel, and
    auxiliary arrays some PyTorch operations need (e.g. the pooled input).  The same
    ``seed`` gives the same values."""
    from tinyseg.reference import norm as rnorm, pool as rpool
    rng = np.random.default_rng(seed)
    kind = call["kernel"].split(".", 1)[1]
    a = call["args"]
    kw: Dict[str, Any] = {}
    aux: Dict[str, Any] = {}
    if kind == "rmsprop_step":
        params = [rng.standard_normal(d["shape"]).astype(d["dtype"]) for d in a["param"]["list"]]
        kw["param"] = params
        kw["grad"] = [rng.standard_normal(p.shape).astype(p.dtype) * 1e-2 for p in params]
        kw["square_avg"] = [np.zeros_like(p) for p in params]  # PyTorch's initial state
        for k in ("lr", "alpha", "eps", "weight_decay"):
            kw[k] = a[k]["value"]
        return kw, aux
    for name, desc in a.items():
        if "list" in desc:
            kw[name] = [_array(d, rng) for d in desc["list"]]
        elif "shape" in desc:
            kw[name] = _array(desc, rng)
        else:
            v = desc["value"]
            kw[name] = tuple(v) if isinstance(v, list) else v
    if kind in ("batchnorm_relu_forward", "batchnorm_relu_backward"):
        # statistics consistent with x (what the model passes), and a γ, β that leave about
        # half of the values positive
        kw["mean"], kw["invstd"] = rnorm.batchnorm2d_stats(kw["x"], 1e-5)
        c = kw["x"].shape[1]
        kw["weight"] = (1.0 + 0.1 * rng.standard_normal(c)).astype(kw["x"].dtype)
        kw["bias"] = (0.1 * rng.standard_normal(c)).astype(kw["x"].dtype)
    elif kind == "batchnorm2d_backward":
        kw["mean"], kw["invstd"] = rnorm.batchnorm2d_stats(kw["x"], 1e-5)
    elif kind == "maxpool2d_backward":
        x = rng.standard_normal(tuple(kw["x_shape"])).astype(kw["dout"].dtype)
        kw["argmax"] = rpool.maxpool2d_forward(x, kw["k"])[1]
        aux["x"] = x
    elif kind == "softmax_cross_entropy":
        n, k, h, w = kw["logits"].shape
        kw["target"] = rng.integers(0, k, (n, h, w), dtype=np.int64)
        kw["weight"] = np.ones(k, dtype=np.float64)
    return kw, aux


def concat_reference(xs: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenation along channels written out: ``y[:, C₁+…+C_{k−1} + c] = x_k[:, c]``, one
    channel at a time (what ``np.concatenate(xs, axis=1)`` does in one call)."""
    n, _, h, w = xs[0].shape
    y = np.empty((n, sum(x.shape[1] for x in xs), h, w), dtype=xs[0].dtype)
    start = 0
    for x in xs:
        for c in range(x.shape[1]):
            y[:, start + c] = x[:, c]
        start += x.shape[1]
    return y


def _concat_fast(xs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs, axis=1)


def _rmsprop_all(step_fn):
    """One optimiser step over every parameter array, as ``tinyseg.optim.RMSprop.step``
    runs it (flat views of contiguous arrays)."""
    def run(param, grad, square_avg, lr, alpha, eps, weight_decay):
        for p, g, v in zip(param, grad, square_avg):
            step_fn(p.reshape(-1), g.reshape(-1), v.reshape(-1), lr, alpha, eps, weight_decay)
    return run


def implementations(call: dict) -> Tuple[Callable, Callable]:
    """``(fast, reference)`` for ``call``'s kernel: the numba kernel (``np.concatenate`` for
    the concatenation) and its NumPy twin in ``tinyseg.reference``."""
    fam, name = call["kernel"].split(".", 1)
    if fam == "concat":
        return _concat_fast, concat_reference
    fast = getattr(importlib.import_module(f"tinyseg.kernels.{fam}"), name)
    ref = getattr(importlib.import_module(f"tinyseg.reference.{fam}"), name)
    if name == "rmsprop_step":
        return _rmsprop_all(fast), _rmsprop_all(ref)
    return fast, ref


def copy_inputs(kw: Dict[str, Any]) -> Dict[str, Any]:
    """Deep copies of the array arguments (in-place kernels must start from the same
    state)."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            out[k] = v.copy()
        elif isinstance(v, list) and v and isinstance(v[0], np.ndarray):
            out[k] = [a.copy() for a in v]
        else:
            out[k] = v
    return out


def run_impl(call: dict, fn: Callable, kw: Dict[str, Any]) -> Tuple:
    """Call ``fn(**kw)`` and return its outputs as a tuple (for RMSprop, which works in
    place, the parameters and running averages after the step)."""
    name = call["kernel"].split(".", 1)[1]
    if name == "rmsprop_step":
        fn(**kw)
        return tuple(kw["param"]) + tuple(kw["square_avg"])
    if name == "concat":
        return (fn(kw["xs"]),)
    out = fn(**kw)
    return out if isinstance(out, tuple) else (out,)


def work(call: dict) -> Tuple[Optional[float], float]:
    """``(flops, bytes)`` of one call: floating-point operations where they are meaningful
    (convolutions: 2 per multiply-add; the backward pass computes both the input and the
    weight gradient, twice the forward's), ``None`` otherwise; and the least memory traffic
    (each input read once, each output written once), for the memory-bound kernels."""
    a = call["args"]
    name = call["kernel"].split(".", 1)[1]
    size = lambda d: int(np.prod(d["shape"]))  # noqa: E731
    item = lambda d: np.dtype(d["dtype"]).itemsize  # noqa: E731
    if name in ("conv2d_forward", "conv2d_backward"):
        n, c, h, w = a["x"]["shape"]
        o, _, kh, kw_ = a["weight"]["shape"]
        s, p = a["stride"]["value"], a["padding"]["value"]
        ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw_) // s + 1
        f = 2.0 * n * o * ho * wo * c * kh * kw_
        e = item(a["x"])
        by = e * (size(a["x"]) + size(a["weight"]) + n * o * ho * wo)
        return (f, by) if name.endswith("forward") else (2 * f, 2 * by)
    if name in ("conv_transpose2d_forward", "conv_transpose2d_backward"):
        n, c, h, w = a["x"]["shape"]
        _, o, kh, kw_ = a["weight"]["shape"]
        s, p, op = a["stride"]["value"], a["padding"]["value"], a["output_padding"]["value"]
        ho, wo = (h - 1) * s - 2 * p + kh + op, (w - 1) * s - 2 * p + kw_ + op
        f = 2.0 * n * c * h * w * o * kh * kw_
        e = item(a["x"])
        by = e * (size(a["x"]) + size(a["weight"]) + n * o * ho * wo)
        return (f, by) if name.endswith("forward") else (2 * f, 2 * by)
    if name == "rmsprop_step":
        vals = sum(size(d) for d in a["param"]["list"])
        return None, 5.0 * 4 * vals  # read θ, g, v; write θ, v
    if name == "concat":
        out = sum(size(d) for d in a["xs"]["list"])
        return None, 2.0 * item(a["xs"]["list"][0]) * out
    if name == "softmax_cross_entropy":
        return None, 2.0 * item(a["logits"]) * size(a["logits"]) + 8.0 * size(a["target"])
    if name == "maxpool2d_forward":
        k = a["k"]["value"]
        m = size(a["x"])
        return None, item(a["x"]) * m + (item(a["x"]) + 1) * m / (k * k)
    if name == "maxpool2d_backward":
        n_out = size(a["dout"])
        return None, (item(a["dout"]) + 1) * n_out + item(a["dout"]) * int(
            np.prod(a["x_shape"]["value"]))
    m = size(a["x"])
    e = item(a["x"])
    if name == "batchnorm2d_stats":
        return None, e * m
    if name in ("batchnorm_relu_forward", "batchnorm2d_forward"):
        return None, 2.0 * e * m
    return None, 3.0 * e * m  # the backward passes: read dout and x, write dx


# ------------------------------------------------------------------------------------------
# PyTorch: the operation that does the same job
# ------------------------------------------------------------------------------------------

def torch_callable(torch, call: dict, kw: Dict[str, Any], aux: Dict[str, Any]
                   ) -> Tuple[Callable[[], Any], Callable[[Any], Tuple]]:
    """``(fn, outputs)``: ``fn()`` runs PyTorch's version of ``call`` on tensors made from
    ``kw`` (contiguous copies, as PyTorch's own model would hold them); ``outputs(result)``
    turns its result into a tuple of NumPy arrays in the order of the tinyseg kernel's
    outputs, ``None`` where PyTorch has no counterpart (e.g. max-pool arg-max encodings)."""
    F = torch.nn.functional
    aten = torch.ops.aten
    name = call["kernel"].split(".", 1)[1]

    def T(v):
        return torch.from_numpy(np.ascontiguousarray(v))

    def np_(*ts):
        return tuple(None if t is None else (t.detach().numpy() if hasattr(t, "detach")
                                             else np.asarray(t)) for t in ts)

    if name == "conv2d_forward":
        x, w = T(kw["x"]), T(kw["weight"])
        b = None if kw["bias"] is None else T(kw["bias"])
        s, p = kw["stride"], kw["padding"]
        return (lambda: F.conv2d(x, w, b, s, p)), (lambda r: np_(r))
    if name == "conv2d_backward":
        d, x, w = T(kw["dout"]), T(kw["x"]), T(kw["weight"])
        s, p = kw["stride"], kw["padding"]
        o = w.shape[0]
        return (lambda: aten.convolution_backward(d, x, w, [o], [s, s], [p, p], [1, 1], False,
                                                  [0, 0], 1, [True, True, True])), \
            (lambda r: np_(*r))
    if name == "conv_transpose2d_forward":
        x, w = T(kw["x"]), T(kw["weight"])
        b = None if kw["bias"] is None else T(kw["bias"])
        s, p, op = kw["stride"], kw["padding"], kw["output_padding"]
        return (lambda: F.conv_transpose2d(x, w, b, s, p, op)), (lambda r: np_(r))
    if name == "conv_transpose2d_backward":
        d, x, w = T(kw["dout"]), T(kw["x"]), T(kw["weight"])
        s, p, op = kw["stride"], kw["padding"], kw["output_padding"]
        o = w.shape[1]
        return (lambda: aten.convolution_backward(d, x, w, [o], [s, s], [p, p], [1, 1], True,
                                                  [op, op], 1, [True, True, True])), \
            (lambda r: np_(*r))
    if name == "batchnorm2d_stats":
        x, eps = T(kw["x"]), kw["eps"]

        def stats():
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            return mean, torch.rsqrt(var + eps)
        return stats, (lambda r: np_(*r))
    if name == "batchnorm_relu_forward":
        x, w, b = T(kw["x"]), T(kw["weight"]), T(kw["bias"])
        eps = 1e-5
        mean = T(kw["mean"])
        var = T((1.0 / kw["invstd"].astype(np.float64) ** 2 - eps).astype(kw["x"].dtype))
        return (lambda: torch.relu_(F.batch_norm(x, mean, var, w, b, False, 0.0, eps))), \
            (lambda r: np_(r))
    if name == "batchnorm_relu_backward":
        d, x, w, b = T(kw["dout"]), T(kw["x"]), T(kw["weight"]), T(kw["bias"])
        mean, invstd = T(kw["mean"]), T(kw["invstd"])
        eps = 1e-5
        var = T((1.0 / kw["invstd"].astype(np.float64) ** 2 - eps).astype(kw["x"].dtype))
        y = torch.relu(F.batch_norm(x, mean, var, w, b, False, 0.0, eps))  # kept by autograd

        def bwd():
            g = aten.threshold_backward(d, y, 0)
            return aten.native_batch_norm_backward(g, x, w, None, None, mean, invstd, True,
                                                   eps, [True, True, True])
        return bwd, (lambda r: np_(*r))
    if name == "batchnorm2d_forward":
        x, w, b, eps = T(kw["x"]), T(kw["weight"]), T(kw["bias"]), kw["eps"]
        return (lambda: aten.native_batch_norm(x, w, b, None, None, True, 0.1, eps)), \
            (lambda r: np_(*r))
    if name == "batchnorm2d_backward":
        d, x, w = T(kw["dout"]), T(kw["x"]), T(kw["weight"])
        mean, invstd = T(kw["mean"]), T(kw["invstd"])
        return (lambda: aten.native_batch_norm_backward(d, x, w, None, None, mean, invstd, True,
                                                        1e-5, [True, True, True])), \
            (lambda r: np_(*r))
    if name == "maxpool2d_forward":
        x, k = T(kw["x"]), kw["k"]
        return (lambda: aten.max_pool2d_with_indices(x, [k, k], [k, k])), \
            (lambda r: (np_(r[0])[0], None))
    if name == "maxpool2d_backward":
        d, k = T(kw["dout"]), kw["k"]
        x = T(aux["x"])
        _, idx = aten.max_pool2d_with_indices(x, [k, k], [k, k])
        return (lambda: aten.max_pool2d_with_indices_backward(d, x, [k, k], [k, k], [0, 0],
                                                              [1, 1], False, idx)), \
            (lambda r: np_(r))
    if name == "softmax_cross_entropy":
        logits, t = T(kw["logits"]), T(kw["target"])

        def ce():
            z = logits.detach().requires_grad_()
            loss = F.cross_entropy(z, t)
            loss.backward()
            return loss, z.grad
        return ce, (lambda r: (r[0].detach().item(), r[1].numpy()))
    if name == "rmsprop_step":
        params = [torch.nn.Parameter(T(p).clone()) for p in kw["param"]]
        for p, g in zip(params, kw["grad"]):
            p.grad = T(g).clone()
        opt = torch.optim.RMSprop(params, lr=kw["lr"], alpha=kw["alpha"], eps=kw["eps"],
                                  weight_decay=kw["weight_decay"])

        def step():
            opt.step()
            return params
        return step, (lambda r: np_(*r) + tuple(opt.state[p]["square_avg"].numpy()
                                                 for p in params))
    if name == "concat":
        xs = [T(x) for x in kw["xs"]]
        return (lambda: torch.cat(xs, 1)), (lambda r: np_(r))
    raise ValueError(f"no PyTorch counterpart for {call['kernel']}")
