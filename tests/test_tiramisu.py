"""The Tiramisu and its parts: gradients, the two dense-block implementations, sizes, files.

Tolerances:
* gradient checks (float64, central differences, ε = 1e-6): relative error < GRAD_TOL = 1e-6
  (``tinyseg.gradcheck.relative_error``, worst entry of each array);
* shared-buffer vs naive dense blocks: the same kernels on the same numbers; the forward
  pass agrees bit for bit, gradients are sums taken in another order, so float32 arrays
  agree to EQUAL_TOL = 1e-5 of their largest entry (``assert_close``);
* parameter counts: exact (a formula written out here), and within 10 % of the paper's;
* activation-memory estimates of ``summary``: within MEM_TOL = 5 % of tracemalloc's count.
"""
import json
import os
import tracemalloc

import numpy as np
import pytest

from tinyseg.gradcheck import gradcheck, numerical_gradient
from tinyseg.layers.base import Layer
from tinyseg.layers.conv import ConvTranspose2d
from tinyseg.memory import fresh_copy, training_step_peak
from tinyseg.tiramisu import (ARCH_KEYS, FORMAT_VERSION, PRESETS, DenseBlock, DenseLayer,
                              Tiramisu, TransitionDown, TransitionUp, centre_crop_offsets,
                              fc_densenet56, fc_densenet67, fc_densenet103, tiramisu_small,
                              tiramisu_tiny)

GRAD_TOL = 1e-6
EQUAL_TOL = 1e-5
MEM_TOL = 0.05


def tiny(dtype=np.float64, dropout=0.0, seed=0, **kw):
    """The gradient-check configuration: 2 pools, 2 layers per block, k = 4, m = 8."""
    args = dict(in_channels=3, num_classes=3, first_filters=8, growth_rate=4, layers=2, pools=2,
                dropout=dropout)
    args.update(kw)
    return Tiramisu(**args, rng=np.random.default_rng(seed), dtype=dtype)


def assert_close(a, b, tol=EQUAL_TOL, name="", scale=None):
    """``max|a − b| <= tol · scale``, ``scale`` = max|b| unless given (gradients use the
    largest gradient of the model: some are exactly zero in theory, e.g. a bias before a
    BatchNorm, and hold only rounding noise)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, name
    if scale is None:
        scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(a - b), initial=0.0))
    assert err <= tol * scale, f"{name}: max |a − b| = {err:.3g}, scale {scale:.3g}"


def assert_grads_ok(errors, bound=GRAD_TOL):
    bad = {k: v for k, v in errors.items() if not v < bound}
    assert not bad, f"relative errors above {bound}: {bad}"


# -- building blocks --------------------------------------------------------------------------

@pytest.mark.parametrize("efficient", [True, False])
def test_dense_layer_gradcheck(efficient, rng):
    layer = DenseLayer(6, 4, dropout=0.0, rng=rng, dtype=np.float64, memory_efficient=efficient)
    x = rng.standard_normal((2, 6, 5, 7))
    assert layer.forward(x).shape == (2, 4, 5, 7)
    assert_grads_ok(gradcheck(layer, x, rng=rng))


@pytest.mark.parametrize("efficient", [True, False])
def test_dense_layer_gradcheck_eval_mode(efficient, rng):
    """Eval mode (running statistics): BN is an affine map, checked the same way."""
    layer = DenseLayer(5, 3, dropout=0.2, rng=rng, dtype=np.float64, memory_efficient=efficient)
    layer.norm.buffers["running_mean"][:] = rng.standard_normal(5)
    layer.norm.buffers["running_var"][:] = rng.uniform(0.5, 2.0, 5)
    layer.eval()
    assert_grads_ok(gradcheck(layer, rng.standard_normal((2, 5, 4, 4)), rng=rng))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dense_layer_paths_agree_where_the_batch_norm_gives_exactly_zero(mode):
    """At z = BN(x) = 0 the ReLU passes no gradient on either path (the plain one's ReLU
    layer and the memory-efficient one's recompute). Random inputs never hit 0, so the
    gradient checks could not tell a ``>=`` from a ``>`` in the eval-mode recompute
    (mutation audit, 2026-11-28); inputs at the running mean (eval) or a channel whose
    values are all equal (train, z = 0 everywhere) do."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4))
    x[:, :, ::2, ::2] = 0.0                 # eval: the running mean (0), so z = 0 there
    if mode == "train":
        x[:, 1] = 0.5                       # a constant channel: x̂ = 0, z = β = 0
    dout = rng.standard_normal((2, 2, 4, 4))
    dx = {}
    for efficient in (True, False):
        layer = DenseLayer(3, 2, dropout=0.0, rng=np.random.default_rng(1), dtype=np.float64,
                           memory_efficient=efficient)
        layer.train(mode == "train")
        layer.forward(x)
        dx[efficient] = layer.backward(dout)
    np.testing.assert_allclose(dx[True], dx[False], rtol=0, atol=1e-12)


@pytest.mark.parametrize("new_only", [False, True])
@pytest.mark.parametrize("efficient", [True, False])
def test_dense_block_gradcheck(new_only, efficient, rng):
    block = DenseBlock(5, 3, 3, dropout=0.0, new_features_only=new_only,
                       memory_efficient=efficient, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 5, 4, 6))
    y = block.forward(x)
    assert y.shape == (2, 9 if new_only else 14, 4, 6)
    assert block.out_channels == y.shape[1]
    if not new_only:
        np.testing.assert_array_equal(y[:, :5], x)  # the block input is passed on unchanged
    assert_grads_ok(gradcheck(block, x, rng=rng))


