"""tinyseg against PyTorch's saved answers (``tests/golden/pytorch_outputs.npz``), no torch needed.

The file holds, for each case, inputs and PyTorch 2.13's outputs and gradients in float64
(``tests/golden/make_pytorch_outputs.py`` writes it).  Each case is run three ways: the
layer (its numba kernels) in float64, the same layer in float32, and the NumPy reference
(``tinyseg.reference``) in float64.  Tolerances, relative to the largest magnitude of the
PyTorch array compared with:

* float64: ``TOL64 = 1e-10`` (the sums differ only in their order);
* float32: ``TOL32 = 1e-5`` (about 80 float32 roundings: inputs, weights, every product).

So a fresh clone without PyTorch still checks every op against an implementation written
by other hands, not only the kernels against references that share their author.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from tinyseg import BatchNorm2d, Conv2d, ConvTranspose2d, MaxPool2d, ReLU
from tinyseg.losses import softmax_cross_entropy
from tinyseg.optim import RMSprop
from tinyseg.reference import conv as ref_conv, loss as ref_loss, norm as ref_norm
from tinyseg.reference import optim as ref_optim, pool as ref_pool
from tinyseg.tiramisu import Tiramisu

GOLDEN = Path(__file__).with_name("golden") / "pytorch_outputs.npz"
TOL64, TOL32 = 1e-10, 1e-5
DTYPES = [(np.float64, TOL64), (np.float32, TOL32)]


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        arrays = {k: f[k] for k in f.files}
    cases = {}
    for key, v in arrays.items():
        if key != "__meta__":
            case, name = key.split("/", 1)
            cases.setdefault(case, {})[name] = v
    return cases


def close(ours, theirs, tol, what="", scale=None):
    """max|ours − theirs| ≤ tol · scale (default: the largest magnitude of ``theirs``)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    scale = np.abs(theirs).max() if scale is None else scale
    err = np.abs(ours - theirs).max() / max(scale, 1e-300)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def grads(layer):
    return {name: g for name, _, g in layer.named_parameters()}


def test_the_file_is_what_its_script_says():
    with np.load(GOLDEN) as f:
        meta = json.loads(str(f["__meta__"]))
        assert meta["torch"].startswith("2.13.0")
        kinds = {f[k].dtype for k in f.files if f[k].dtype.kind == "f"}
        assert kinds == {np.dtype(np.float64)}      # every float saved at full precision
        assert len(f.files) > 200


@pytest.mark.parametrize("case", ["conv3x3", "conv1x1", "conv3x3_s2"])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_conv2d_layer(golden, case, dtype, tol):
    g = golden[case]
    O, C, k, _ = g["weight"].shape
    conv = Conv2d(C, O, k, stride=int(g["stride"]), padding=int(g["padding"]), dtype=dtype)
    conv.load_state_dict({"weight": g["weight"], "bias": g["bias"]})
    close(conv.forward(g["x"].astype(dtype)), g["y"], tol, "y")
    close(conv.backward(g["dy"].astype(dtype)), g["dx"], tol, "dx")
    close(grads(conv)["weight"], g["dweight"], tol, "dweight")
    close(grads(conv)["bias"], g["dbias"], tol, "dbias")


@pytest.mark.parametrize("case", ["conv3x3", "conv1x1", "conv3x3_s2"])
def test_conv2d_reference(golden, case):
    g = golden[case]
    s, p = int(g["stride"]), int(g["padding"])
    close(ref_conv.conv2d_forward(g["x"], g["weight"], g["bias"], s, p), g["y"], TOL64, "y")
    dx, dw, db = ref_conv.conv2d_backward(g["dy"], g["x"], g["weight"], s, p)
    for ours, name in ((dx, "dx"), (dw, "dweight"), (db, "dbias")):
        close(ours, g[name], TOL64, name)


@pytest.mark.parametrize("case", ["convT3x3_s2", "convT3x3_s2_p1_op1"])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_conv_transpose2d_layer(golden, case, dtype, tol):
    g = golden[case]
    C, O, k, _ = g["weight"].shape
    up = ConvTranspose2d(C, O, k, stride=int(g["stride"]), padding=int(g["padding"]),
                         output_padding=int(g["output_padding"]), dtype=dtype)
    up.load_state_dict({"weight": g["weight"], "bias": g["bias"]})
    close(up.forward(g["x"].astype(dtype)), g["y"], tol, "y")
    close(up.backward(g["dy"].astype(dtype)), g["dx"], tol, "dx")
    close(grads(up)["weight"], g["dweight"], tol, "dweight")
    close(grads(up)["bias"], g["dbias"], tol, "dbias")


@pytest.mark.parametrize("case", ["convT3x3_s2", "convT3x3_s2_p1_op1"])
def test_conv_transpose2d_reference(golden, case):
    g = golden[case]
    args = int(g["stride"]), int(g["padding"]), int(g["output_padding"])
    close(ref_conv.conv_transpose2d_forward(g["x"], g["weight"], g["bias"], *args), g["y"],
          TOL64, "y")
    dx, dw, db = ref_conv.conv_transpose2d_backward(g["dy"], g["x"], g["weight"], *args)
    for ours, name in ((dx, "dx"), (dw, "dweight"), (db, "dbias")):
        close(ours, g[name], TOL64, name)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_batchnorm_layer(golden, dtype, tol):
    """Training step (batch statistics, running averages with momentum 0.1 and the unbiased
    variance), then eval mode on other inputs with the running statistics."""
    g = golden["batchnorm"]
    bn = BatchNorm2d(len(g["weight"]), dtype=dtype)
    bn.load_state_dict({**bn.state_dict(), "weight": g["weight"], "bias": g["bias"]})
    close(bn.forward(g["x"].astype(dtype)), g["y"], tol, "y")
    close(bn.backward(g["dy"].astype(dtype)), g["dx"], tol, "dx")
    close(grads(bn)["weight"], g["dweight"], tol, "dweight")
    close(grads(bn)["bias"], g["dbias"], tol, "dbias")
    state = bn.state_dict()
    close(state["running_mean"], g["running_mean"], tol, "running_mean")
    close(state["running_var"], g["running_var"], tol, "running_var")
    bn.eval()
    close(bn.forward(g["x_eval"].astype(dtype)), g["y_eval"], tol, "y_eval")


