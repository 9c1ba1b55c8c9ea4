"""The imagemask tree in its readers' hands: datasets' imagefolder, OpenCV and Pillow, against the reference.

Every mask style, `--image-format jpg`, `--size` and `--config folds`: each tree is read by the readers'
own public code and compared pixel by pixel with tests/reference.py (masks from the raw channels).
"""

import json
import os
import shutil

import cv2
import datasets
import numpy as np
import pytest
from pannuke_fixtures import THREE_FOLD_PATCHES, part1_members, raw_fold
from PIL import Image
from reference import reference_image, reference_labels, reference_mask

from convert.__main__ import main

STYLES = ("color", "semantic", "binary", "instance")
CLASS_NAMES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
# What imagefolder makes of a tree, written out: the two files as Image columns, then the metadata.
FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "id": datasets.Value("string"),
        "fold": datasets.Value("int64"),
        "index": datasets.Value("int64"),
        "tissue": datasets.Value("string"),
        **{f"n_{name}": datasets.Value("int64") for name in CLASS_NAMES},
        "n_nuclei": datasets.Value("int64"),
    }
)
READ_AS = {"color": "RGB", "semantic": "L", "binary": "L"}  # Pillow's convert() of each style
MASK_DTYPES = {"color": np.uint8, "semantic": np.uint8, "binary": np.uint8, "instance": np.uint16}
FOLD_SOURCES = {1: ("", "kaggle"), 2: ("fold_2", "kaggle-flat"), 3: ("", "official")}  # see tests/conftest.py


@pytest.fixture(scope="module")
def trees(export_tree):
    """{name: tree}: the four mask styles, JPEG images, --size 128 and the folds config."""
    options = {style: ("--mask-style", style) for style in STYLES}
    options["color"] = ()  # the default: the tree the other tests share
    options["jpg"] = ("--mask-style", "semantic", "--image-format", "jpg")
    options["size"] = ("--mask-style", "instance", "--size", "128")
    trees = {name: export_tree("imagemask", *extra) for name, extra in options.items()}
    trees["folds"] = export_tree("imagemask", "--mask-style", "semantic", config="folds")
    return trees


@pytest.fixture(scope="module")
def part1_splits():
    """{split: [(fold, index), ...]} in the tree's row order, from the reference split."""
    return dict(zip(("train", "validation", "test"), part1_members().values()))


def _load(tree, tmp_path, **kwargs):
    return datasets.load_dataset("imagefolder", data_dir=str(tree), cache_dir=str(tmp_path / "hf"), **kwargs)


def _assert_rows(ds, members, raw_by_fold, style, image_of=None, size=256):
    """Each row of an imagefolder split: its id, metadata, image and mask, against the reference."""
    assert ds.num_rows == len(members)
    assert ds["id"] == [f"fold{fold}_{index:05d}" for fold, index in members]
    for row, (fold, index) in zip(ds, members):
        images, masks, tissues = raw_by_fold[fold]
        nuclei = reference_labels(np.asarray(masks[index]))[2]
        assert (row["fold"], row["index"], row["tissue"]) == (fold, index, tissues[index])
        counts = [sum(1 for n in nuclei if n["label"] == k) for k in range(5)]
        assert [row[f"n_{name}"] for name in CLASS_NAMES] == counts and row["n_nuclei"] == len(nuclei)
        image, mask = np.asarray(row["image"]), np.asarray(row["mask"])
        expected_image = reference_image(images[index]) if image_of is None else image_of(row["id"], images[index])
        np.testing.assert_array_equal(image, expected_image)
        expected_mask = reference_mask(style, np.asarray(masks[index]))
        if size != 256:  # nearest neighbour, halving: the centre of each 2x2 block
            expected_mask = expected_mask[1::2, 1::2]
        assert mask.dtype == MASK_DTYPES[style]
        np.testing.assert_array_equal(mask, expected_mask)


@pytest.mark.parametrize("style", STYLES)
def test_imagefolder_loads_every_mask_style_as_the_reference(style, trees, part1_splits, kaggle_part1, tmp_path):
    loaded = _load(trees[style], tmp_path)
    assert list(loaded) == ["train", "validation", "test"]  # `valid` is imagefolder's validation
    assert {split: ds.num_rows for split, ds in loaded.items()} == {"train": 19, "validation": 4, "test": 1}
    assert json.loads((trees[style] / "export.json").read_text())["splits"] == {"train": 19, "valid": 4, "test": 1}
    raw = {1: raw_fold(kaggle_part1)}
    for split, ds in loaded.items():
        assert ds.features == FEATURES
        _assert_rows(ds, part1_splits[split], raw, style)


def test_imagefolder_reads_jpeg_images_as_exported(trees, part1_splits, kaggle_part1, tmp_path):
    tree = trees["jpg"]
    folders = {"train": "train", "validation": "valid", "test": "test"}
    loaded = _load(tree, tmp_path)
    raw = {1: raw_fold(kaggle_part1)}
    for split, ds in loaded.items():

        def exported(patch_id, source, folder=folders[split]):
            with Image.open(tree / folder / "images" / f"{patch_id}.jpg") as image:
                assert image.format == "JPEG"
                pixels = np.asarray(image.convert("RGB"))
            assert np.abs(pixels.astype(int) - reference_image(source)).mean() < 4.0  # verify's tolerance
            return pixels

        assert ds.features == FEATURES
        _assert_rows(ds, part1_splits[split], raw, "semantic", image_of=exported)


def test_imagefolder_reads_resized_trees(trees, part1_splits, kaggle_part1, tmp_path):
    def lanczos(patch_id, source):
        return np.asarray(Image.fromarray(reference_image(source)).resize((128, 128), Image.Resampling.LANCZOS))

    loaded = _load(trees["size"], tmp_path)
    raw = {1: raw_fold(kaggle_part1)}
    for split, ds in loaded.items():
        _assert_rows(ds, part1_splits[split], raw, "instance", image_of=lanczos, size=128)