@pytest.mark.parametrize("efficient", [True, False])
def test_transition_down_gradcheck(efficient, rng):
    layer = TransitionDown(5, dropout=0.0, rng=rng, dtype=np.float64,
                           memory_efficient=efficient)
    x = rng.standard_normal((2, 5, 6, 7))
    assert layer.forward(x).shape == (2, 5, 3, 3)
    assert_grads_ok(gradcheck(layer, x, rng=rng))


class _UpWithSkip(Layer):
    """TransitionUp with the skip connection held as a 'parameter', so that gradcheck checks
    its gradient too (a layer with two inputs)."""

    def __init__(self, up, skip):
        super().__init__()
        self.up = up
        self.add_param("skip", skip)

    def forward(self, x):
        return self.up.forward(x, self.params["skip"])

    def backward(self, dout):
        dx, dskip = self.up.backward(dout)
        self.grads["skip"] += dskip
        return dx


@pytest.mark.parametrize("skip_hw", [(6, 8), (7, 9), (5, 6)])
def test_transition_up_crop_and_gradcheck(skip_hw, rng):
    up = TransitionUp(4, 3, rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, 4, 3, 4))
    skip = rng.standard_normal((2, 2) + skip_hw)
    y = up.forward(x, skip)
    hs, ws = skip_hw
    assert y.shape == (2, 5, hs, ws)
    # the transposed convolution alone gives 2H+1 × 2W+1 = 7 × 9; its centre is kept
    full = ConvTranspose2d(4, 3, 3, stride=2, dtype=np.float64)
    full.params["weight"][...] = up.conv.params["weight"]
    full.params["bias"][...] = up.conv.params["bias"]
    u = full.forward(x)
    assert u.shape == (2, 3, 7, 9)
    t, l = (7 - hs) // 2, (9 - ws) // 2
    np.testing.assert_array_equal(y[:, :3], u[:, :, t:t + hs, l:l + ws])
    np.testing.assert_array_equal(y[:, 3:], skip)
    assert_grads_ok(gradcheck(_UpWithSkip(up, skip), x, rng=rng))


def test_transition_up_writes_into_out_and_rejects_big_skips(rng):
    up = TransitionUp(4, 3, rng=rng, dtype=np.float32)
    x = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    skip = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    out = np.zeros((1, 5, 6, 6), np.float32)
    assert up.forward(x, skip, out=out) is out
    np.testing.assert_array_equal(out, up.forward(x, skip))
    with pytest.raises(ValueError, match="TransitionUp"):
        up.forward(x, np.zeros((1, 2, 8, 6), np.float32))  # 8 > 2·3 + 1


