"""Fake PanNuke folds in the real on-disk format, for the built-in sample, the tests and the benchmark.

The pixels are synthetic; the format is not: float64 arrays of (N, 256, 256, 3) and (N, 256, 256, 6),
a `<U13` types.npy, the Kaggle or official folder layout, and every quirk of the real masks
(non-consecutive ids above 255, one id in two class channels, pixels in two class channels,
an id in two pieces, a nucleus wholly covered by another class, void and empty patches).
"""

import os

import numpy as np

from pannuke_imagemask import PATCH_SIZE, TISSUES

LAYOUTS = ("kaggle", "kaggle-flat", "official")
SAMPLE_PATCHES = 36
# Bump whenever the sample's files change (fake_patch, fake_tissues, SAMPLE_PATCHES): a sample cached under an
# older version is then not reused. tests/test_common.py holds a digest of the current files.
SAMPLE_VERSION = 2
SAMPLE_FOLDER = "pannuke_imagemask_sample"  # in the datasets cache: SAMPLE_FOLDER/v{SAMPLE_VERSION}/Part N

# Patch roles by row: row 1 is void (channel 5 all zero, no nuclei), row 2 empty (background only).
VOID_ROW, EMPTY_ROW = 1, 2


def kaggle_fold_dir(root, fold):
    """The folder of one fold in the Kaggle layout."""
    return os.path.join(root, f"Part {fold}")


def fold_paths(root, fold, layout):
    """Where each file of a fold goes in a layout, as {"images", "masks", "types"} paths."""
    if layout == "kaggle":
        base = kaggle_fold_dir(root, fold)
        images_dir, masks_dir = os.path.join(base, "Images"), os.path.join(base, "Masks")
    elif layout == "kaggle-flat":
        images_dir, masks_dir = os.path.join(root, "Images"), os.path.join(root, "Masks")
    elif layout == "official":
        base = os.path.join(root, f"Fold {fold}")
        images_dir = os.path.join(base, "images", f"fold{fold}")
        masks_dir = os.path.join(base, "masks", f"fold{fold}")
    else:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    return {
        "images": os.path.join(images_dir, "images.npy"),
        "masks": os.path.join(masks_dir, "masks.npy"),
        "types": os.path.join(images_dir, "types.npy"),
    }


# Run lengths chosen so that any fold of 22 or more patches has all three splits non-empty.
_RUNS = (20, 16, 3, 1, 5, 2)


def fake_tissues(n, fold):
    """Contiguous runs of tissues, Breast first, as in every real fold."""
    rng = np.random.default_rng(1000 + fold)
    order = ["Breast"] + [t for t in rng.permutation(TISSUES).tolist() if t != "Breast"]
    tissues, k = [], 0
    while len(tissues) < n:
        tissues.extend([order[k % len(order)]] * _RUNS[k % len(_RUNS)])
        k += 1
    return tissues[:n]


def _disk(cy, cx, r):
    yy, xx = np.ogrid[:PATCH_SIZE, :PATCH_SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def fake_patch(fold, index):
    """One (image float64 (256, 256, 3), mask float64 (256, 256, 6)) pair, deterministic in (fold, index)."""
    rng = np.random.default_rng([fold, index])
    image = np.empty((PATCH_SIZE, PATCH_SIZE, 3))
    image[...] = (236, 190, 220)  # eosin pink
    image += rng.normal(0, 12, size=image.shape)
    mask = np.zeros((PATCH_SIZE, PATCH_SIZE, 6))
    if index not in (VOID_ROW, EMPTY_ROW):
        ids = rng.choice(np.arange(1, 3521), size=48, replace=False)
        ids[0] = 3517  # above 255 and above 3,500, as in the real data
        count = int(rng.integers(6, 30))
        for k in range(count):
            channel = int(rng.choice(5, p=[0.4, 0.2, 0.25, 0.05, 0.1]))
            region = _disk(rng.integers(10, 246), rng.integers(10, 246), rng.integers(3, 10))
            mask[..., channel][region] = ids[k]
        # The quirks, at fixed places so every patch has them:
        mask[..., 0][_disk(30, 30, 8)] = ids[40]  # neoplastic id X ...
        mask[..., 1][_disk(30, 200, 6)] = ids[40]  # ... and inflammatory id X: two nuclei
        mask[..., 2][_disk(36, 36, 7)] = ids[41]  # overlaps the first: both channels non-zero
        mask[..., 4][_disk(200, 30, 5) | _disk(220, 60, 4)] = ids[42]  # one id, two pieces
        mask[..., 0][_disk(200, 200, 3)] = ids[43]  # wholly covered by a dead nucleus: dropped
        mask[..., 3][_disk(200, 200, 7)] = ids[44]
        nuclei = mask[..., :5].any(axis=-1)
        image[nuclei] = image[nuclei] * 0.45 + np.array([40.0, 20.0, 90.0])  # haematoxylin purple
    if index != VOID_ROW:
        mask[..., 5] = (mask[..., :5] == 0).all(axis=-1)
    image = np.clip(np.rint(image), 0, 255)
    image[0, 0] = (255.0, 0.0, 0.0)  # the extremes of the range, and a pure red to catch RGB/BGR swaps
    return image, mask


def write_fold(root, fold, n, layout="kaggle"):
    """Write fake fold `fold` with n patches under root in a layout; return its file paths."""
    paths = fold_paths(root, fold, layout)
    for path in paths.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    images = np.lib.format.open_memmap(
        paths["images"], mode="w+", dtype=np.float64, shape=(n, PATCH_SIZE, PATCH_SIZE, 3)
    )
    masks = np.lib.format.open_memmap(paths["masks"], mode="w+", dtype=np.float64, shape=(n, PATCH_SIZE, PATCH_SIZE, 6))
    for index in range(n):
        images[index], masks[index] = fake_patch(fold, index)
    images.flush()
    masks.flush()
    del images, masks
    np.save(paths["types"], np.array(fake_tissues(n, fold), dtype="<U13"), allow_pickle=False)
    return paths
