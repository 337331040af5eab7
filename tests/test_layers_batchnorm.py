"""BatchNorm2d layer: finite differences (train and eval), running statistics by hand,
PyTorch parity, errors; recomputed running statistics."""
import numpy as np
import pytest

from tinyseg.gradcheck import gradcheck
from tinyseg.layers.activation import Dropout
from tinyseg.layers.base import Layer
from tinyseg.layers.batchnorm import BatchNorm2d, recompute_running_stats

GRAD_TOL = 1e-6  # gradcheck relative error bound, float64
# PyTorch parity: float64 to 1e-10 relative; float32 to 1e-5 relative (different summation
# order and accumulation precision: PyTorch's float32 path accumulates partly in float32).
TORCH_TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


def randomised(layer, rng):
    """Non-trivial γ, β and running statistics (all float64 in tests)."""
    c = layer.num_features
    layer.params["weight"][...] = rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)
    layer.params["bias"][...] = rng.standard_normal(c)
    layer.buffers["running_mean"][...] = rng.standard_normal(c)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 3.0, c)
    return layer


def test_defaults_and_state_dict():
    bn = BatchNorm2d(3)
    assert bn.eps == 1e-5 and bn.momentum == 0.1 and bn.training
    np.testing.assert_array_equal(bn.params["weight"], np.ones(3, np.float32))
    np.testing.assert_array_equal(bn.params["bias"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(bn.buffers["running_mean"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(bn.buffers["running_var"], np.ones(3, np.float32))
    assert bn.buffers["num_batches_tracked"].dtype == np.int64
    assert bn.buffers["num_batches_tracked"].shape == ()
    assert sorted(bn.state_dict()) == ["bias", "num_batches_tracked", "running_mean",
                                       "running_var", "weight"]
    assert bn.num_parameters() == 6
    for dtype in (np.float32, np.float64):
        layer = BatchNorm2d(2, dtype=dtype)
        for arr in (*layer.params.values(), *layer.grads.values(),
                    layer.buffers["running_mean"], layer.buffers["running_var"]):
            assert arr.dtype == np.dtype(dtype)
        x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(dtype)
        assert layer.forward(x).dtype == np.dtype(dtype)
        assert layer.backward(x).dtype == np.dtype(dtype)


def test_gradcheck_train_mode(rng):
    bn = randomised(BatchNorm2d(4, dtype=np.float64), rng)
    x = 0.7 + 1.5 * rng.standard_normal((3, 4, 3, 5))
    errors = gradcheck(bn, x, rng=rng)
    assert set(errors) == {"input", "weight", "bias"}
    for name, err in errors.items():
        assert err < GRAD_TOL, (name, err)


def test_gradcheck_eval_mode(rng):
    bn = randomised(BatchNorm2d(3, dtype=np.float64), rng).eval()
    x = rng.standard_normal((2, 3, 4, 4))
    errors = gradcheck(bn, x, rng=rng)
    for name, err in errors.items():
        assert err < GRAD_TOL, (name, err)


def test_train_forward_normalises(rng):
    bn = BatchNorm2d(3, dtype=np.float64)
    x = 5.0 + 3.0 * rng.standard_normal((4, 3, 6, 6))
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-4)  # ε = 1e-5 shrinks it


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_running_stats_by_hand(rng, momentum):
    bn = BatchNorm2d(2, momentum=momentum, dtype=np.float64)
    rm, rv = np.zeros(2), np.ones(2)
    for step in range(1, 4):
        x = rng.normal(step, step, (3, 2, 2, 5))
        bn.forward(x)
        m = 3 * 2 * 5
        mu = x.mean(axis=(0, 2, 3))
        var_unbiased = np.sum((x - mu[None, :, None, None]) ** 2, axis=(0, 2, 3)) / (m - 1)
        f = 1.0 / step if momentum is None else momentum
        rm = (1 - f) * rm + f * mu
        rv = (1 - f) * rv + f * var_unbiased
        np.testing.assert_allclose(bn.buffers["running_mean"], rm, rtol=1e-12)
        np.testing.assert_allclose(bn.buffers["running_var"], rv, rtol=1e-9)
        assert int(bn.buffers["num_batches_tracked"]) == step
    # eval uses (and does not change) the running statistics
    bn.eval()
    x = rng.standard_normal((2, 2, 3, 3))
    y = bn.forward(x)
    expected = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-9)
    np.testing.assert_allclose(bn.buffers["running_mean"], rm, rtol=1e-12)
    assert int(bn.buffers["num_batches_tracked"]) == 3


def test_gradients_accumulate(rng):
    bn = randomised(BatchNorm2d(2, dtype=np.float64), rng)
    x = rng.standard_normal((2, 2, 3, 3))
    d = rng.standard_normal(x.shape)
    bn.forward(x)
    bn.backward(d)
    once = {k: g.copy() for k, g in bn.grads.items()}
    bn.forward(x)
    bn.backward(d)
    for k in once:
        np.testing.assert_allclose(bn.grads[k], 2 * once[k], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_torch(torch, rng, dtype, momentum):
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    tol = TORCH_TOL[dtype]
    c = 5
    ours = BatchNorm2d(c, momentum=momentum, dtype=dtype)
    ref = torch.nn.BatchNorm2d(c, momentum=momentum, dtype=tdtype)
    w = (rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    ours.params["weight"][...] = w
    ours.params["bias"][...] = b
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.bias.copy_(torch.from_numpy(b))

    for step in range(3):  # gradients accumulate in both
        x = (rng.normal(step - 1.0, 1.0 + step, (4, c, 5, 6))).astype(dtype)
        d = rng.standard_normal(x.shape).astype(dtype)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = ref(tx)
        ty.backward(torch.from_numpy(d))
        y = ours.forward(x)
        dx = ours.backward(d)
        np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
        np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
        np.testing.assert_allclose(ours.grads["weight"], ref.weight.grad.numpy(), **tol)
        np.testing.assert_allclose(ours.grads["bias"], ref.bias.grad.numpy(), **tol)
        np.testing.assert_allclose(ours.buffers["running_mean"], ref.running_mean.numpy(), **tol)
        np.testing.assert_allclose(ours.buffers["running_var"], ref.running_var.numpy(), **tol)
        assert int(ours.buffers["num_batches_tracked"]) == int(ref.num_batches_tracked)

    ours.eval()
    ref.eval()
    ours.zero_grad()
    ref.zero_grad()
    x = rng.standard_normal((2, c, 4, 3)).astype(dtype)
    d = rng.standard_normal(x.shape).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = ref(tx)
    ty.backward(torch.from_numpy(d))
    np.testing.assert_allclose(ours.forward(x), ty.detach().numpy(), **tol)
    np.testing.assert_allclose(ours.backward(d), tx.grad.numpy(), **tol)
    np.testing.assert_allclose(ours.grads["weight"], ref.weight.grad.numpy(), **tol)
    np.testing.assert_allclose(ours.grads["bias"], ref.bias.grad.numpy(), **tol)


def test_loads_torch_state_dict(torch, rng):
    ref = torch.nn.BatchNorm2d(3)
    ref.train()
    for _ in range(2):
        ref(torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    bn = BatchNorm2d(3)
    bn.load_state_dict(state)  # strict: same names, including num_batches_tracked
    for k, v in state.items():
        np.testing.assert_array_equal(bn.state_dict()[k], v)
    assert int(bn.buffers["num_batches_tracked"]) == 2


def test_backward_uses_mode_of_forward(rng):
    """forward in train mode, switch to eval, backward: still the training-mode gradient."""
    bn = randomised(BatchNorm2d(2, dtype=np.float64), rng)
    x = rng.standard_normal((2, 2, 3, 3))
    d = rng.standard_normal(x.shape)
    bn.forward(x)
    dx_train = bn.backward(d)
    bn.forward(x)
    bn.eval()
    np.testing.assert_array_equal(bn.backward(d), dx_train)
    # the training-mode dx sums to 0 per channel (shift invariance); eval-mode dx does not
    np.testing.assert_allclose(dx_train.sum(axis=(0, 2, 3)), 0.0, atol=1e-12)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 4), np.float32), r"BatchNorm2d: expected input of shape \(N, C, H, W\), "
                                      r"got shape \(2, 3, 4\)"),
    (np.zeros((2, 4, 3, 3), np.float32), r"BatchNorm2d: expected 3 input channels, got shape "
                                         r"\(2, 4, 3, 3\)"),
    (np.zeros((2, 3, 3, 3), np.int64), r"BatchNorm2d: expected a float32 or float64 array, "
                                       r"got dtype int64"),
    (np.zeros((2, 3, 3, 3), np.float64), r"BatchNorm2d: expected a float32 input .*got dtype "
                                         r"float64 \(shape \(2, 3, 3, 3\)\)"),
    (np.zeros((1, 3, 1, 1), np.float32), r"BatchNorm2d: expected more than 1 value per channel "
                                         r"when training, got input shape \(1, 3, 1, 1\)"),
    ([[1.0]], r"BatchNorm2d: expected a numpy.ndarray, got list"),
])
def test_input_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        BatchNorm2d(3).forward(bad)