def test_transition_up_backward_wants_the_gradient_of_its_output():
    """A gradient with 5 channels for a 3 + 1 output came back as a 2-channel skip gradient,
    and an int64 one as an int64 gradient, without an error (a fuzzing helper)."""
    rng = np.random.default_rng(0)
    up = TransitionUp(2, 3, rng=rng)
    x = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
    skip = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    up.forward(x, skip)
    for bad in (np.zeros((1, 5, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.int64),
                np.zeros((1, 4, 4, 4), np.float64)):
        with pytest.raises(ValueError, match=r"TransitionUp: expected dout of shape "
                                             r"\(1, 4, 4, 4\) .* and dtype float32"):
            up.backward(bad)
    dx, dskip = up.backward(np.ones((1, 4, 4, 4), np.float32))
    assert dx.shape == x.shape and dskip.shape == skip.shape


@pytest.mark.parametrize("efficient", [True, False])
def test_dense_block_backward_wants_a_float_gradient(efficient):
    """An int64 gradient was taken by the shared-buffer path and cast without a word (a
    fuzzing helper); the naive path failed inside, naming `Concat.split_grad`."""
    rng = np.random.default_rng(0)
    block = DenseBlock(2, 2, 2, rng=rng, memory_efficient=efficient)
    y = block.forward(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="^DenseBlock: expected a float dout, got int64"):
        block.backward(np.ones(y.shape, np.int64))
    assert block.backward(np.ones(y.shape, np.float32)).shape == (1, 2, 4, 4)


@pytest.mark.parametrize("make, args", [("DenseLayer", (2.7, 3)), ("DenseLayer", (True, 2)),
                                        ("TransitionDown", (2.5,)), ("TransitionUp", ("4", 3)),
                                        ("DenseLayer", (0, 2))])
def test_building_blocks_refuse_counts_that_are_not_positive_integers(make, args):
    """DenseLayer(2.7, 3.9) became DenseLayer(2, 3); TransitionUp('4', 3) was accepted;
    DenseLayer(0, 2) named the BatchNorm2d inside it. Now each names itself."""
    import tinyseg.tiramisu as tm
    with pytest.raises(ValueError, match=f"^{make}: \\w+ must be a positive integer"):
        getattr(tm, make)(*args)


@pytest.mark.parametrize("new_only", [False, True])
def test_dense_block_shared_buffer_equals_naive(new_only):
    """Same seed, dropout on, float32: outputs, input and parameter gradients, running
    statistics and dropout masks agree between the two implementations."""
    blocks = [DenseBlock(6, 4, 4, dropout=0.2, new_features_only=new_only, memory_efficient=e,
                         rng=np.random.default_rng(3), dtype=np.float32) for e in (True, False)]
    x = np.random.default_rng(4).standard_normal((3, 6, 8, 5)).astype(np.float32)
    g = np.random.default_rng(5).standard_normal((3, blocks[0].out_channels, 8, 5)
                                                 ).astype(np.float32)
    ys = [b.forward(x) for b in blocks]
    dxs = [b.backward(g) for b in blocks]
    np.testing.assert_array_equal(ys[0], ys[1])
    assert_close(dxs[0], dxs[1])
    params = [{n: (p, gr) for n, p, gr in b.named_parameters()} for b in blocks]
    gscale = max(np.abs(gr).max() for _, gr in params[1].values())
    for name in params[0]:
        assert_close(params[0][name][1], params[1][name][1], name=name, scale=gscale)
    s0, s1 = blocks[0].state_dict(), blocks[1].state_dict()
    for name in s0:
        assert_close(s0[name], s1[name], name=name)
    for l0, l1 in zip(blocks[0].layers, blocks[1].layers):
        np.testing.assert_array_equal(l0.drop.mask, l1.drop.mask)


def test_dense_block_layers_read_views_of_one_buffer(rng):
    """The shared-buffer block: every layer's input is a view of the returned buffer."""
    block = DenseBlock(4, 2, 3, dropout=0.0, rng=rng, dtype=np.float32)
    y = block.forward(rng.standard_normal((2, 4, 5, 5)).astype(np.float32))
    for i, layer in enumerate(block.layers):
        x_i = layer._saved[0]
        assert x_i.shape == (2, 4 + 2 * i, 5, 5)
        assert np.shares_memory(x_i, y) and x_i.base is not None


def test_dense_block_rejects_bad_input(rng):
    block = DenseBlock(4, 2, 2, rng=rng)
    with pytest.raises(ValueError, match="DenseBlock.*4 input channels"):
        block.forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="DenseBlock.*float32"):
        block.forward(np.zeros((1, 4, 4, 4), np.float64))
    with pytest.raises(ValueError, match="backward called before forward"):
        block.backward(np.zeros((1, 8, 4, 4), np.float32))


# -- the whole network -------------------------------------------------------------------------

def _fed_only_by_batchnorm(name):
    """Biases whose every consumer is a BatchNorm: their true gradient is exactly 0.

    In the tiny configuration: the convolutions of down block 1 (its output goes to a
    transition down and, as a skip, into up block 0, both BN first), transition down 0 and 1
    (pooled into a dense block) and transition up 0 (into up block 0, new maps only)."""
    return name.endswith("conv.bias") and name.split(".")[0:2] in (
        ["down_blocks", "1"], ["trans_down", "0"], ["trans_down", "1"], ["trans_up", "0"])


@pytest.mark.parametrize("efficient", [True, False])
def test_tiramisu_gradcheck(efficient):
    """Every parameter's gradient against central differences on a random sample of entries
    (float64, 2 pools, 2 layers per block, k = 4, 16 × 16 input, dropout off)."""
    model = tiny(memory_efficient=efficient)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 16, 16))
    errors = gradcheck(model, x, max_entries=4, rng=rng)
    assert set(errors) == {"input"} | {n for n, _, _ in model.named_parameters()}
    zero = {k for k in errors if _fed_only_by_batchnorm(k)}
    assert_grads_ok({k: v for k, v in errors.items() if k not in zero})
    # the structurally zero gradients: analytic ~1e-15, central differences ~1e-9 (noise)
    dout = rng.standard_normal((2, 3, 16, 16))
    model.zero_grad()
    model.forward(x)
    model.backward(dout)
    grads = {n: g.copy() for n, _, g in model.named_parameters()}
    params = {n: p for n, p, _ in model.named_parameters()}
    for name in zero:
        num = numerical_gradient(lambda: float(np.sum(model.forward(x) * dout)), params[name],
                                 indices=np.arange(2))
        assert np.max(np.abs(grads[name])) < 1e-12, name
        assert np.max(np.abs(num)) < 1e-6, name


def test_tiramisu_shared_buffer_equals_naive():
    """Whole model, float32, dropout on, same seed: logits, every gradient, BN statistics."""
    models = [tiny(np.float32, dropout=0.2, seed=11, layers=[2, 3, 2, 3, 2],
                   memory_efficient=e) for e in (True, False)]
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 24)).astype(np.float32)
    g = np.random.default_rng(2).standard_normal((2, 3, 16, 24)).astype(np.float32)
    for _ in range(2):  # two steps: the second starts from moved running statistics
        ys = [m.forward(x) for m in models]
        dxs = [m.backward(g) for m in models]
        assert_close(ys[0], ys[1])
        assert_close(dxs[0], dxs[1])
    g0 = {n: gr for n, _, gr in models[0].named_parameters()}
    gscale = max(np.abs(gr).max() for gr in g0.values())
    for name, _, gr in models[1].named_parameters():
        assert_close(g0[name], gr, name=name, scale=gscale)
    s0 = models[0].state_dict()
    for name, v in models[1].state_dict().items():
        assert_close(s0[name], v, name=name)
    for m in models:
        m.eval()
    assert_close(models[0].forward(x), models[1].forward(x))


