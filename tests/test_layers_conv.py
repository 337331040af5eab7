"""Conv2d and ConvTranspose2d layers: gradient checks, input errors, output sizes, PyTorch.

Tolerances:

* gradient checks (float64, central differences, ε = 1e-6): relative error < GRAD_TOL = 1e-6
  for the input and every parameter (observed ~1e-9; these layers are linear, so the
  finite differences are exact up to rounding).
* PyTorch, float64: ``max|ours − torch| ≤ 1e-10 · max(1, max|torch|)``.
* PyTorch, float32: ``≤ 1e-4 · max(1, max|torch|)`` (both sum in float32 in different orders).
"""
import numpy as np
import pytest

from tinyseg.gradcheck import gradcheck
from tinyseg.layers.conv import Conv2d, ConvTranspose2d

GRAD_TOL = 1e-6
TORCH_TOL = {np.float64: 1e-10, np.float32: 1e-4}


def assert_close(actual, expected, tol):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected)))
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} · {scale:.3g}"


def randomize_bias(layer, rng):
    """Biases start at 0; give them values so a bias mix-up cannot hide."""
    if "bias" in layer.params:
        layer.params["bias"][...] = rng.standard_normal(layer.params["bias"].shape)


# -- gradient checks ---------------------------------------------------------------------------

CONV_CASES = {
    "3x3 s1 p1 (C>O, scatter)": dict(in_channels=5, out_channels=3, kernel_size=3, padding=1),
    "3x3 s1 p1 (C<O, gather)": dict(in_channels=2, out_channels=4, kernel_size=3, padding=1),
    "1x1": dict(in_channels=4, out_channels=3, kernel_size=1),
    "3x3 s2 p1": dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
    "5x5 s1 p2 no bias": dict(in_channels=3, out_channels=2, kernel_size=5, padding=2,
                              bias=False),
}


