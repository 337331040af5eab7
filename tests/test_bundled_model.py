"""The bundled model, tinyseg/weights/person.npz: it is there on a fresh clone, it cuts out a
photo with no data and no network, and (with the data) it scores what the README says.

The README's figures for it (validation IoU 0.582, test person IoU 0.612 on the 'default'
filter and 0.514 on 'wide') are checked here against a fresh evaluation, so that replacing
the weights without updating the README fails a test.  Tolerance 1e-3: the figures are
printed to three decimals, and evaluation with another thread count may round a few
borderline pixels differently.
"""
import numpy as np
import pytest

from tinyseg.checkpoint import default_weights, load_model, read
from tinyseg.cutout import alpha_from_probability, compose
from tinyseg.infer import Predictor, photo_probability
from tinyseg.tiramisu import tiramisu_small

README_FIGURES = {"val_default": 0.582, "test_default": 0.612, "test_wide": 0.514}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """Whole inference loops: one numba thread (see conftest)."""


def test_the_bundled_model_is_a_small_model_checkpoint():
    path = default_weights()
    assert path.is_file(), f"{path} missing: the package ships without its model"
    assert path.stat().st_size < 5 * 2**20, "the bundled model should stay a few MB"
    config, weights, meta, state, optim = read(path)
    assert state is None and not optim, "ship best.npz (weights), not a training checkpoint"
    model, info = load_model(path)
    assert info["size"] == 96 and info["train"]["model"] == "tiramisu_small"
    # the same architecture as the preset it was trained as, parameter for parameter
    preset = dict(tiramisu_small().state_dict())
    assert set(preset) == set(weights)
    assert all(preset[k].shape == weights[k].shape for k in preset)
    assert model.num_parameters() == 853_970
    assert np.all(np.isfinite(info["mean"])) and np.all(info["std"] > 0)


def test_the_bundled_model_cuts_out_a_photo_without_data():
    # a synthetic "photo" with an odd size and aspect: a bright figure on a dark background
    rng = np.random.default_rng(0)
    h, w = 151, 97
    rgb = (rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb[((yy - 70) / 55) ** 2 + ((xx - 48) / 25) ** 2 < 1] = (210, 160, 140)
    predictor = Predictor.from_file(default_weights())
    p = photo_probability(predictor, rgb)
    assert p.shape == (h, w) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1)) and np.isfinite(p).all()
    rgba = np.asarray(compose(rgb, alpha_from_probability(p)))
    assert rgba.shape == (h, w, 4)
    kept = rgba[..., 3] == 255        # the photo where the person is kept, no colour elsewhere
    assert np.array_equal(rgba[..., :3][kept], rgb[kept]) and not rgba[..., :3][~kept].any()
    assert set(np.unique(rgba[..., 3])) <= {0, 255}


@pytest.mark.slow
def test_the_bundled_model_scores_what_the_readme_says(coco_root):
    from tinyseg.data import FILTER_PRESETS, load_split
    from tinyseg.evaluate import evaluate_dataset

    model, info = load_model(default_weights())
    assert info["val_iou"] == pytest.approx(README_FIGURES["val_default"], abs=5e-4)
    scores = {}
    for split, name in (("val", "default"), ("test", "default"), ("test", "wide")):
        ds = load_split(coco_root, split, info["size"], FILTER_PRESETS[name], progress=False)
        ev = evaluate_dataset(model, ds.images, ds.masks, ds.boxes, info["mean"], info["std"])
        scores[f"{split}_{name}"] = ev.person_iou
    # validation: the number that chose this checkpoint, recomputed from its weights
    assert scores["val_default"] == pytest.approx(info["val_iou"], abs=1e-3)
    for key, figure in README_FIGURES.items():
        assert scores[key] == pytest.approx(figure, abs=1e-3), (key, scores[key])