def test_recompute_running_stats_reaches_every_batch_norm():
    """Both dense-block implementations: every batch norm (also those the memory-efficient
    layers drive themselves) gets the average of the given batches, the same in both; the
    dropout generators are not used."""
    from tinyseg.checkpoint import generator_states
    from tinyseg.layers.batchnorm import BatchNorm2d, recompute_running_stats

    models = [tiny(np.float32, dropout=0.2, seed=11, memory_efficient=e) for e in (True, False)]
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((2, 3, 16, 16)).astype(np.float32) for _ in range(3)]
    for m in models:
        m.eval()
        gens = generator_states(m)
        assert recompute_running_stats(m, batches) == 3
        assert generator_states(m) == gens
        norms = [layer for _, layer in m.named_layers() if isinstance(layer, BatchNorm2d)]
        assert norms and all(int(bn.buffers["num_batches_tracked"]) == 3 for bn in norms)
        assert all(not layer.training for _, layer in m.named_layers())
    s0 = models[0].state_dict()
    for name, v in models[1].state_dict().items():
        assert_close(s0[name], v, name=name)
    assert_close(models[0].forward(batches[0]), models[1].forward(batches[0]))


def test_switching_implementation_on_a_model():
    model = tiny(np.float32)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    model.eval()
    y = model.forward(x)
    model.memory_efficient = False
    assert not model.config["memory_efficient"]
    assert all(not b.memory_efficient for b in model.down_blocks + model.up_blocks)
    assert all(not l.memory_efficient for b in model.down_blocks for l in b.layers)
    assert all(not t.memory_efficient for t in model.trans_down)    # the transitions too
    np.testing.assert_allclose(model.forward(x), y, rtol=1e-5, atol=1e-6)
    model.memory_efficient = True
    assert all(t.memory_efficient for t in model.trans_down)
    assert all(l.memory_efficient for b in model.up_blocks for l in b.layers)


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("part", ["DenseLayer", "TransitionDown", "DenseBlock", "Tiramisu"])
def test_backward_follows_the_way_forward_went(part, first):
    """``memory_efficient`` switched between forward and backward: backward still uses what
    forward kept (a stale cache of the other way gave gradients off by up to 3 before), so
    the gradients are those of an unswitched step."""
    def make():
        rng = np.random.default_rng(1)
        return {"DenseLayer": lambda: DenseLayer(5, 3, dropout=0.2, rng=rng,
                                                 memory_efficient=first),
                "TransitionDown": lambda: TransitionDown(5, dropout=0.2, rng=rng,
                                                         memory_efficient=first),
                "DenseBlock": lambda: DenseBlock(5, 3, 2, dropout=0.2, rng=rng,
                                                 memory_efficient=first),
                "Tiramisu": lambda: tiny(np.float32, dropout=0.2, seed=1,
                                         memory_efficient=first)}[part]()
    in_ch = 3 if part == "Tiramisu" else 5
    x = np.random.default_rng(2).standard_normal((2, in_ch, 8, 8)).astype(np.float32)
    results = []
    for switch in (False, True):
        layer = make()
        # an earlier step, the other way when switching: it leaves that way's caches behind
        layer.memory_efficient = first != switch
        layer.backward(np.ones_like(layer.forward(x)))
        layer.memory_efficient = first
        for _, _, g in layer.named_parameters():
            g[...] = 0
        y = layer.forward(x)
        if switch:
            layer.memory_efficient = not first
        dx = layer.backward(np.random.default_rng(3).standard_normal(y.shape).astype(y.dtype))
        results.append((y, dx, {n: g.copy() for n, _, g in layer.named_parameters()}))
    (y0, dx0, g0), (y1, dx1, g1) = results
    np.testing.assert_array_equal(y1, y0)
    assert_close(dx1, dx0, name="dx")
    scale = max(np.abs(g).max() for g in g0.values())
    for name in g0:
        assert_close(g1[name], g0[name], name=name, scale=scale)


@pytest.mark.parametrize("efficient", [True, False])
@pytest.mark.parametrize("part", ["DenseLayer", "TransitionDown", "DenseBlock", "Tiramisu"])
def test_one_backward_per_forward_named_by_the_part(part, efficient):
    """Backward before forward, and a second backward after one forward, are refused in the
    part's own name, whichever way it runs (the plain chain's children used to answer:
    "MaxPool2d: ..." for a TransitionDown, and a second backward added the gradients again)."""
    rng = np.random.default_rng(0)
    layer = {"DenseLayer": lambda: DenseLayer(4, 2, rng=rng, memory_efficient=efficient),
             "TransitionDown": lambda: TransitionDown(4, rng=rng, memory_efficient=efficient),
             "DenseBlock": lambda: DenseBlock(4, 2, 2, rng=rng, memory_efficient=efficient),
             "Tiramisu": lambda: tiny(np.float32, memory_efficient=efficient)}[part]()
    x = np.random.default_rng(1).standard_normal((2, 3 if part == "Tiramisu" else 4, 8, 8)
                                                 ).astype(np.float32)
    shape = {"DenseLayer": (2, 2, 8, 8), "TransitionDown": (2, 4, 4, 4),
             "DenseBlock": (2, 8, 8, 8), "Tiramisu": (2, 3, 8, 8)}[part]
    with pytest.raises(ValueError, match=f"^{part}: backward called before forward"):
        layer.backward(np.ones(shape, np.float32))
    layer.backward(np.ones_like(layer.forward(x)))
    with pytest.raises(ValueError, match=f"^{part}: backward called before forward"):
        layer.backward(np.ones(shape, np.float32))


