"""tinyseg.data.batches: normalisation and the seeded epoch iterator."""
from types import SimpleNamespace

import numpy as np
import pytest

from tinyseg.data.batches import batches, normalize
from tinyseg.data.cache import Dataset


def _dataset(n=21, s=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, s, s, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # a tag: which sample is this
    masks = (rng.random((n, s, s)) < 0.3).astype(np.uint8)
    return Dataset(images=images, masks=masks, ids=np.arange(100, 100 + n),
                   mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.3])


def test_normalize_matches_the_formula(rng):
    x = rng.integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)
    mean = np.array([0.45, 0.41, 0.37], np.float32)
    std = np.array([0.28, 0.26, 0.27], np.float32)
    out = normalize(x, mean, std)
    assert out.dtype == np.float32 and out.shape == (3, 3, 5, 7) and out.flags.c_contiguous
    expect = ((x.astype(np.float64) / 255.0 - mean.astype(np.float64)) /
              std.astype(np.float64)).transpose(0, 3, 1, 2)
    # computed in float64, rounded once to float32: within one float32 rounding (6e-8 rel)
    np.testing.assert_allclose(out, expect, rtol=1.2e-7, atol=1e-7)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 4, 4, 3), np.float32), "uint8"),
    (np.zeros((2, 3, 4, 4), np.uint8), r"\(N, H, W, 3\)"),
    (np.zeros((4, 4, 3), np.uint8), "uint8 images"),
])
def test_normalize_rejects_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        normalize(bad, [0.5] * 3, [0.2] * 3)


def test_normalize_rejects_bad_statistics():
    x = np.zeros((1, 2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="3 values"):
        normalize(x, [0.5, 0.5], [0.2] * 3)
    with pytest.raises(ValueError, match="positive"):
        normalize(x, [0.5] * 3, [0.2, 0.0, 0.2])
    # all NaN, all 0, and a silently wrong picture (a second fuzzing helper)
    for mean, std in (([np.nan, 0.5, 0.5], [0.2] * 3), ([0.5] * 3, [np.inf, 0.2, 0.2])):
        with pytest.raises(ValueError, match="mean must be finite and std finite"):
            normalize(x, mean, std)
    with pytest.raises(ValueError, match="on the 0-255 scale"):
        normalize(x, [124, 116, 104], [58, 57, 57])


def test_one_epoch_visits_every_sample_once():
    ds = _dataset()
    got = []
    for x, y in batches(ds, 4, np.random.default_rng(0)):
        assert x.dtype == np.float32 and x.shape[1:] == (3, 16, 16)
        assert y.dtype == np.int64 and y.shape == (x.shape[0], 16, 16)
        tags = np.rint((x[:, 0, 0, 0] * ds.std[0] + ds.mean[0]) * 255).astype(int)
        got += tags.tolist()
        for t, yy in zip(tags, y):
            np.testing.assert_array_equal(yy, ds.masks[t])  # labels travel with images
    assert sorted(got) == list(range(21))
    sizes = [len(x) for x, _ in batches(ds, 4, np.random.default_rng(0))]
    assert sizes == [4, 4, 4, 4, 4, 1]
    sizes = [len(x) for x, _ in batches(ds, 4, np.random.default_rng(0), drop_last=True)]
    assert sizes == [4, 4, 4, 4, 4]


def _order(ds, rng, **kw):
    return [int(v) for x, _ in batches(ds, 5, rng, **kw)
            for v in np.rint((x[:, 0, 0, 0] * ds.std[0] + ds.mean[0]) * 255)]


def test_epochs_reshuffle_and_seeds_repeat():
    ds = _dataset()
    rng = np.random.default_rng(3)
    e1, e2 = _order(ds, rng), _order(ds, rng)
    assert e1 != e2 and sorted(e1) == sorted(e2)
    rng = np.random.default_rng(3)
    assert _order(ds, rng) == e1 and _order(ds, rng) == e2
    assert _order(ds, np.random.default_rng(0), shuffle=False) == list(range(21))


def test_augmented_batches_are_seeded_and_leave_the_dataset_alone():
    ds = _dataset(n=8, s=24)
    before = ds.images.copy()
    a = list(batches(ds, 4, np.random.default_rng(1), augment=True))
    b = list(batches(ds, 4, np.random.default_rng(1), augment=True))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ds.images, before)
    plain = list(batches(ds, 4, np.random.default_rng(1), augment=False))
    assert not np.array_equal(a[0][0], plain[0][0])
    assert set(np.unique(np.concatenate([y for _, y in a]))) <= {0, 1}


def test_bad_arguments():
    ds = _dataset()
    with pytest.raises(ValueError, match="batch_size"):
        batches(ds, 0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        batches(ds, 2, 42)
    for masks in (ds.masks[:, :8], ds.masks[:5]):   # were an IndexError, or yielded as they were
        odd = SimpleNamespace(images=ds.images, masks=masks, mean=ds.mean, std=ds.std)
        with pytest.raises(ValueError, match="batches: expected a dataset with images"):
            batches(odd, 2, np.random.default_rng(0), augment=False)