@pytest.mark.parametrize("kwargs", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv2d_gradcheck(kwargs, rng):
    layer = Conv2d(**kwargs, rng=rng, dtype=np.float64)
    randomize_bias(layer, rng)
    x = rng.standard_normal((2, kwargs["in_channels"], 7, 6))
    errors = gradcheck(layer, x, rng=rng)
    assert set(errors) == {"input", "weight"} | ({"bias"} if kwargs.get("bias", True) else set())
    assert max(errors.values()) < GRAD_TOL, errors


CONVT_CASES = {
    "3x3 s2 p1 op1 (exact 2x)": dict(kernel_size=3, stride=2, padding=1, output_padding=1),
    "3x3 s2 p0 (Tiramisu)": dict(kernel_size=3, stride=2),
    "3x3 s1 p1": dict(kernel_size=3, padding=1),
    "2x2 s2": dict(kernel_size=2, stride=2),
    "1x1 no bias": dict(kernel_size=1, bias=False),
}


@pytest.mark.parametrize("kwargs", CONVT_CASES.values(), ids=CONVT_CASES.keys())
def test_conv_transpose2d_gradcheck(kwargs, rng):
    layer = ConvTranspose2d(4, 3, **kwargs, rng=rng, dtype=np.float64)
    randomize_bias(layer, rng)
    x = rng.standard_normal((2, 4, 4, 5))
    errors = gradcheck(layer, x, rng=rng)
    assert set(errors) == {"input", "weight"} | ({"bias"} if kwargs.get("bias", True) else set())
    assert max(errors.values()) < GRAD_TOL, errors


def test_backward_accumulates(rng):
    """backward ADDS into grads: two calls give twice the gradient (a layer used twice)."""
    for layer in (Conv2d(3, 2, 3, padding=1, rng=rng, dtype=np.float64),
                  ConvTranspose2d(3, 2, 3, stride=2, rng=rng, dtype=np.float64)):
        x = rng.standard_normal((2, 3, 5, 5))
        dout = rng.standard_normal(layer.forward(x).shape)
        layer.zero_grad()
        dx1 = layer.backward(dout)
        once = {k: g.copy() for k, g in layer.grads.items()}
        dx2 = layer.backward(dout)
        np.testing.assert_array_equal(dx1, dx2)
        for k, g in layer.grads.items():
            np.testing.assert_allclose(g, 2 * once[k], rtol=1e-14)
            assert np.any(once[k] != 0)


# -- shapes, parameters, repr --------------------------------------------------------------------

def test_parameters_and_init(rng):
    conv = Conv2d(3, 48, 3, padding=1, rng=rng)
    assert conv.params["weight"].shape == (48, 3, 3, 3)
    assert conv.params["weight"].dtype == np.float32
    bound = np.sqrt(6.0 / (3 * 3 * 3))  # He-uniform, fan_in = C·kh·kw
    assert np.max(np.abs(conv.params["weight"])) <= bound
    assert np.max(np.abs(conv.params["weight"])) > 0.9 * bound
    np.testing.assert_array_equal(conv.params["bias"], np.zeros(48, np.float32))
    assert [name for name, _, _ in conv.named_parameters()] == ["weight", "bias"]
    assert set(Conv2d(3, 4, 1, bias=False).params) == {"weight"}

    up = ConvTranspose2d(8, 6, 3, stride=2, rng=rng, dtype=np.float64)
    assert up.params["weight"].shape == (8, 6, 3, 3) and up.params["weight"].dtype == np.float64
    bound = np.sqrt(6.0 / (6 * 9))       # fan_in = out·kh·kw, PyTorch's (weight's dim 1)
    assert 0.9 * bound < np.max(np.abs(up.params["weight"])) <= bound


def test_rng_makes_weights_reproducible():
    a = Conv2d(4, 5, 3, rng=np.random.default_rng(7)).params["weight"]
    b = Conv2d(4, 5, 3, rng=np.random.default_rng(7)).params["weight"]
    c = Conv2d(4, 5, 3, rng=np.random.default_rng(8)).params["weight"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(Conv2d(4, 5, 3).params["weight"],  # default: default_rng(0)
                                  Conv2d(4, 5, 3, rng=np.random.default_rng(0)).params["weight"])


@pytest.mark.parametrize("h", [7, 8, 15, 16])
def test_output_sizes(h, rng):
    x = rng.standard_normal((1, 2, h, h)).astype(np.float32)
    assert Conv2d(2, 3, 3, padding=1, rng=rng)(x).shape == (1, 3, h, h)
    assert Conv2d(2, 3, 3, rng=rng)(x).shape == (1, 3, h - 2, h - 2)
    assert Conv2d(2, 3, 3, stride=2, padding=1, rng=rng)(x).shape == (1, 3, (h + 1) // 2,
                                                                       (h + 1) // 2)
    # the Tiramisu's up-sampling: kernel 3, stride 2, padding 0 -> 2H + 1 (then cropped)
    up = ConvTranspose2d(2, 3, 3, stride=2, rng=rng)
    assert up(x).shape == (1, 3, 2 * h + 1, 2 * h + 1) == up.output_shape(x.shape)
    # padding 1 + output_padding 1 -> exactly 2H
    assert ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1,
                           rng=rng)(x).shape == (1, 3, 2 * h, 2 * h)


def test_non_square_kernel(rng):
    conv = Conv2d(2, 3, (1, 3), padding=1, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 2, 5, 6))
    assert conv(x).shape == (2, 3, 7, 6) == conv.output_shape(x.shape)
    assert max(gradcheck(conv, x, rng=rng).values()) < GRAD_TOL


def test_repr_matches_pytorch():
    assert repr(Conv2d(3, 48, 3, padding=1)) == \
        "Conv2d(3, 48, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert repr(Conv2d(64, 64, 1, bias=False)) == \
        "Conv2d(64, 64, kernel_size=(1, 1), stride=(1, 1), bias=False)"
    assert repr(ConvTranspose2d(240, 240, 3, stride=2)) == \
        "ConvTranspose2d(240, 240, kernel_size=(3, 3), stride=(2, 2))"
    assert repr(ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)) == (
        "ConvTranspose2d(8, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
        "output_padding=(1, 1))")