def _expected_params(in_ch, classes, m, k, layers, pools):
    """The count written out: conv = (in·kh·kw + 1)·out, BN = 2·C, per the paper's layout."""
    p = (in_ch * 9 + 1) * m
    c, skips = m, []
    for i in range(pools):
        for _ in range(layers[i]):
            p += 2 * c + (9 * c + 1) * k
            c += k
        skips.append(c)
        p += 2 * c + (c + 1) * c  # transition down: BN + 1×1 conv
    for _ in range(layers[pools]):
        p += 2 * c + (9 * c + 1) * k
        c += k
    new = layers[pools] * k
    for i in range(pools):
        p += (9 * new + 1) * new  # transition up: 3×3 transposed conv, new → new maps
        c = new + skips[pools - 1 - i]
        for _ in range(layers[pools + 1 + i]):
            p += 2 * c + (9 * c + 1) * k
            c += k
        new = layers[pools + 1 + i] * k
    return p + (c + 1) * classes


PAPER = [  # preset, paper's parameter count, our exact count with 11 classes
    (fc_densenet56, 1.5e6, 1_376_795, dict(m=48, k=12, layers=[4] * 11)),
    (fc_densenet67, 3.5e6, 3_463_243, dict(m=48, k=16, layers=[5] * 11)),
    (fc_densenet103, 9.4e6, 9_322_091,
     dict(m=48, k=16, layers=[4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4])),
]


@pytest.mark.parametrize("preset,paper,exact,arch", PAPER, ids=lambda v: getattr(v, "__name__", ""))
def test_paper_presets_parameter_counts(preset, paper, exact, arch):
    model = preset(num_classes=11)
    n = model.num_parameters()
    assert n == exact == _expected_params(3, 11, arch["m"], arch["k"], arch["layers"], 5)
    assert abs(n - paper) / paper < 0.10
    assert model.config["layers"] == arch["layers"] and model.pools == 5
    assert model.config["first_filters"] == 48 and model.config["growth_rate"] == arch["k"]
    assert f"{exact:,}" in preset.__doc__  # the docstring states the count


def test_small_presets_documented_counts():
    for preset in (tiramisu_small, tiramisu_tiny):
        n = preset().num_parameters()
        assert f"{n:,}" in preset.__doc__, (preset.__name__, n)
        assert n < 1_000_000
    assert set(PRESETS) == {"fc_densenet56", "fc_densenet67", "fc_densenet103",
                            "tiramisu_small", "tiramisu_tiny"}


def test_parameter_names_follow_a_pytorch_tree():
    names = set(tiny().state_dict())
    for name in ["firstconv.weight", "firstconv.bias", "down_blocks.0.layers.1.conv.weight",
                 "down_blocks.1.layers.0.norm.weight", "down_blocks.0.layers.0.norm.running_var",
                 "down_blocks.0.layers.0.norm.num_batches_tracked",
                 "trans_down.0.norm.running_mean",
                 "trans_down.1.conv.weight", "bottleneck.layers.1.conv.bias",
                 "trans_up.0.conv.weight", "up_blocks.1.layers.1.norm.bias", "finalconv.weight",
                 "finalconv.bias"]:
        assert name in names, name


def test_layers_argument_forms():
    assert tiny(layers=2).config["layers"] == [2] * 5
    assert tiny(layers=[1, 2, 3]).config["layers"] == [1, 2, 3, 2, 1]  # mirrored
    assert tiny(layers=[1, 2, 3, 4, 5]).config["layers"] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="pools \\+ 1 = 3.*2·pools \\+ 1 = 5"):
        tiny(layers=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="at least one layer"):
        tiny(layers=[1, 0, 1])
    with pytest.raises(ValueError, match="eval_bn"):
        tiny(eval_bn="test")


def test_config_rebuilds_the_model():
    model = tiny(np.float32, dropout=0.1, layers=[1, 2, 3], eval_bn="batch")
    config = json.loads(json.dumps(model.config))  # JSON-able
    again = Tiramisu(**config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_deterministic_same_seed_same_run():
    """Same seed: same weights, same dropout masks, same logits and gradients."""
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    runs = []
    for seed in (5, 5, 6):
        m = tiny(np.float32, dropout=0.2, seed=seed)
        y1 = m.forward(x)
        m.backward(np.ones_like(y1))
        y2 = m.forward(x)  # new dropout masks
        runs.append((m.state_dict(), y1, y2, {n: g.copy() for n, _, g in m.named_parameters()}))
    a, b, c = runs
    for name in a[0]:
        np.testing.assert_array_equal(a[0][name], b[0][name])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[1], a[2])  # dropout does act
    for name in a[3]:
        np.testing.assert_array_equal(a[3][name], b[3][name])
    assert not np.array_equal(a[0]["firstconv.weight"], c[0]["firstconv.weight"])