def test_imagefolder_reads_the_folds_config_as_three_splits(trees, three_folds, tmp_path):
    tree = trees["folds"]
    raw = {fold: raw_fold(os.path.join(three_folds, sub), fold, layout) for fold, (sub, layout) in FOLD_SOURCES.items()}
    # fold1..3 are not split names imagefolder knows: data_files names them (the docs' line).
    loaded = _load(tree, tmp_path, data_files={f"fold{k}": f"fold{k}/**" for k in (1, 2, 3)})
    assert {split: ds.num_rows for split, ds in loaded.items()} == {
        f"fold{k}": n for k, n in THREE_FOLD_PATCHES.items()
    }
    for fold in (1, 2, 3):
        members = [(fold, index) for index in range(THREE_FOLD_PATCHES[fold])]
        _assert_rows(loaded[f"fold{fold}"], members, raw, "semantic")
    # Without data_files, imagefolder puts every file of the tree in one `train` split (the docs say so).
    pooled = _load(tree, tmp_path)
    assert list(pooled) == ["train"] and pooled["train"].num_rows == sum(THREE_FOLD_PATCHES.values())


def _mask_files(tree, members, folder):
    return [(tree / folder / "masks" / f"fold{fold}_{index:05d}.png", index) for fold, index in members]


@pytest.mark.parametrize("style", STYLES)
def test_opencv_and_pillow_read_every_mask_style_as_the_reference(style, trees, part1_splits, kaggle_part1):
    _, masks, _ = raw_fold(kaggle_part1)
    folders = {"train": "train", "validation": "valid", "test": "test"}
    for split, members in part1_splits.items():
        for path, index in _mask_files(trees[style], members, folders[split]):
            expected = reference_mask(style, np.asarray(masks[index]))
            unchanged = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            with Image.open(path) as image:
                pillow = np.asarray(image)
                converted = None if style == "instance" else np.asarray(image.convert(READ_AS[style]))
            if style == "color":  # OpenCV gives BGR
                np.testing.assert_array_equal(unchanged[..., ::-1], expected)
                np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1], expected)
            else:  # one channel, 8 or 16 bits, as stored
                assert unchanged.dtype == expected.dtype and unchanged.shape == (256, 256)
                np.testing.assert_array_equal(unchanged, expected)
            if style in ("semantic", "binary"):
                np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), expected)
            assert pillow.dtype == expected.dtype
            np.testing.assert_array_equal(pillow, expected)
            if converted is not None:  # convert("L"): what fastai's PILMask and keras' load_img(grayscale) do
                np.testing.assert_array_equal(converted, expected)


def test_semantic_masks_are_single_channel_8_bit_png_without_palette(trees):
    path = trees["semantic"] / "train" / "masks" / "fold1_00000.png"
    data = path.read_bytes()
    # IHDR: width, height, bit depth 8, colour type 0 (greyscale); no PLTE chunk anywhere.
    assert data[12:16] == b"IHDR" and data[16:24] == (256).to_bytes(4, "big") * 2 and data[24:26] == bytes([8, 0])
    assert b"PLTE" not in data
    with Image.open(path) as image:
        assert image.mode == "L" and image.palette is None
    assert sorted(np.unique(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)).tolist()) == [0, 1, 2, 3, 4, 5]


def test_instance_masks_are_16_bit_greyscale(trees):
    data = (trees["instance"] / "train" / "masks" / "fold1_00000.png").read_bytes()
    assert data[24:26] == bytes([16, 0])  # bit depth 16, colour type 0
    small = (trees["size"] / "train" / "masks" / "fold1_00000.png").read_bytes()
    assert small[16:24] == (128).to_bytes(4, "big") * 2 and small[24:26] == bytes([16, 0])


def test_verify_names_a_changed_missing_or_reordered_metadata_file(trees, cache, tmp_path, capsys):
    tree = tmp_path / "tree"
    shutil.copytree(trees["semantic"], tree)
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 0
    (tree / "test" / "metadata.jsonl").unlink()
    valid = tree / "valid" / "metadata.jsonl"
    lines = valid.read_text().splitlines(keepends=True)
    valid.write_text("".join(lines[1:] + lines[:1]))
    train = tree / "train" / "metadata.jsonl"
    first = train.read_text().splitlines(keepends=True)
    train.write_text("not a row\n")
    capsys.readouterr()
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "test/metadata.jsonl: missing"
    assert out[1 : 1 + len(first)] == [
        f"train/metadata.jsonl: row missing or changed: {line.rstrip()}" for line in first
    ]
    assert out[1 + len(first) :] == [
        "train/metadata.jsonl: unexpected row: not a row",
        "valid/metadata.jsonl: rows not in the expected order",
    ]
    valid.write_text("".join(lines + lines[:1]))
    train.write_text("".join(first))
    shutil.copy(trees["semantic"] / "test" / "metadata.jsonl", tree / "test" / "metadata.jsonl")
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"valid/metadata.jsonl: {len(lines) + 1} rows, expected {len(lines)} (a row is repeated)"
    ]


def test_a_tree_written_by_1_0_verifies_as_imagemask_and_says_to_export_again(trees, cache, tmp_path, capsys):
    tree = tmp_path / "old"
    shutil.copytree(trees["semantic"], tree)
    manifest = json.loads((tree / "export.json").read_text())
    del manifest["version"], manifest["format"]  # as 1.0 wrote it: no version, no format
    (tree / "export.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "export.json: written by 1.0.0; imagemask files changed in 1.3.0: export again"
    ]