def test_repr_equals_torch(torch):
    for ours, theirs in [
        (Conv2d(3, 48, 3, padding=1), torch.nn.Conv2d(3, 48, 3, padding=1)),
        (Conv2d(5, 2, (1, 3), stride=2, bias=False),
         torch.nn.Conv2d(5, 2, (1, 3), stride=2, bias=False)),
        (ConvTranspose2d(240, 240, 3, stride=2), torch.nn.ConvTranspose2d(240, 240, 3, stride=2)),
        (ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, bias=False),
         torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, bias=False)),
    ]:
        assert repr(ours) == repr(theirs)


# -- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: Conv2d(3, 4, 3, padding=1),
                                  lambda: ConvTranspose2d(3, 4, 3, stride=2)],
                         ids=["Conv2d", "ConvTranspose2d"])
def test_input_errors(make):
    layer = make()
    name = type(layer).__name__
    good = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=rf"{name}.*\(N, C, H, W\).*\(3, 8, 8\)"):
        layer.forward(good[0])
    with pytest.raises(ValueError, match=rf"{name}.*expected 3 input channels.*\(2, 5, 8, 8\)"):
        layer.forward(np.zeros((2, 5, 8, 8), np.float32))
    with pytest.raises(ValueError, match=rf"{name}.*float32 or float64.*int64"):
        layer.forward(good.astype(np.int64))
    with pytest.raises(ValueError, match=rf"{name}.*float64.*\(2, 3, 8, 8\).*float32"):
        layer.forward(good.astype(np.float64))
    with pytest.raises(ValueError, match=rf"{name}.*numpy.ndarray"):
        layer.forward(good.tolist())
    with pytest.raises(ValueError, match=rf"{name}: backward called before forward"):
        layer.backward(np.zeros((2, 4, 8, 8), np.float32))
    y = layer.forward(good)
    with pytest.raises(ValueError, match=rf"{name}: expected dout of shape \(2, 4, .*got "
                                         rf"\(2, 4, 3, 3\)"):
        layer.backward(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=rf"{name}: expected dout of dtype float32, got float64"):
        layer.backward(np.zeros(y.shape, np.float64))


def test_kernel_larger_than_padded_input():
    conv = Conv2d(1, 1, 5, padding=1)
    with pytest.raises(ValueError, match=r"Conv2d: kernel \(5, 5\) is larger than the padded "
                                         r"input: input shape \(1, 1, 2, 9\) with padding 1 is "
                                         r"\(4, 11\), expected at least \(5, 5\)"):
        conv.forward(np.zeros((1, 1, 2, 9), np.float32))
    assert conv.forward(np.zeros((1, 1, 3, 3), np.float32)).shape == (1, 1, 1, 1)  # just fits


def test_transposed_padding_too_large():
    up = ConvTranspose2d(1, 1, 3, stride=1, padding=2)
    with pytest.raises(ValueError, match=r"ConvTranspose2d: padding 2 is too large for input "
                                         r"shape \(1, 1, 1, 1\).*\(1, 1, -1, -1\)"):
        up.forward(np.zeros((1, 1, 1, 1), np.float32))