@pytest.mark.parametrize("hw", [(13, 21), (4, 5), (1, 1)])
def test_sizes_that_are_not_multiples_of_2_pow_pools(hw):
    model = tiny(np.float64)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3) + hw)
    y = model.forward(x)
    assert y.shape == (2, 3) + hw
    # the same as padding by hand to a multiple of 4 and cropping the logits
    H, W = -(-hw[0] // 4) * 4, -(-hw[1] // 4) * 4
    xp = np.zeros((2, 3, H, W))
    xp[:, :, :hw[0], :hw[1]] = x
    other = tiny(np.float64)
    np.testing.assert_allclose(other.forward(xp)[:, :, :hw[0], :hw[1]], y, rtol=1e-12, atol=1e-12)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape


def test_gradcheck_on_an_odd_sized_input():
    model = tiny(np.float64)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 10, 7))
    errors = gradcheck(model, x, max_entries=2, rng=rng)
    assert errors["input"] < GRAD_TOL
    assert errors["firstconv.weight"] < GRAD_TOL and errors["finalconv.weight"] < GRAD_TOL


def test_bad_inputs_name_the_model():
    model = tiny(np.float32)
    with pytest.raises(ValueError, match="Tiramisu.*3 input channels"):
        model.forward(np.zeros((1, 4, 16, 16), np.float32))
    with pytest.raises(ValueError, match="Tiramisu.*float32"):
        model.forward(np.zeros((1, 3, 16, 16), np.float64))
    with pytest.raises(ValueError, match="Tiramisu.*\\(N, C, H, W\\)"):
        model.forward(np.zeros((3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="backward called before forward"):
        model.backward(np.zeros((1, 3, 16, 16), np.float32))
    model.forward(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="dlogits of shape \\(1, 3, 16, 16\\)"):
        model.backward(np.zeros((1, 3, 8, 8), np.float32))
    # a complex gradient lost its imaginary part with a ComplexWarning; text failed in NumPy
    for bad in (np.zeros((1, 3, 16, 16), np.complex64), np.zeros((1, 3, 16, 16), "U1")):
        with pytest.raises(ValueError, match="expected float dlogits of shape"):
            model.backward(bad)
    with pytest.raises(ValueError, match="a seed must be an integer >= 0, got -1"):
        Tiramisu(rng=-1)                                 # numpy: "expected non-negative integer"


@pytest.mark.parametrize("efficient", [True, False])
def test_eval_bn_modes(efficient):
    """'running' (default): running statistics in eval mode.  'batch' (the paper): batch
    statistics in eval mode, without touching the running averages."""
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)) * 3 + 1
    model = tiny(np.float64, memory_efficient=efficient)
    assert model.eval_bn == "running"
    train_out = model.forward(x)  # dropout 0: training = batch statistics
    state = model.state_dict()
    model.eval()
    running_out = model.forward(x)
    assert not np.allclose(running_out, train_out)
    model.eval_bn = "batch"
    assert model.config["eval_bn"] == "batch"
    np.testing.assert_allclose(model.forward(x), train_out, rtol=1e-12, atol=1e-12)
    for name, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[name])  # running averages untouched
    model.train()  # training mode is the same whatever eval_bn says
    np.testing.assert_allclose(model.forward(x), train_out, rtol=1e-12, atol=1e-12)


# -- weights on disk ----------------------------------------------------------------------------

def test_save_load_roundtrip(tmp_path):
    model = tiny(np.float32, dropout=0.2, seed=1, layers=[1, 2, 3])
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model.forward(x)  # move the running statistics off their initial values
    path = model.save(tmp_path / "sub" / "m.npz")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["m.npz"]
    with np.load(path) as f:
        assert int(f["__format__"]) == FORMAT_VERSION
        assert json.loads(str(f["__config__"])) == model.config
        assert set(f.files) == {"__format__", "__config__"} | set(model.state_dict())
    other = tiny(np.float32, dropout=0.2, seed=2, layers=[1, 2, 3]).load(path)
    for name, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], v)
    model.eval()
    other.eval()
    np.testing.assert_array_equal(other.forward(x), model.forward(x))
    again = Tiramisu.from_file(path)
    assert again.config == model.config
    again.eval()
    np.testing.assert_array_equal(again.forward(x), model.forward(x))
    f64 = Tiramisu.from_file(path, dtype=np.float64, memory_efficient=False)
    assert f64.dtype == np.float64 and not f64.memory_efficient


def test_load_refuses_other_configs_naming_the_key(tmp_path):
    path = tiny(np.float32).save(tmp_path / "m.npz")
    for key, value in [("growth_rate", 5), ("layers", [2, 2, 3]), ("num_classes", 2),
                       ("first_filters", 6), ("pools", 3), ("in_channels", 1)]:
        with pytest.raises(ValueError, match=f"{key}="):
            tiny(np.float32, **{key: value}).load(path)
    tiny(np.float32, dropout=0.5, eval_bn="batch").load(path)  # runtime options may differ
    assert set(ARCH_KEYS) < set(tiny().config)


