"""RMSprop and ExponentialLR: against PyTorch, state round trips, argument checks."""
import math

import numpy as np
import pytest

from tinyseg.layers.base import Layer
from tinyseg.optim import ExponentialLR, RMSprop

# float64 runs agree with torch to 1e-12 (only rounding order differs); float32 runs to
# 1e-6 absolute (parameters are O(1); the update is done in float64 then rounded).
TORCH_TOL = {np.float64: 1e-12, np.float32: 1e-6}


class Tiny(Layer):
    """Two parameters of different ranks, like a conv layer, plus a child layer."""

    def __init__(self, rng, dtype=np.float64):
        super().__init__()
        self.add_param("weight", rng.standard_normal((3, 2, 3, 3)).astype(dtype))
        self.add_param("bias", rng.standard_normal(3).astype(dtype))
        self.child = Child(rng, dtype)


class Child(Layer):
    def __init__(self, rng, dtype):
        super().__init__()
        self.add_param("weight", rng.standard_normal(4).astype(dtype))


def _fill_grads(model, rng):
    for _, _, g in model.named_parameters():
        g[...] = rng.standard_normal(g.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(lr=1e-3, weight_decay=1e-4),
                                dict(lr=0.05, alpha=0.9, eps=1e-6, weight_decay=0.3),
                                dict()])
def test_matches_torch_rmsprop(torch, dtype, kw):
    # dict(): our defaults; torch's default lr is 1e-2, ours 1e-3 (the paper's), so pass it.
    rng = np.random.default_rng(0)
    model = Tiny(rng, dtype)
    tparams = {n: torch.tensor(p.copy(), requires_grad=True)
               for n, p, _ in model.named_parameters()}
    opt = RMSprop(model.named_parameters(), **kw)
    topt = torch.optim.RMSprop(list(tparams.values()), **(kw or dict(lr=1e-3)))
    grad_rng = np.random.default_rng(1)
    for _ in range(6):
        _fill_grads(model, grad_rng)
        for n, _, g in model.named_parameters():
            tparams[n].grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    for n, p, _ in model.named_parameters():
        assert p.dtype == dtype
        np.testing.assert_allclose(p, tparams[n].detach().numpy(), rtol=0,
                                   atol=TORCH_TOL[dtype], err_msg=n)
        np.testing.assert_allclose(opt.square_avg[n], topt.state[tparams[n]]["square_avg"],
                                   rtol=1e-6 if dtype == np.float32 else 1e-12, err_msg=n)


def test_exponential_lr_matches_torch(torch):
    opt = RMSprop(Tiny(np.random.default_rng(0)).named_parameters(), lr=1e-3)
    sched = ExponentialLR(opt, gamma=0.995)
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.RMSprop([p], lr=1e-3)
    tsched = torch.optim.lr_scheduler.ExponentialLR(topt, gamma=0.995)
    assert sched.last_epoch == tsched.last_epoch == 0
    for _ in range(25):
        topt.step()          # torch warns if the scheduler steps before the optimiser
        sched.step()
        tsched.step()
        assert sched.last_epoch == tsched.last_epoch
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-15)
    assert opt.lr == pytest.approx(1e-3 * 0.995 ** 25, rel=1e-13)
    assert sched.get_last_lr() == opt.lr


def test_training_moves_to_minimum():
    """RMSprop on a quadratic ½‖θ − c‖² gets close to c (sanity, independent of torch)."""
    c = np.array([3.0, -2.0, 0.5])
    theta = np.zeros(3)
    grad = np.zeros(3)
    opt = RMSprop([("theta", theta, grad)], lr=0.01)
    for _ in range(2000):
        grad[...] = theta - c
        opt.step()
    np.testing.assert_allclose(theta, c, atol=0.02)


