"""Write ``tests/golden/pytorch_outputs.npz``: PyTorch's answers, saved, for tests without it.

``tests/test_golden.py`` holds every tinyseg layer (its numba kernels), every NumPy
reference and a small Tiramisu to these outputs, so that a fresh clone without PyTorch
still checks the library against an independent implementation, not only kernel against
reference (two things written by the same hand could share a mistake).  The live PyTorch
comparisons (``tests/test_layers_*.py``, ``tests/test_tiramisu_torch.py``) do the same
when torch is installed, on more shapes.

Each case is stored under ``<case>/<array>``: its inputs (drawn here from a seeded
generator and saved, so the test does not depend on NumPy's random streams), and PyTorch's
outputs and gradients, all float64.  Run from the repository root, with PyTorch installed
(``pip install torch==2.13.0``)::

    python tests/golden/make_pytorch_outputs.py

It rewrites the file only when an array changed (``--check`` only compares and exits 1 on
a difference).  The file records the torch version that wrote it.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("pytorch_outputs.npz")
sys.path.insert(0, str(REPO))      # benchmarks/ (the PyTorch Tiramisu) is not installed


def t(a):
    return torch.from_numpy(np.array(a, dtype=np.float64)).requires_grad_()


def conv_cases(rng, out):
    # (name, input shape, weight shape, stride, padding): the convolutions the Tiramisu uses
    # (3x3 same, 1x1, the first conv) and a strided one with an odd size
    for name, xs, ws, s, p in [("conv3x3", (2, 3, 7, 6), (4, 3, 3, 3), 1, 1),
                               ("conv1x1", (2, 5, 4, 5), (3, 5, 1, 1), 1, 0),
                               ("conv3x3_s2", (1, 2, 9, 8), (3, 2, 3, 3), 2, 1)]:
        x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
        xt, wt, bt = t(x), t(w), t(b)
        y = F.conv2d(xt, wt, bt, stride=s, padding=p)
        dy = rng.standard_normal(tuple(y.shape))
        y.backward(torch.from_numpy(dy))
        out[name] = dict(x=x, weight=w, bias=b, stride=s, padding=p, y=y.detach().numpy(),
                         dy=dy, dx=xt.grad.numpy(), dweight=wt.grad.numpy(),
                         dbias=bt.grad.numpy())
    # the Tiramisu's transition up: 3x3, stride 2, no padding (H -> 2H + 1); and one with
    # padding and output_padding
    for name, xs, ws, s, p, op in [("convT3x3_s2", (2, 4, 3, 4), (4, 3, 3, 3), 2, 0, 0),
                                   ("convT3x3_s2_p1_op1", (1, 3, 4, 3), (3, 2, 3, 3), 2, 1, 1)]:
        x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[1])
        xt, wt, bt = t(x), t(w), t(b)
        y = F.conv_transpose2d(xt, wt, bt, stride=s, padding=p, output_padding=op)
        dy = rng.standard_normal(tuple(y.shape))
        y.backward(torch.from_numpy(dy))
        out[name] = dict(x=x, weight=w, bias=b, stride=s, padding=p, output_padding=op,
                         y=y.detach().numpy(), dy=dy, dx=xt.grad.numpy(),
                         dweight=wt.grad.numpy(), dbias=bt.grad.numpy())


def batchnorm_case(rng, out):
    C = 4
    x = rng.standard_normal((3, C, 5, 4)) * 2.0 + 0.5
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    bn = torch.nn.BatchNorm2d(C, dtype=torch.float64)       # momentum 0.1, eps 1e-5
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(w))
        bn.bias.copy_(torch.from_numpy(b))
    xt = t(x)
    y = bn(xt)                                              # training mode: batch statistics
    dy = rng.standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(dy))
    bn.eval()
    x_eval = rng.standard_normal((2, C, 3, 3))
    with torch.no_grad():
        y_eval = bn(torch.from_numpy(x_eval)).numpy()
    out["batchnorm"] = dict(x=x, weight=w, bias=b, y=y.detach().numpy(), dy=dy,
                            dx=xt.grad.numpy(), dweight=bn.weight.grad.numpy(),
                            dbias=bn.bias.grad.numpy(),
                            running_mean=bn.running_mean.numpy(),
                            running_var=bn.running_var.numpy(), x_eval=x_eval, y_eval=y_eval)


def relu_pool_cases(rng, out):
    x = rng.standard_normal((2, 3, 4, 5))
    xt = t(x)
    y = F.relu(xt)
    dy = rng.standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(dy))
    out["relu"] = dict(x=x, y=y.detach().numpy(), dy=dy, dx=xt.grad.numpy())
    x = rng.standard_normal((2, 3, 6, 8))                   # no ties: the argmax is unique
    xt = t(x)
    y = F.max_pool2d(xt, 2)
    dy = rng.standard_normal(tuple(y.shape))
    y.backward(torch.from_numpy(dy))
    out["maxpool"] = dict(x=x, y=y.detach().numpy(), dy=dy, dx=xt.grad.numpy())


def loss_cases(rng, out):
    logits = rng.standard_normal((2, 3, 4, 5)) * 3.0
    target = rng.integers(0, 3, (2, 4, 5))
    target[0, 0, :3] = 255                                  # ignored pixels
    weight = np.array([0.5, 2.0, 1.0])
    for name, w, ignore in [("cross_entropy", None, -100),
                            ("cross_entropy_weighted_ignore", weight, 255)]:
        lt = t(logits)
        tt = torch.from_numpy(np.where(target == 255, ignore if ignore != -100 else 0, target))
        loss = F.cross_entropy(lt, tt, weight=None if w is None else torch.from_numpy(w),
                               ignore_index=ignore)
        loss.backward()
        out[name] = dict(logits=logits, target=tt.numpy(),
                         weight=np.ones(3) if w is None else w,
                         ignore_index=ignore, loss=np.array(loss.item()),
                         dlogits=lt.grad.numpy())


def rmsprop_case(rng, out):
    p0 = rng.standard_normal((3, 4))
    grads = rng.standard_normal((3, 3, 4))                  # three steps
    hyper = dict(lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=1e-2)
    p = torch.from_numpy(p0.copy()).requires_grad_()
    opt = torch.optim.RMSprop([p], **hyper)
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    out["rmsprop"] = dict(param=p0, grads=grads, **{k: np.array(v) for k, v in hyper.items()},
                          param_after=p.detach().numpy(),
                          square_avg_after=opt.state[p]["square_avg"].numpy())


def tiramisu_case(rng, out):
    from benchmarks.torch_tiramisu import from_tinyseg
    from tinyseg.tiramisu import Tiramisu

    config = dict(in_channels=3, num_classes=2, first_filters=6, growth_rate=3,
                  layers=[2, 2, 1, 2, 2], pools=2, dropout=0.0)
    model = Tiramisu(**config, rng=np.random.default_rng(7), dtype=np.float64)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    net = from_tinyseg(model)
    net.train()
    x = rng.standard_normal((2, 3, 12, 10))                 # not a multiple of 4: padded
    dy = rng.standard_normal((2, 2, 12, 10))
    xt = t(x)
    y = net(xt)
    y.backward(torch.from_numpy(dy))
    case = dict(config=json.dumps(config), x=x, dy=dy, y=y.detach().numpy(), dx=xt.grad.numpy())
    for k, v in state.items():
        case["init." + k] = v
    for k, p in net.named_parameters():
        case["grad." + k] = p.grad.numpy()
    for k, v in net.state_dict().items():
        if "running" in k:
            case["after." + k] = v.numpy()
    out["tiramisu"] = case


def build() -> dict:
    rng = np.random.default_rng(20261128)
    out: dict = {}
    conv_cases(rng, out)
    batchnorm_case(rng, out)
    relu_pool_cases(rng, out)
    loss_cases(rng, out)
    rmsprop_case(rng, out)
    tiramisu_case(rng, out)
    flat = {f"{case}/{k}": np.asarray(v) for case, arrays in out.items()
            for k, v in arrays.items()}
    flat["__meta__"] = np.array(json.dumps({"torch": torch.__version__,
                                            "numpy": np.__version__,
                                            "script": "tests/golden/make_pytorch_outputs.py"}))
    return flat


def same(a: dict, b: dict) -> bool:
    keys = set(a) - {"__meta__"}
    return keys == set(b) - {"__meta__"} and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and np.array_equal(a[k], b[k]) for k in keys)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="only compare with the saved file; exit 1 if they differ")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    new = build()
    old = dict(np.load(OUT)) if OUT.exists() else None
    if old is not None and same(old, new):
        print(f"{OUT.relative_to(REPO)}: unchanged ({len(new) - 1} arrays)")
        return 0
    if args.check:
        print(f"{OUT.relative_to(REPO)}: differs from what this torch writes", file=sys.stderr)
        return 1
    buf = io.BytesIO()
    np.savez_compressed(buf, **new)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(REPO)}: {len(new) - 1} arrays, {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