def _rewrite(path, out, change):
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    change(data)
    np.savez(out, **data)
    return out


def test_from_file_names_the_file_of_a_configuration_that_builds_nothing(tmp_path):
    """An unknown key or a layers entry that is not numbers gave a bare TypeError/ValueError
    from the constructor, without the file's name."""
    path = tiny(np.float32).save(tmp_path / "m.npz")

    def config(change):
        def edit(d):
            c = json.loads(str(d["__config__"]))
            c.update(change)
            d["__config__"] = np.array(json.dumps(c))
        return edit

    for i, change in enumerate(({"model": "unet"}, {"layers": "abc"})):
        bad = _rewrite(path, tmp_path / f"c{i}.npz", config(change))
        with pytest.raises(ValueError, match=f"Tiramisu.from_file: {bad}: its configuration "
                                             f"does not build a Tiramisu"):
            Tiramisu.from_file(bad)


@pytest.mark.parametrize("value, says", [(np.nan, "holds NaN or infinite values"),
                                         (-1.0, "holds negative values")])
def test_load_refuses_weights_no_run_can_write(tmp_path, value, says):
    """``Tiramisu.load`` took NaN weights and negative running variances (only the commands'
    checkpoint loader refused them): NaN outputs, or a mask of all background."""
    model = tiny(np.float32)
    path = model.save(tmp_path / "m.npz")
    name = "down_blocks.0.layers.0.norm.running_var"

    def damage(d):
        d[name] = d[name].copy()
        d[name][0] = value

    bad = _rewrite(path, tmp_path / "bad.npz", damage)
    with pytest.raises(ValueError, match=f"Tiramisu.load: {bad}: '{name}' {says}"):
        tiny(np.float32).load(bad)
    with pytest.raises(ValueError, match=says):
        Tiramisu.from_file(bad)


def test_load_refuses_wrong_arrays_naming_the_first(tmp_path):
    model = tiny(np.float32)
    path = model.save(tmp_path / "m.npz")
    before = model.state_dict()

    def shape(d):
        d["down_blocks.1.layers.0.conv.weight"] = np.zeros((4, 1, 3, 3), np.float32)

    with pytest.raises(ValueError, match="'down_blocks.1.layers.0.conv.weight' has shape"):
        model.load(_rewrite(path, tmp_path / "a.npz", shape))
    with pytest.raises(ValueError, match="has no 'trans_up.0.conv.bias'"):
        model.load(_rewrite(path, tmp_path / "b.npz", lambda d: d.pop("trans_up.0.conv.bias")))
    with pytest.raises(ValueError, match="unexpected 'extra.weight'"):
        model.load(_rewrite(path, tmp_path / "c.npz",
                            lambda d: d.update({"extra.weight": np.zeros(3)})))
    with pytest.raises(ValueError, match="format version 2"):
        model.load(_rewrite(path, tmp_path / "d.npz",
                            lambda d: d.update({"__format__": np.array(2)})))
    with pytest.raises(ValueError, match="not a tinyseg Tiramisu weight file"):
        model.load(_rewrite(path, tmp_path / "e.npz", lambda d: d.pop("__config__")))
    (tmp_path / "f.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        model.load(tmp_path / "f.npz")
    with pytest.raises(FileNotFoundError):
        model.load(tmp_path / "missing.npz")

    last = list(before)[-1]

    def late_text(d):      # the first array is fine and different, the last one is text
        d["firstconv.weight"] = d["firstconv.weight"] + 1
        d[last] = np.full(d[last].shape, "x")

    with pytest.raises(ValueError, match=f"g.npz: '{last}' holds <U1"):
        model.load(_rewrite(path, tmp_path / "g.npz", late_text))
    with pytest.raises(ValueError, match="'firstconv.weight' holds complex64"):
        model.load(_rewrite(path, tmp_path / "h.npz", lambda d: d.update(
            {"firstconv.weight": d["firstconv.weight"].astype(np.complex64)})))
    for bad, says in ((np.array("not json"), "damaged __config__"),
                      (np.array("[1, 2]"), "not a JSON object")):
        with pytest.raises(ValueError, match=says):
            model.load(_rewrite(path, tmp_path / "i.npz",
                                lambda d: d.update({"__config__": bad})))
    with pytest.raises(ValueError, match="damaged __format__"):
        model.load(_rewrite(path, tmp_path / "j.npz",
                            lambda d: d.update({"__format__": np.array("abc")})))
    for name, v in model.state_dict().items():  # nothing was changed by the failed loads
        np.testing.assert_array_equal(v, before[name])


def test_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    tiny(np.float32, seed=1).save(path)
    old = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(KeyboardInterrupt):
        tiny(np.float32, seed=2).save(path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind


# -- summary and memory -------------------------------------------------------------------------

def test_summary_table():
    model = tiny(np.float32)
    text = model.summary(16, 16, batch=2)
    for stage in ["firstconv", "down_blocks.0", "trans_down.1", "bottleneck", "trans_up.0",
                  "up_blocks.1", "finalconv"]:
        assert stage in text
    assert f"{model.num_parameters():,}" in text
    assert "8 × 16 × 16" in text and "3 × 16 × 16" in text  # firstconv, finalconv outputs
    assert "shared buffer" in text and "naive" in text
    rows = model.stages(16, 16, 2)
    assert sum(r["params"] for r in rows) == model.num_parameters()
    assert rows[-1]["out"] == (3, 16, 16)
    assert [r["out"][1] for r in rows if r["name"].startswith("trans_down")] == [8, 4]


def _kept_after_forward(model, x):
    """Bytes (traced) that stay allocated after a forward pass, the logits excluded."""
    fresh = fresh_copy(model)
    fresh.forward(x)  # warm-up: compile outside the measurement
    fresh = fresh_copy(model)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = fresh.forward(x)
        kept = tracemalloc.get_traced_memory()[0] - base - y.nbytes
    finally:
        tracemalloc.stop()
    return kept


@pytest.mark.parametrize("efficient", [True, False])
@pytest.mark.parametrize("batch,dropout", [(1, 0.2), (3, 0.0)])
def test_summary_memory_matches_tracemalloc(efficient, batch, dropout):
    model = tiny(np.float32, dropout=dropout, first_filters=16, growth_rate=8,
                 layers=[3, 4, 5], memory_efficient=efficient)
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 48)).astype(np.float32)
    key = "kept_efficient" if efficient else "kept_naive"
    estimate = sum(r[key] for r in model.stages(32, 48, batch))
    measured = _kept_after_forward(model, x)
    assert abs(measured - estimate) <= MEM_TOL * estimate, (measured, estimate)