def test_state_dict_round_trip_continues_identically(tmp_path):
    rng = np.random.default_rng(0)
    a = Tiny(rng)
    b = Tiny(np.random.default_rng(99))          # different starting weights
    opt_a = RMSprop(a.named_parameters(), lr=0.01, weight_decay=1e-4)
    sched_a = ExponentialLR(opt_a, gamma=0.9)
    grads = np.random.default_rng(5)
    for _ in range(3):
        _fill_grads(a, grads)
        opt_a.step()
        sched_a.step()
    # save model + optimiser + scheduler through an .npz file, as a checkpoint would
    path = tmp_path / "ckpt.npz"
    def prefixed(prefix, d):
        return {f"{prefix}/{k}": v for k, v in d.items()}

    def section(d, prefix):
        return {k[len(prefix) + 1:]: v for k, v in d.items() if k.startswith(prefix + "/")}

    np.savez(path, **prefixed("model", a.state_dict()), **prefixed("optim", opt_a.state_dict()),
             **prefixed("sched", sched_a.state_dict()))
    loaded = dict(np.load(path))
    b.load_state_dict(section(loaded, "model"))
    opt_b = RMSprop(b.named_parameters(), lr=123.0, alpha=0.5)   # overwritten by the load
    sched_b = ExponentialLR(opt_b, gamma=0.5)
    opt_b.load_state_dict(section(loaded, "optim"))
    sched_b.load_state_dict(section(loaded, "sched"))
    assert opt_b.lr == opt_a.lr and opt_b.alpha == opt_a.alpha and opt_b.steps == 3
    assert sched_b.last_epoch == 3 and sched_b.gamma == 0.9
    g1, g2 = np.random.default_rng(6), np.random.default_rng(6)
    for _ in range(4):
        _fill_grads(a, g1)
        _fill_grads(b, g2)
        opt_a.step(), opt_b.step()
        sched_a.step(), sched_b.step()
    for (n, pa, _), (_, pb, _) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa, pb, err_msg=n)
    assert opt_a.lr == opt_b.lr


def test_state_dict_is_a_copy():
    model = Tiny(np.random.default_rng(0))
    opt = RMSprop(model.named_parameters())
    _fill_grads(model, np.random.default_rng(1))
    opt.step()
    sd = opt.state_dict()
    before = sd["square_avg.weight"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["square_avg.weight"], before)
    assert set(sd) == {"lr", "alpha", "eps", "weight_decay", "steps", "square_avg.weight",
                       "square_avg.bias", "square_avg.child.weight"}


def test_load_state_dict_errors_leave_state_unchanged():
    model = Tiny(np.random.default_rng(0), np.float32)
    opt = RMSprop(model.named_parameters())
    good = opt.state_dict()
    missing = {k: v for k, v in good.items() if k != "square_avg.bias"}
    with pytest.raises(ValueError, match="'bias'"):
        opt.load_state_dict(missing)
    wrong = dict(good, **{"square_avg.child.weight": np.zeros(5)})
    with pytest.raises(ValueError, match=r"'child.weight'.*\(5,\).*\(4,\)"):
        opt.load_state_dict(wrong)
    with pytest.raises(ValueError, match="unexpected parameter 'extra'"):
        opt.load_state_dict(dict(good, **{"square_avg.extra": np.zeros(1)}))
    with pytest.raises(ValueError, match="'lr'"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "lr"})
    bad_lr = dict(good, lr=5.0, **{"square_avg.bias": np.zeros(7)})
    with pytest.raises(ValueError, match=r"'bias'.*\(7,\)"):      # lr 5.0 is fine
        opt.load_state_dict(bad_lr)
    # values no run can have written: each accepted before, and made NaN weights or a bare
    # error after part of the state had changed
    shape = good["square_avg.bias"].shape
    for change, says in (({"square_avg.bias": -np.ones(shape)}, "finite numbers >= 0"),
                         ({"square_avg.bias": np.full(shape, np.nan)}, "finite numbers >= 0"),
                         ({"lr": 5.0, "steps": "abc"}, "'steps' is not a number"),
                         ({"lr": np.ones(2)}, "'lr' is not a number"),
                         ({"lr": 5.0, "steps": -1}, "'steps' must be a whole number >= 0"),
                         ({"steps": 2.5}, "'steps' must be a whole number"),    # was cut to 2
                         ({"steps": np.inf}, "'steps' must be a whole number"),
                         # finite in float64, inf in the float32 of the model: every step
                         # would then divide by inf and freeze the weight, silently
                         ({"square_avg.bias": np.full(shape, 1e300)}, "too large for float32")):
        with pytest.raises(ValueError, match=says):
            opt.load_state_dict(dict(good, **change))
    assert opt.lr == 1e-3                        # nothing applied by a failed load
    sched = ExponentialLR(opt, 0.9)
    for state, says in (({"gamma": -3, "base_lr": 0.1, "last_epoch": 0}, "gamma > 0"),
                        ({"gamma": "x", "base_lr": 0.1, "last_epoch": 0}, "must be numbers"),
                        ({"gamma": 0.9, "base_lr": 0.1, "last_epoch": 2.5}, "must be numbers"),
                        ({"gamma": 0.9, "base_lr": 0.1, "last_epoch": np.inf},
                         "must be numbers")):
        with pytest.raises(ValueError, match=says):
            sched.load_state_dict(state)
    assert sched.gamma == 0.9


