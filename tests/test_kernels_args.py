"""The kernels' own guard (tinyseg/kernels/_args.py): a kernel called directly with arrays
that do not fit raises a ValueError naming the kernel and the argument.  Before the guard,
several of these calls crashed the process (a class label past the last class in the loss,
a weight with too few input channels in the convolution, arrays of different lengths in
RMSprop) or read outside an array and returned garbage (a short batch-norm weight)."""
import numpy as np
import pytest

from tinyseg.kernels import conv, loss, norm, optim, pool

rng = np.random.default_rng(0)


def f(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


ones2 = np.ones(2)


def _read_only(a):
    a.flags.writeable = False
    return a

BAD_CALLS = [
    # (kernel, call, words the message must contain)
    ("softmax_cross_entropy",       # a bare TypeError from int(None) before
     lambda: loss.softmax_cross_entropy(f(1, 2, 2, 2), np.zeros((1, 2, 2), np.int64), ones2,
                                        None), "ignore_index must be a 64-bit integer"),
    ("softmax_cross_entropy",       # a bare ValueError from int(nan) before
     lambda: loss.softmax_cross_entropy(f(1, 2, 2, 2), np.zeros((1, 2, 2), np.int64), ones2,
                                        float("nan")), "ignore_index must be a 64-bit integer"),
    ("softmax_cross_entropy",
     lambda: loss.softmax_cross_entropy(f(1, 2, 2, 2), np.full((1, 2, 2), 10**6), ones2, -1),
     "found 1000000"),
    ("softmax_cross_entropy",
     lambda: loss.softmax_cross_entropy(f(1, 2, 2, 2), np.full((1, 2, 2), -5), ones2, -1),
     "found -5"),
    ("softmax_cross_entropy",
     lambda: loss.softmax_cross_entropy(f(1, 2, 2, 2), np.zeros((1, 2, 3), np.int64), ones2, -1),
     "target must have shape (1, 2, 2)"),
    ("softmax_cross_entropy",
     lambda: loss.softmax_cross_entropy(f(1, 2, 2, 2), np.zeros((1, 2, 2), np.int64),
                                        np.ones(3), -1), "weight must have shape (2,)"),
    ("softmax_cross_entropy",
     lambda: loss.softmax_cross_entropy(f(1, 2, 2, 2), np.zeros((1, 2, 2), np.int64), ones2,
                                        2**63), "ignore_index must be a 64-bit integer"),
    ("conv2d_forward", lambda: conv.conv2d_forward(f(1, 3, 4, 4), f(3, 2, 3, 3), None, 1, 1),
     "weight must have shape (any, 3, any, any)"),
    ("conv2d_forward", lambda: conv.conv2d_forward(f(3, 4, 4), f(3, 3, 3, 3), None, 1, 1),
     "x must have shape"),
    ("conv2d_forward",
     lambda: conv.conv2d_forward(f(1, 3, 4, 4), f(3, 3, 3, 3, dtype=np.float64), None, 1, 1),
     "different dtypes"),
    ("conv2d_forward", lambda: conv.conv2d_forward(f(1, 3, 2, 2), f(3, 3, 3, 3), None, 1, 0),
     "no output"),
    ("conv2d_forward", lambda: conv.conv2d_forward(f(1, 3, 4, 4), f(3, 3, 3, 3), f(2), 1, 1),
     "bias must have shape (3,)"),
    ("conv2d_forward", lambda: conv.conv2d_forward(f(1, 3, 4, 4), f(3, 3, 3, 3), None, 0, 1),
     "stride must be an integer of at least 1"),
    ("conv2d_forward",
     lambda: conv.conv2d_forward(f(1, 3, 4, 4, dtype=np.float16), f(3, 3, 3, 3), None, 1, 1),
     "x must be float32 or float64"),
    ("conv2d_backward",
     lambda: conv.conv2d_backward(f(1, 3, 3, 3), f(1, 3, 4, 4), f(3, 3, 3, 3), 1, 1),
     "dout must have shape (1, 3, 4, 4)"),
    ("conv_transpose2d_forward",
     lambda: conv.conv_transpose2d_forward(f(1, 3, 4, 4), f(2, 3, 2, 2), None, 2, 0, 0),
     "weight must have shape (3, any, any, any)"),
    ("conv_transpose2d_forward",
     lambda: conv.conv_transpose2d_forward(f(1, 3, 4, 4), f(3, 3, 2, 2), None, 2, 0, 2),
     "output_padding must be smaller than the stride"),
    ("conv_transpose2d_backward",
     lambda: conv.conv_transpose2d_backward(f(1, 3, 4, 4), f(1, 3, 4, 4), f(3, 3, 2, 2), 2,
                                            0, 0), "dout must have shape (1, 3, 8, 8)"),
    ("batchnorm2d_forward", lambda: norm.batchnorm2d_forward(f(2, 4, 3, 3), f(3), f(4), 1e-5),
     "weight must have shape (4,)"),
    ("batchnorm2d_stats", lambda: norm.batchnorm2d_stats(f(0, 4, 3, 3), 1e-5),
     "no values to normalise"),
    ("batchnorm2d_backward",
     lambda: norm.batchnorm2d_backward(f(2, 4, 3, 3), f(2, 4, 3, 3), f(4), f(4), f(5)),
     "weight must have shape (4,)"),
    ("batchnorm_relu_forward",
     lambda: norm.batchnorm_relu_forward(f(2, 4, 3, 3), f(4), f(4), f(4),
                                         f(4, dtype=np.float64)), "different dtypes"),
    ("batchnorm_relu_backward",
     lambda: norm.batchnorm_relu_backward(f(2, 4, 3, 2), f(2, 4, 3, 3), f(4), f(4), f(4), f(4)),
     "dout must have shape (2, 4, 3, 3)"),
    ("maxpool2d_forward", lambda: pool.maxpool2d_forward(f(1, 1, 3, 3), 4),
     "does not fit in 3x3"),
    ("maxpool2d_forward", lambda: pool.maxpool2d_forward(f(1, 1, 30, 30), 12),
     "at most 11"),
    ("maxpool2d_backward",
     lambda: pool.maxpool2d_backward(f(1, 1, 2, 2), np.zeros((1, 1, 2, 2), np.int64),
                                     (1, 1, 4, 4), 2), "argmax must be int8"),
    ("maxpool2d_backward",
     lambda: pool.maxpool2d_backward(f(1, 1, 2, 2), np.zeros((1, 1, 2, 2), np.int8),
                                     (1, 1, 6, 6), 2), "is not the 2x2 pooling"),
    ("maxpool2d_backward",       # 8 is a position of a 3x3 window: wrote outside dx
     lambda: pool.maxpool2d_backward(f(1, 1, 2, 2), np.full((1, 1, 2, 2), 8, np.int8),
                                     (1, 1, 4, 4), 2), "argmax holds 8"),
    ("maxpool2d_backward",
     lambda: pool.maxpool2d_backward(f(1, 1, 2, 2), np.full((1, 1, 2, 2), -1, np.int8),
                                     (1, 1, 4, 4), 2), "positions in a 2x2 window are 0 … 3"),
    ("batchnorm2d_stats", lambda: norm.batchnorm2d_stats(f(2, 4, 3, 3), None),
     "eps must be a finite positive number"),            # a numba TypingError before
    ("batchnorm2d_forward", lambda: norm.batchnorm2d_forward(f(2, 4, 3, 3), f(4), f(4), -1e-5),
     "eps must be a finite positive number"),            # NaN before, silently
    ("rmsprop_step",
     lambda: optim.rmsprop_step(np.ones(4), np.ones(2), np.zeros(2), .1, .9, 1e-8, 0.),
     "of one shape and dtype"),
    ("rmsprop_step",
     lambda: optim.rmsprop_step(np.ones(4), np.ones(4), np.zeros(4), "0.1", .9, 1e-8, 0.),
     "lr must be a finite number"),
    ("rmsprop_step",
     lambda: optim.rmsprop_step(np.ones(4), np.ones(4), np.zeros(4), .1, 1j, 1e-8, 0.),
     "alpha must be a finite number"),
    ("rmsprop_step",
     lambda: optim.rmsprop_step(_read_only(np.ones(4)), np.ones(4), np.zeros(4), .1, .9,
                                1e-8, 0.), "must be writeable"),   # a numba TypingError before
    ("conv2d_forward", lambda: conv.conv2d_forward(f(1, 3, 4, 4), f(2, 3, 3, 3), None, None, 1),
     "stride must be an integer"),
    ("rmsprop_step",
     lambda: optim.rmsprop_step(np.ones(4), np.ones(4, np.float32), np.zeros(4), .1, .9, 1e-8,
                                0.), "of one shape and dtype"),
]


@pytest.mark.parametrize("kernel, call, says", BAD_CALLS,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD_CALLS)])
def test_a_kernel_called_with_arrays_that_do_not_fit_names_itself(kernel, call, says):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(f"{kernel}: ") and says in str(e.value), str(e.value)


