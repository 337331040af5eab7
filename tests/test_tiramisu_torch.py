"""tinyseg's Tiramisu against the same network written in PyTorch (benchmarks/torch_tiramisu.py, shared with the benchmarks).

The PyTorch model is built from the tinyseg model's ``config`` and gets its weights by name
(``load_state_dict(strict=True)``, so every name must exist on both sides).  Float64 on both
sides; logits, the input gradient and every parameter gradient must agree to TOL = 1e-10
of the array's largest value (gradients: of the model's largest gradient), running
statistics to TOL.  Skipped without PyTorch.
"""
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))  # ``benchmarks`` is a top-level directory, not installed

from tinyseg.tiramisu import Tiramisu, TransitionUp

TOL = 1e-10


def close(a, b, scale=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = scale if scale is not None else max(np.abs(b).max(), 1e-30)
    return np.abs(a - b).max() <= TOL * scale


def make(efficient, **kw):
    args = dict(in_channels=3, num_classes=3, first_filters=8, growth_rate=4,
                layers=[2, 3, 1, 3, 2], pools=2, dropout=0.0, memory_efficient=efficient)
    args.update(kw)
    return Tiramisu(**args, rng=np.random.default_rng(0), dtype=np.float64)


@pytest.mark.parametrize("efficient", [True, False])
def test_logits_and_every_gradient_match_pytorch(torch, efficient):
    from benchmarks.torch_tiramisu import from_tinyseg

    model = make(efficient)
    net = from_tinyseg(model)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 16, 20))
    g = rng.standard_normal((2, 3, 16, 20))
    for step in range(2):  # step 2 starts from moved running statistics
        model.zero_grad()
        net.zero_grad()
        y = model.forward(x)
        dx = model.backward(g)
        xt = torch.from_numpy(x).requires_grad_()
        yt = net(xt)
        (yt * torch.from_numpy(g)).sum().backward()
        assert close(y, yt.detach().numpy()), step
        assert close(dx, xt.grad.numpy()), step
    tgrads = {n: p.grad.numpy() for n, p in net.named_parameters()}
    ours = {n: gr for n, _, gr in model.named_parameters()}
    assert set(ours) == set(tgrads)
    scale = max(np.abs(v).max() for v in tgrads.values())
    for name, gr in ours.items():
        assert close(gr, tgrads[name], scale), name
    tstate = net.state_dict()
    for name, v in model.state_dict().items():
        assert close(v, tstate[name].numpy(), 1.0 + np.abs(v).max()), name
    # eval mode: running statistics on both sides
    model.eval()
    net.eval()
    with torch.no_grad():
        assert close(model.forward(x), net(torch.from_numpy(x)).numpy())


def test_transition_up_centre_crop_matches_pytorch(torch):
    from benchmarks.torch_tiramisu import TransitionUp as TorchUp

    up = TransitionUp(4, 3, rng=np.random.default_rng(0), dtype=np.float64)
    tup = TorchUp(4, 3).double()
    tup.load_state_dict({k: torch.from_numpy(v) for k, v in up.state_dict().items()})
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3, 4))
    for hw in [(6, 8), (5, 7), (7, 9)]:
        skip = rng.standard_normal((2, 2) + hw)
        ours = up.forward(x, skip)
        theirs = tup(torch.from_numpy(x), torch.from_numpy(skip)).detach().numpy()
        assert close(ours, theirs), hw
