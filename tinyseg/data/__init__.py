"""The data path: from a COCO directory to batches of images and person masks.

=================  ==========================================================================
``coco``           data root (a folder, or one .json: ``data_source``), annotation files
                   (pycocotools), the filter steps, masks, split
``images``         reading any image as RGB; the letterbox resizing policy
``cache``          ``load_split`` -> ``Dataset``: letterboxed arrays cached as ``.npz``
``augment``        flips, zoom-and-crop, brightness / contrast / gamma, image and mask together
``batches``        ``normalize`` and the seeded epoch iterator ``batches``
``download``       COCO 2017 annotations and the filtered images, resumable and verified
``__main__``       ``python -m tinyseg.data info | show | download | bench``
``fixture``        tiny made-up COCO directories for tests and examples
``errors``         ``DataError`` (one-line user errors), ``DataWarning`` (images skipped,
                   degenerate annotations)
``progress``       progress lines on stderr
=================  ==========================================================================

Typical use (a plain epoch loop; ``tinyseg.train`` draws its batches with ``stream_indices``
and ``make_batch`` instead, so that a resumed run repeats them)::

    from tinyseg.data import load_split, batches
    # --data: a COCO folder or one .json file; None: $TINYSEG_DATA
    train = load_split(args.data, "train", 224)  # FilterConfig() = the seed's filters
    for x, y in batches(train, 8, rng, augment=True):
        ...                                      # x float32 (8, 3, 224, 224), y int64 (8, 224, 224)
"""
from .augment import AugmentConfig, augment
from .batches import batches, normalize
from .cache import Dataset, default_cache_dir, load_split, select
from .coco import (FILTER_PRESETS, SPLITS, FilterConfig, data_source, filter_images,
                   load_coco, resolve_data_root, split_of, union_mask)
from .download import DownloadError  # the function: tinyseg.data.download.download
from .errors import BadAnnotationWarning, BadImageWarning, DataError, DataWarning
from .images import PAD_RGB, RESIZE_POLICY, letterbox, read_image, unletterbox

__all__ = [
    "AugmentConfig", "augment", "batches", "normalize", "Dataset", "default_cache_dir",
    "load_split", "select", "FILTER_PRESETS", "SPLITS", "FilterConfig", "filter_images",
    "load_coco", "data_source", "resolve_data_root", "split_of", "union_mask",
    "DownloadError", "BadAnnotationWarning", "BadImageWarning", "DataError", "DataWarning",
    "PAD_RGB", "RESIZE_POLICY", "letterbox", "read_image", "unletterbox",
]