def test_one_value_per_channel_is_fine_in_eval():
    y = BatchNorm2d(3).eval().forward(np.ones((1, 3, 1, 1), np.float32))
    np.testing.assert_allclose(y, 1 / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_other_errors():
    bn = BatchNorm2d(2)
    with pytest.raises(ValueError, match="BatchNorm2d: backward called before forward"):
        bn.backward(np.zeros((2, 2, 2, 2), np.float32))
    bn.forward(np.random.default_rng(0).standard_normal((2, 2, 2, 2)).astype(np.float32))
    with pytest.raises(ValueError, match=r"expected dout of shape \(2, 2, 2, 2\), got shape "
                                         r"\(2, 2, 2\)"):
        bn.backward(np.zeros((2, 2, 2), np.float32))
    for kwargs, msg in [(dict(num_features=0), "num_features"), (dict(num_features=2, eps=0),
                                                                  "eps"),
                        (dict(num_features=2, momentum=1.5), "momentum"),
                        (dict(num_features=2, dtype=np.int32), "dtype"),
                        # raw TypeErrors, or accepted where Conv2d refuses (fuzzing helper)
                        (dict(num_features=None), "num_features"),
                        (dict(num_features=2.0), "num_features"),
                        (dict(num_features=True), "num_features"),
                        (dict(num_features=float("nan")), "num_features"),
                        (dict(num_features=2, eps="1e-5"), "eps must be a number"),
                        (dict(num_features=2, momentum="0.1"), "momentum must be a number"),
                        (dict(num_features=2, eps=float("inf")), "eps must be a finite")]:
        with pytest.raises(ValueError, match=f"BatchNorm2d: {msg}"):
            BatchNorm2d(**kwargs)


# -- recompute_running_stats: plain averages over given batches -----------------------------
class _Chain(Layer):
    """BatchNorm2d -> Dropout -> BatchNorm2d, enough to see which layers run in which mode."""

    def __init__(self, rng):
        super().__init__()
        self.bn1 = randomised(BatchNorm2d(3, dtype=np.float64), rng)
        self.drop = Dropout(0.5, rng=np.random.default_rng(7))
        self.bn2 = randomised(BatchNorm2d(3, dtype=np.float64), rng)

    def forward(self, x):
        return self.bn2.forward(self.drop.forward(self.bn1.forward(x)))


def _batch_stats(x):
    """Per-channel mean and unbiased variance over (N, H, W), computed plainly."""
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean[:, None, None]) ** 2).sum(axis=(0, 2, 3)) / (m - 1)
    return mean, var


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_recompute_running_stats_are_plain_averages(rng, mode):
    net = _Chain(rng)
    net.train(mode == "train")
    drop_state = net.drop.rng.bit_generator.state
    # batches of different sizes: the average is over batches, each batch counting once
    batches = [rng.standard_normal((n, 3, 4, 5)) * 2 + 1 for n in (2, 3, 2)]
    assert recompute_running_stats(net, iter(batches)) == 3

    means1, vars1, means2, vars2 = [], [], [], []
    for x in batches:
        m, v = _batch_stats(x)
        means1.append(m)
        vars1.append(v)
        # bn1 normalises with the batch's own (biased) statistics, dropout is off
        biased = v * (x[:, 0].size - 1) / x[:, 0].size
        h = (x - m[:, None, None]) / np.sqrt(biased + net.bn1.eps)[:, None, None] \
            * net.bn1.params["weight"][:, None, None] + net.bn1.params["bias"][:, None, None]
        m2, v2 = _batch_stats(h)
        means2.append(m2)
        vars2.append(v2)
    for bn, means, variances in ((net.bn1, means1, vars1), (net.bn2, means2, vars2)):
        np.testing.assert_allclose(bn.buffers["running_mean"], np.mean(means, axis=0),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(bn.buffers["running_var"], np.mean(variances, axis=0),
                                   rtol=1e-12, atol=1e-12)
        assert int(bn.buffers["num_batches_tracked"]) == 3
        assert bn.momentum == 0.1                          # restored
    # modes restored, dropout's generator untouched (it never ran in training mode)
    assert all(layer.training == (mode == "train") for _, layer in net.named_layers())
    assert net.drop.rng.bit_generator.state == drop_state


def test_recompute_running_stats_no_batches_changes_nothing(rng):
    net = _Chain(rng)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="no batches"):
        recompute_running_stats(net, [])
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert net.bn1.momentum == 0.1 and net.bn2.momentum == 0.1 and net.training


