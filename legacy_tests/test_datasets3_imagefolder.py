"""Under datasets 3.x: load_dataset("imagefolder", data_dir=TREE) reads an imagemask export exactly.

The trees are written by legacy_tests/make_expected.py in the main environment (every mask style,
JPEG images, --size 128, --config folds); here datasets 3.6 reads them, and every pixel and metadata
value is compared with tests/reference.py's computation from the raw fake folds.
"""

import os

import datasets
import numpy as np
import pytest
from PIL import Image
from reference import (  # tests/ is on pytest's pythonpath
    CLASS_NAMES,
    MASK_DTYPES,
    imagefolder_features,
    reference_image,
    reference_labels,
    reference_mask,
)

from convert.sample import fold_paths

FIXTURE = os.environ.get("PANNUKE_LEGACY_DIR")
FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
FOLD_PATCHES = {1: 24, 2: 22, 3: 23}  # as make_expected.py writes data3
FEATURES = imagefolder_features(datasets)


def _raw(data_dir, fold):
    paths = fold_paths(data_dir, fold, "kaggle")
    images, masks = (np.load(paths[key], mmap_mode="r", allow_pickle=False) for key in ("images", "masks"))
    return images, masks, np.load(paths["types"], allow_pickle=False).tolist()


def _load(name, tmp_path, **kwargs):
    tree = os.path.join(FIXTURE, "imagemask", name)
    return datasets.load_dataset("imagefolder", data_dir=tree, cache_dir=str(tmp_path / "cache"), **kwargs)


def _assert_rows(ds, ids, raw, style, image_of=None, size=256):
    assert datasets.__version__.startswith("3.")
    assert ds.features == FEATURES
    assert ds["id"] == ids
    for row in ds:
        fold, index = int(row["id"][4]), int(row["id"][6:])
        images, masks, tissues = raw[fold]
        nuclei = reference_labels(np.asarray(masks[index]))[2]
        assert (row["fold"], row["index"], row["tissue"]) == (fold, index, tissues[index])
        assert [row[f"n_{name}"] for name in CLASS_NAMES] == [sum(n["label"] == k for n in nuclei) for k in range(5)]
        assert row["n_nuclei"] == len(nuclei)
        image = reference_image(images[index]) if image_of is None else image_of(row["id"], images[index])
        np.testing.assert_array_equal(np.asarray(row["image"]), image)
        mask = reference_mask(style, np.asarray(masks[index]))
        mask = mask if size == 256 else mask[1::2, 1::2]  # nearest neighbour, halving
        assert np.asarray(row["mask"]).dtype == MASK_DTYPES[style]
        np.testing.assert_array_equal(np.asarray(row["mask"]), mask)


@pytest.mark.parametrize("style", ["color", "semantic", "binary", "instance"])
def test_imagefolder_loads_every_mask_style(style, expected, tmp_path):
    loaded = _load(style, tmp_path)
    assert list(loaded) == list(expected["splits"]) == ["train", "validation", "test"]
    raw = {1: _raw(os.path.join(FIXTURE, "data"), 1)}
    for split, rows in expected["splits"].items():
        _assert_rows(loaded[split], [r["id"] for r in rows], raw, style)


def test_imagefolder_reads_jpeg_images_as_exported(expected, tmp_path):
    loaded = _load("jpg", tmp_path)
    raw = {1: _raw(os.path.join(FIXTURE, "data"), 1)}
    for split, rows in expected["splits"].items():

        def exported(patch_id, source, folder=FOLDERS[split]):
            with Image.open(os.path.join(FIXTURE, "imagemask", "jpg", folder, "images", f"{patch_id}.jpg")) as image:
                assert image.format == "JPEG"
                pixels = np.asarray(image.convert("RGB"))
            assert np.abs(pixels.astype(int) - reference_image(source)).mean() < 4.0  # verify's tolerance
            return pixels

        _assert_rows(loaded[split], [r["id"] for r in rows], raw, "semantic", image_of=exported)


def test_imagefolder_reads_a_resized_tree(expected, tmp_path):
    def lanczos(patch_id, source):
        return np.asarray(Image.fromarray(reference_image(source)).resize((128, 128), Image.Resampling.LANCZOS))

    loaded = _load("size", tmp_path)
    raw = {1: _raw(os.path.join(FIXTURE, "data"), 1)}
    for split, rows in expected["splits"].items():
        _assert_rows(loaded[split], [r["id"] for r in rows], raw, "instance", image_of=lanczos, size=128)


def test_imagefolder_reads_the_folds_config_as_three_splits(tmp_path):
    loaded = _load("folds", tmp_path, data_files={f"fold{k}": f"fold{k}/**" for k in (1, 2, 3)})
    assert {split: ds.num_rows for split, ds in loaded.items()} == {f"fold{k}": n for k, n in FOLD_PATCHES.items()}
    raw = {fold: _raw(os.path.join(FIXTURE, "data3"), fold) for fold in FOLD_PATCHES}
    for fold, patches in FOLD_PATCHES.items():
        _assert_rows(loaded[f"fold{fold}"], [f"fold{fold}_{i:05d}" for i in range(patches)], raw, "semantic")