def test_batchnorm_reference(golden):
    g = golden["batchnorm"]
    y, mean, invstd = ref_norm.batchnorm2d_forward(g["x"], g["weight"], g["bias"], 1e-5)
    close(y, g["y"], TOL64, "y")
    dx, dw, db = ref_norm.batchnorm2d_backward(g["dy"], g["x"], mean, invstd, g["weight"])
    for ours, name in ((dx, "dx"), (dw, "dweight"), (db, "dbias")):
        close(ours, g[name], TOL64, name)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_relu_and_maxpool_layers(golden, dtype, tol):
    for case, layer in (("relu", ReLU()), ("maxpool", MaxPool2d(2))):
        g = golden[case]
        close(layer.forward(g["x"].astype(dtype)), g["y"], tol, case + " y")
        close(layer.backward(g["dy"].astype(dtype)), g["dx"], tol, case + " dx")


def test_maxpool_reference(golden):
    g = golden["maxpool"]
    y, argmax = ref_pool.maxpool2d_forward(g["x"], 2)
    close(y, g["y"], TOL64, "y")
    close(ref_pool.maxpool2d_backward(g["dy"], argmax, g["x"].shape, 2), g["dx"], TOL64, "dx")


@pytest.mark.parametrize("case", ["cross_entropy", "cross_entropy_weighted_ignore"])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_softmax_cross_entropy(golden, case, dtype, tol):
    g = golden[case]
    ignore = int(g["ignore_index"])
    loss, dlogits = softmax_cross_entropy(g["logits"].astype(dtype), g["target"],
                                          weight=g["weight"],
                                          ignore_index=None if ignore == -100 else ignore)
    close(loss, g["loss"], tol, "loss")
    close(dlogits, g["dlogits"], tol, "dlogits")
    loss, dlogits = ref_loss.softmax_cross_entropy(g["logits"], g["target"], g["weight"],
                                                   ignore)
    close(loss, g["loss"], TOL64, "reference loss")
    close(dlogits, g["dlogits"], TOL64, "reference dlogits")


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_rmsprop_three_steps(golden, dtype, tol):
    g = golden["rmsprop"]
    hyper = {k: float(g[k]) for k in ("lr", "alpha", "eps", "weight_decay")}
    param = g["param"].astype(dtype)
    grad = np.zeros_like(param)
    opt = RMSprop([("w", param, grad)], **hyper)
    ref_param, ref_square = g["param"].copy(), np.zeros_like(g["param"])
    for step in g["grads"]:
        grad[...] = step
        opt.step()
        ref_optim.rmsprop_step(ref_param, step, ref_square, **hyper)
    close(param, g["param_after"], tol, "param")
    close(opt.state_dict()["square_avg.w"], g["square_avg_after"], tol, "square_avg")
    close(ref_param, g["param_after"], TOL64, "reference param")
    close(ref_square, g["square_avg_after"], TOL64, "reference square_avg")


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_tiramisu_training_step(golden, memory_efficient):
    """A small Tiramisu (2 pools, growth 3) on a 12×10 input (padded to 12×12 inside), train
    mode: logits, the input gradient, every parameter gradient and the running statistics
    after the step, float64."""
    g = golden["tiramisu"]
    model = Tiramisu(**json.loads(str(g["config"])), memory_efficient=memory_efficient,
                     dtype=np.float64)
    model.load_state_dict({k[len("init."):]: v for k, v in g.items() if k.startswith("init.")})
    model.train()
    close(model.forward(g["x"]), g["y"], TOL64, "logits")
    close(model.backward(g["dy"]), g["dx"], TOL64, "dx")
    ours = grads(model)
    theirs = {k[len("grad."):]: v for k, v in g.items() if k.startswith("grad.")}
    assert set(ours) == set(theirs)
    scale = max(np.abs(v).max() for v in theirs.values())
    for name, v in theirs.items():   # relative to the model's largest gradient: the biases
        close(ours[name], v, TOL64, name, scale)   # before a batch norm get only rounding
    state = model.state_dict()
    after = {k[len("after."):]: v for k, v in g.items() if k.startswith("after.")}
    assert after
    for name, v in after.items():
        close(state[name], v, TOL64, name)


def test_the_saved_file_is_what_its_script_writes(torch):
    """Where PyTorch is installed (CI), the script's arrays today are the saved ones: the
    file cannot drift from the code that is said to make it. Integers must be equal, and
    every float64 array within 1e-12 of its largest value: PyTorch's outputs may differ in
    the last bits on another processor, where BLAS sums in another order (review,
    2026-11-28)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_pytorch_outputs",
                                                  GOLDEN.with_name("make_pytorch_outputs.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with np.load(GOLDEN) as f:
        saved = {k: f[k] for k in f.files if k != "__meta__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as the script runs it
    try:
        now = {k: v for k, v in script.build().items() if k != "__meta__"}
    finally:
        torch.set_num_threads(threads)
    assert set(now) == set(saved)
    for k, v in saved.items():
        assert now[k].shape == v.shape and now[k].dtype == v.dtype, k
        if v.dtype.kind == "f":
            close(now[k], v, 1e-12, k)
        else:
            np.testing.assert_array_equal(now[k], v, err_msg=k)