def test_the_guard_lets_what_the_layers_pass_through():
    """Labels equal to ignore_index, an empty input with given statistics, a zero-size
    batch in the convolutions: accepted, and the answers are the reference's."""
    from tinyseg.reference import loss as ref_loss
    logits = f(1, 2, 2, 2, dtype=np.float64)
    t = np.array([[[0, 255], [1, 255]]], np.int64)
    a = loss.softmax_cross_entropy(logits, t, ones2, 255)
    b = ref_loss.softmax_cross_entropy(logits, t, ones2, 255)
    assert abs(a[0] - b[0]) <= 1e-14 * max(1.0, abs(b[0]))
    np.testing.assert_allclose(a[1], b[1], rtol=0, atol=1e-15)
    assert norm.batchnorm_relu_forward(f(0, 4, 3, 3), f(4), f(4), f(4), f(4)).shape == (0, 4, 3, 3)
    dx, dw, db = conv.conv2d_backward(f(0, 3, 4, 4), f(0, 2, 4, 4), f(3, 2, 3, 3), 1, 1)
    assert dx.shape == (0, 2, 4, 4) and not dw.any() and not db.any()


@pytest.mark.parametrize("make, x_shape", [
    (lambda: __import__("tinyseg").Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5)),     # gather
    (lambda: __import__("tinyseg").Conv2d(4, 2, 3, padding=1), (0, 4, 5, 5)),     # scatter
    (lambda: __import__("tinyseg").Conv2d(2, 3, 1), (0, 2, 5, 5)),                # 1x1
    (lambda: __import__("tinyseg").ConvTranspose2d(2, 3, 2, stride=2), (0, 2, 5, 5)),
])
def test_a_batch_of_no_images_has_zero_gradients(make, x_shape):
    """Forward of an empty batch worked; backward raised a bare IndexError."""
    layer = make()
    y = layer.forward(np.zeros(x_shape, np.float32))
    dx = layer.backward(np.zeros(y.shape, np.float32))
    assert dx.shape == x_shape
    assert not layer.grads["weight"].any() and not layer.grads["bias"].any()


def test_at_least_refuses_a_fraction():
    from tinyseg.kernels._args import at_least
    assert at_least("k", "stride", 2.0, 1) == 2
    with pytest.raises(ValueError, match=r"k: stride must be an integer of at least 1, got 1.5"):
        at_least("k", "stride", 1.5, 1)