@pytest.mark.parametrize("ctor, message", [
    (lambda: Conv2d(0, 4, 3), r"Conv2d: in_channels must be a positive integer, got 0"),
    (lambda: Conv2d(3, 4.0, 3), r"Conv2d: out_channels must be a positive integer, got 4.0"),
    (lambda: Conv2d(3, 4, 0), r"Conv2d: kernel_size must be an integer >= 1"),
    (lambda: Conv2d(3, 4, 3, stride=0), r"Conv2d: stride must be an integer >= 1"),
    (lambda: Conv2d(3, 4, 3, padding=-1), r"Conv2d: padding must be an integer >= 0"),
    (lambda: Conv2d(3, 4, 3, stride=(1, 2)), r"Conv2d: stride must be the same for rows"),
    (lambda: Conv2d(3, 4, 3, dtype=np.int32), r"Conv2d: dtype must be float32 or float64"),
    (lambda: Conv2d(3, 4, 3, rng=0), r"Conv2d: rng must be a numpy.random.Generator"),
    (lambda: ConvTranspose2d(3, 4, 3, stride=2, output_padding=2),
     r"ConvTranspose2d: output_padding must be smaller than stride"),
    (lambda: ConvTranspose2d(3, 4, 3, output_padding=1),
     r"ConvTranspose2d: output_padding must be smaller than stride"),
])
def test_constructor_errors(ctor, message):
    with pytest.raises(ValueError, match=message):
        ctor()


# -- PyTorch --------------------------------------------------------------------------------------

def torch_check(torch, ours, theirs, x, dtype, rng):
    """Copy our weights into ``theirs`` by state_dict name; compare y, dx, dweight, dbias."""
    randomize_bias(ours, rng)
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)  # before loading
    state = {k: torch.from_numpy(v) for k, v in ours.state_dict().items()}
    assert set(state) == set(theirs.state_dict())
    theirs.load_state_dict(state)
    tol = TORCH_TOL[dtype]

    y = ours.forward(x)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = theirs(tx)
    assert_close(y, ty.detach().numpy(), tol)

    dout = rng.standard_normal(y.shape).astype(dtype)
    ours.zero_grad()
    dx = ours.backward(dout)
    ty.backward(torch.from_numpy(dout))
    assert dx.dtype == np.dtype(dtype)
    assert_close(dx, tx.grad.numpy(), tol)
    grads = dict(theirs.named_parameters())
    assert set(grads) == set(ours.grads)
    for name, g in ours.grads.items():
        assert g.dtype == np.dtype(dtype)
        assert_close(g, grads[name].grad.numpy(), tol)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c, o, k, s, p, bias", [
    (5, 3, 3, 1, 1, True),     # dense-layer-like, scatter route
    (3, 8, 3, 1, 1, True),     # first convolution, gather route
    (6, 6, 1, 1, 0, True),     # transition down, 1×1
    (4, 5, 3, 2, 1, True),     # strided
    (4, 2, 5, 2, 0, False),
])
def test_conv2d_matches_torch(torch, dtype, c, o, k, s, p, bias, rng):
    ours = Conv2d(c, o, k, stride=s, padding=p, bias=bias, rng=rng, dtype=dtype)
    theirs = torch.nn.Conv2d(c, o, k, stride=s, padding=p, bias=bias)
    x = rng.standard_normal((2, c, 9, 8)).astype(dtype)
    torch_check(torch, ours, theirs, x, dtype, rng)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c, o, k, s, p, op, bias", [
    (6, 6, 3, 2, 0, 0, True),   # the Tiramisu's transition up
    (6, 4, 3, 2, 1, 1, True),   # exactly 2×
    (3, 5, 3, 1, 1, 0, True),
    (4, 3, 2, 2, 0, 0, False),
    (4, 3, 5, 2, 2, 1, True),
])
def test_conv_transpose2d_matches_torch(torch, dtype, c, o, k, s, p, op, bias, rng):
    ours = ConvTranspose2d(c, o, k, stride=s, padding=p, output_padding=op, bias=bias,
                           rng=rng, dtype=dtype)
    theirs = torch.nn.ConvTranspose2d(c, o, k, stride=s, padding=p, output_padding=op,
                                      bias=bias)
    x = rng.standard_normal((2, c, 5, 6)).astype(dtype)
    torch_check(torch, ours, theirs, x, dtype, rng)