def test_recompute_running_stats_error_in_a_batch_restores(rng):
    net = _Chain(rng)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    good = rng.standard_normal((2, 3, 4, 4))
    bad = rng.standard_normal((2, 5, 4, 4))                 # wrong channel count
    with pytest.raises(ValueError, match="BatchNorm2d"):
        recompute_running_stats(net, [good, bad])
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert net.bn1.momentum == 0.1 and net.training


def test_state_dict_is_a_copy():
    """A state dict taken before training does not change with the layer, and changing
    the dict does not write into the layer (PyTorch: ``copy.deepcopy(m.state_dict())``;
    tinyseg's checkpoints rely on the copy)."""
    bn = BatchNorm2d(3)
    sd = bn.state_dict()
    before = {k: v.copy() for k, v in sd.items()}
    bn.train()
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32) + 2.0
    bn.forward(x)
    bn.params["weight"][...] = 7.0
    assert not np.array_equal(bn.buffers["running_mean"], before["running_mean"])
    for k, v in before.items():
        np.testing.assert_array_equal(sd[k], v, err_msg=k)
    bn.state_dict()["running_var"][...] = -1.0
    assert (bn.buffers["running_var"] > 0).all()


def test_a_count_that_is_negative_or_not_whole_is_refused_on_load():
    """num_batches_tracked of -1 made the next training forward (momentum=None) divide by
    zero, -3 gave running means of -2.6 for data of mean 5, 2.7 became 2 (a fuzzing
    helper). load_state_dict refuses them by name and changes nothing."""
    bn = BatchNorm2d(2, momentum=None)
    good = bn.state_dict()
    for bad in (-1, -3, 2.7):
        state = dict(good, num_batches_tracked=np.array(bad))
        with pytest.raises(ValueError, match="'num_batches_tracked' is a count, a whole number "
                                             ">= 0"):
            bn.load_state_dict(state)
        assert bn.buffers["num_batches_tracked"] == 0
    bn.load_state_dict(dict(good, num_batches_tracked=np.array(4.0)))    # whole: accepted
    assert bn.buffers["num_batches_tracked"] == 4