def test_read_only_and_shared_arrays_are_refused():
    """A read-only parameter failed inside numba at the first step; one array given under two
    names was updated twice per step, silently."""
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(6).astype(np.float32), np.zeros(6, np.float32)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="parameter 'w'.*read-only"):
        RMSprop([("w", ro, g)])
    with pytest.raises(ValueError, match="parameter 'a' and parameter 'b' share memory"):
        RMSprop([("a", p, g), ("b", p, np.zeros(6, np.float32))])
    with pytest.raises(ValueError, match="share memory"):        # a gradient inside a parameter
        RMSprop([("a", p, p)])
    halves = np.zeros(6, np.float32)
    RMSprop([("a", p[:3].copy(), halves[:3]), ("b", p[3:].copy(), halves[3:])])  # side by side


def test_zero_grad_and_generator_and_shared_memory():
    model = Tiny(np.random.default_rng(0))
    opt = RMSprop(model.named_parameters())      # a generator, not a list
    _fill_grads(model, np.random.default_rng(1))
    before = model.params["weight"].copy()
    opt.step()
    assert not np.array_equal(model.params["weight"], before)   # updated the layer's array
    opt.zero_grad()
    assert all(not g.any() for _, _, g in model.named_parameters())


@pytest.mark.parametrize("kw,match", [(dict(lr=-1.0), "lr"), (dict(alpha=1.0), "alpha"),
                                      (dict(alpha=-0.1), "alpha"), (dict(eps=0.0), "eps"),
                                      (dict(weight_decay=-1e-4), "weight_decay"),
                                      (dict(lr=float("nan")), "lr"), (dict(lr="0.1"), "lr")])
def test_hyper_parameter_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        RMSprop(Tiny(np.random.default_rng(0)).named_parameters(), **kw)


def test_param_validation():
    p = np.zeros((2, 3))
    with pytest.raises(ValueError, match="empty"):
        RMSprop([])
    with pytest.raises(ValueError, match="triples"):
        RMSprop([p])
    # the layer itself, or something not iterable, was a bare "is not iterable" TypeError
    with pytest.raises(ValueError, match=r"pass Tiny.named_parameters\(\)"):
        RMSprop(Tiny(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="iterable of .* triples, got int"):
        RMSprop(3)
    with pytest.raises(ValueError, match="twice"):
        RMSprop([("a", p, np.zeros_like(p)), ("a", p, np.zeros_like(p))])
    with pytest.raises(ValueError, match=r"gradient of 'a'.*\(3, 2\)"):
        RMSprop([("a", p, np.zeros((3, 2)))])
    with pytest.raises(ValueError, match="contiguous"):
        RMSprop([("a", p.T, np.zeros((3, 2)).T)])
    with pytest.raises(ValueError, match="float32 or float64"):
        RMSprop([("a", np.zeros(3, int), np.zeros(3, int))])


@pytest.mark.parametrize("gamma", [0.0, -0.5, float("inf"), "0.9"])
def test_scheduler_validation(gamma):
    opt = RMSprop([("a", np.zeros(2), np.zeros(2))])
    with pytest.raises(ValueError, match="gamma"):
        ExponentialLR(opt, gamma=gamma)
    assert math.isclose(ExponentialLR(opt).gamma, 0.995)


def test_a_schedule_of_a_zero_learning_rate_reloads_its_own_state():
    """RMSprop takes lr = 0 (a frozen run), but ExponentialLR refused its own state dict
    ('needs base_lr > 0'): a resumed frozen run could not restore its schedule."""
    opt = RMSprop(Tiny(np.random.default_rng(0)).named_parameters(), lr=0.0)
    sched = ExponentialLR(opt, 0.9)
    sched.step()
    again = ExponentialLR(opt, 0.9)
    again.load_state_dict(sched.state_dict())
    assert (again.base_lr, again.last_epoch) == (0.0, 1)
    with pytest.raises(ValueError, match="base_lr >= 0"):
        again.load_state_dict(dict(sched.state_dict(), base_lr=-1.0))



def test_defaults_are_pytorchs_except_the_papers_learning_rate():
    """alpha 0.99, eps 1e-8, no weight decay: torch.optim.RMSprop's defaults; lr 1e-3, the
    Tiramisu paper's (PyTorch's is 1e-2). Held without PyTorch too: the comparison with
    torch.optim.RMSprop runs only where it is installed (mutation audit, 2026-11-28)."""
    opt = RMSprop(Tiny(np.random.default_rng(0)).named_parameters())
    assert (opt.lr, opt.alpha, opt.eps, opt.weight_decay) == (1e-3, 0.99, 1e-8, 0.0)