def test_shared_buffer_halves_the_peak():
    """The issue's target (at most half the naive peak), on a model small enough for a test:
    tiramisu_tiny at 64 × 64, batch 2 (lesson 8 and the report measure fc_densenet56)."""
    model = tiramisu_tiny(rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    efficient = training_step_peak(fresh_copy(model, memory_efficient=True), x)
    naive = training_step_peak(fresh_copy(model, memory_efficient=False), x)
    assert efficient <= 0.5 * naive, (efficient, naive)


def test_summary_measure_leaves_the_model_alone():
    model = tiny(np.float32, dropout=0.2)
    before = model.state_dict()
    rng_state = model.down_blocks[0].layers[0].drop.rng.bit_generator.state
    text = model.summary(16, 16, batch=2, measure=True)
    assert "measured peak of one training step" in text
    for name, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[name])
    assert model.down_blocks[0].layers[0].drop.rng.bit_generator.state == rng_state


def test_a_numpy_dropout_is_taken_and_an_empty_summary_refused():
    from tinyseg.tiramisu import tiramisu_tiny
    model = tiramisu_tiny(dropout=np.float32(0.25))       # was refused as "not in [0, 1)"
    assert model.config["dropout"] == 0.25 and isinstance(model.config["dropout"], float)
    with pytest.raises(ValueError, match="dropout must be in"):
        tiramisu_tiny(dropout=True)
    with pytest.raises(ValueError, match="height, width and batch must be at least 1"):
        model.summary(0, 0)                                 # was a ZeroDivisionError


def test_too_small_for_batch_statistics_is_said_in_the_networks_words():
    """One image of 8x8 through 3 poolings leaves 1 value per channel: batch norm cannot
    normalise it with batch statistics.  The message was a DenseLayer's, about a (1, 88, 1, 1)
    tensor the user never made."""
    from tinyseg.tiramisu import tiramisu_tiny
    model = tiramisu_tiny(num_classes=2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"Tiramisu: an input of shape \(1, 3, 8, 8\) leaves "
                                         r"one value per channel after 3 poolings"):
        model.forward(np.zeros((1, 3, 8, 8), np.float32))
    assert model.forward(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 2, 8, 8)
    model.eval()                                   # running statistics: any size works
    assert model.forward(np.zeros((1, 3, 1, 1), np.float32)).shape == (1, 2, 1, 1)


def _eval_net(seed):
    m = tiramisu_tiny(num_classes=2, rng=np.random.default_rng(seed))
    m.eval()
    return m


def test_centre_crop_offsets_per_axis():
    assert centre_crop_offsets((10, 20), (4, 8)) == (3, 6)
    assert centre_crop_offsets((9, 4), (9, 1)) == (0, 1)


def test_tiramisu_from_file_opens_a_training_checkpoint(tmp_path):
    from tinyseg.checkpoint import make_meta, save_training
    from tinyseg.optim import RMSprop
    from tinyseg.tiramisu import Tiramisu
    m = _eval_net(0)
    opt = RMSprop(list(m.named_parameters()))
    p = save_training(tmp_path / "last.npz", m, make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)),
                      {"epoch": 1}, opt)
    loaded = Tiramisu.from_file(p)
    loaded.eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), m.forward(x))


@pytest.mark.parametrize("value", ["no", 0, None])
def test_memory_efficient_must_be_a_bool(value):
    """``--model-overrides '{"memory_efficient": "no"}'`` was taken as True (a non-empty
    string); anything but true or false is refused."""
    with pytest.raises(ValueError, match="memory_efficient must be true or false"):
        Tiramisu(first_filters=8, growth_rate=4, layers=1, pools=2, memory_efficient=value)
