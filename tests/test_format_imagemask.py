"""The imagemask tree in its readers' hands: datasets' imagefolder, OpenCV and Pillow, against the reference.

Every mask style, `--image-format jpg`, `--size` and `--config folds`: each tree is read by the readers'
own public code and compared pixel by pixel with tests/reference.py (masks from the raw channels); then
the tree's files themselves: file sets, pixels, metadata.jsonl, and what verify names in it.
"""

import json
import os
import shutil

import cv2
import datasets
import numpy as np
import pytest
from pannuke_fixtures import PART1_PATCHES, THREE_FOLD_PATCHES, copy_tree, part1_members, raw_fold
from PIL import Image
from reference import (
    CLASS_NAMES,
    MASK_DTYPES,
    imagefolder_features,
    reference_image,
    reference_labels,
    reference_mask,
)

from convert.__main__ import main

STYLES = ("color", "semantic", "binary", "instance")
FEATURES = imagefolder_features(datasets)
READ_AS = {"color": "RGB", "semantic": "L", "binary": "L"}  # Pillow's convert() of each style
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


# --- the tree itself: file sets, pixels of every mask style and size, metadata, verify ---------------------


@pytest.fixture(scope="module")
def color_tree(export_tree):
    return export_tree("imagemask")  # the defaults: colour masks, PNG images, 256 pixels


def _expected_splits():
    return part1_members()  # {"train", "valid", "test": [(fold, index), ...]}


def _expected_mask(style, raw_mask):
    return reference_mask(style, np.asarray(raw_mask))


def test_file_sets_per_split_are_the_builders_splits(color_tree):
    assert sorted(os.listdir(color_tree)) == [
        "export.json",
        "samples.png",
        "statistics.png",
        "test",
        "train",
        "valid",
    ]
    for split, members in _expected_splits().items():
        ids = sorted(f"fold{f}_{i:05d}" for f, i in members)
        assert sorted(os.listdir(color_tree / split)) == ["images", "masks", "metadata.jsonl"]
        assert sorted(os.listdir(color_tree / split / "images")) == [f"{i}.png" for i in ids]
        assert sorted(os.listdir(color_tree / split / "masks")) == [f"{i}.png" for i in ids]


def test_images_are_pixel_exact_and_colour_masks_match_the_raw_channels(color_tree, kaggle_part1):
    images, masks, _ = raw_fold(kaggle_part1)
    for split, members in _expected_splits().items():
        for _, index in members:
            name = f"fold1_{index:05d}.png"
            with Image.open(color_tree / split / "images" / name) as image:
                assert image.mode == "RGB"
                np.testing.assert_array_equal(np.array(image), reference_image(images[index]))
            with Image.open(color_tree / split / "masks" / name) as mask:
                assert mask.mode == "RGB"
                np.testing.assert_array_equal(np.array(mask), _expected_mask("color", masks[index]))
    # Pixel (0, 0) of every fake image is pure red: a red/blue swap would show here.
    with Image.open(color_tree / "train" / "images" / "fold1_00000.png") as image:
        assert image.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("style, mode", [("semantic", "L"), ("binary", "L"), ("instance", "I;16")])
def test_every_mask_style_matches_the_raw_channels(style, mode, export_tree, kaggle_part1, cache):
    out = export_tree("imagemask", "--mask-style", style)
    _, masks, _ = raw_fold(kaggle_part1)
    for split, members in _expected_splits().items():
        for _, index in members:
            with Image.open(out / split / "masks" / f"fold1_{index:05d}.png") as mask:
                assert mask.mode == mode and mask.palette is None  # plain greyscale: no palette to misread
                np.testing.assert_array_equal(np.array(mask), _expected_mask(style, masks[index]))
    assert main(["verify", str(out), "--cache-dir", cache, "--quiet"]) == 0


@pytest.mark.parametrize("style", ["color", "semantic", "instance"])
def test_size_resizes_masks_by_nearest_neighbour_only(style, export_tree, kaggle_part1, cache):
    out = export_tree("imagemask", *(("--mask-style", style) if style != "color" else ()), "--size", "128")
    images, masks, _ = raw_fold(kaggle_part1)
    for split, members in _expected_splits().items():
        for _, index in members:
            name = f"fold1_{index:05d}.png"
            with Image.open(out / split / "images" / name) as image:
                assert image.size == (128, 128) and image.mode == "RGB"
                lanczos = Image.fromarray(reference_image(images[index])).resize((128, 128), Image.Resampling.LANCZOS)
                np.testing.assert_array_equal(np.array(image), np.array(lanczos))
            with Image.open(out / split / "masks" / name) as mask:
                small = np.array(mask)
                assert mask.mode == {"color": "RGB", "semantic": "L", "instance": "I;16"}[style]
            native = _expected_mask(style, masks[index])
            # Halving by nearest neighbour samples the centre of each 2x2 block: rows and columns 1, 3, 5, ...
            np.testing.assert_array_equal(small, native[1::2, 1::2])
    assert main(["verify", str(out), "--cache-dir", cache, "--quiet"]) == 0


def test_each_split_has_a_metadata_jsonl_listing_every_patch(color_tree, kaggle_part1):
    _, masks, tissues = raw_fold(kaggle_part1)
    for split, members in _expected_splits().items():
        text = (color_tree / split / "metadata.jsonl").read_text()
        expected = []
        for fold, index in sorted(members):
            nuclei = reference_labels(np.asarray(masks[index]))[2]
            pid = f"fold{fold}_{index:05d}"
            row = {"image_file_name": f"images/{pid}.png", "mask_file_name": f"masks/{pid}.png", "id": pid}
            row.update({"fold": fold, "index": index, "tissue": tissues[index]})
            row.update({f"n_{c}": sum(1 for n in nuclei if n["label"] == k) for k, c in enumerate(CLASS_NAMES)})
            expected.append({**row, "n_nuclei": len(nuclei)})
        lines = text.splitlines()
        assert [json.loads(line) for line in lines] == expected
        assert [list(json.loads(line)) for line in lines] == [list(row) for row in expected]  # column order
        assert text.endswith("\n") and "\r" not in text
    assert [len((color_tree / s / "metadata.jsonl").read_text().splitlines()) for s in ("train", "valid", "test")] == [
        19,
        4,
        1,
    ]


def test_jpeg_images_verify_within_tolerance(export_tree, kaggle_part1, cache):
    out = export_tree("imagemask", "--image-format", "jpg")
    images, _, _ = raw_fold(kaggle_part1)
    with Image.open(out / "train" / "images" / "fold1_00000.jpg") as image:
        assert image.format == "JPEG"
        error = np.abs(np.array(image).astype(int) - reference_image(images[0])).mean()
    assert error < 4.0
    assert min(os.listdir(out / "train" / "masks")) == "fold1_00000.png"
    assert main(["verify", str(out), "--cache-dir", cache, "--quiet"]) == 0


def test_verify_passes_then_names_each_corrupted_file(color_tree, cache, tmp_path, capsys):
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(color_tree, tree)
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 0
    capsys.readouterr()

    mask_path = tree / "train" / "masks" / "fold1_00000.png"
    mask = np.array(Image.open(mask_path))
    mask[100, 100] = (255, 0, 255)
    Image.fromarray(mask).save(mask_path)
    (tree / "valid" / "images" / min(os.listdir(tree / "valid" / "images"))).unlink()
    (tree / "test" / "images" / "fold1_99999.png").write_bytes(b"rogue")
    metadata = tree / "train" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    changed = lines[3].replace('"n_nuclei": ', '"n_nuclei": 1')
    metadata.write_text("\n".join(lines[:3] + [changed] + lines[4:-1]) + "\n")

    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    out, err = capsys.readouterr()
    missing = min(f"fold1_{i:05d}" for _, i in _expected_splits()["valid"])
    assert out.splitlines() == [
        f"valid/images/{missing}.png: missing",
        "test/images/fold1_99999.png: not part of the export",
        "train/masks/fold1_00000.png: 1 of 65536 pixels differ",
        "train/metadata.jsonl: row missing or changed: " + lines[3],
        "train/metadata.jsonl: row missing or changed: " + lines[-1],
        "train/metadata.jsonl: unexpected row: " + changed,
    ]
    assert err.strip().endswith(f"{tree}: 6 difference(s) in {PART1_PATCHES} patches")


def test_a_tree_without_format_in_export_json_verifies_as_imagemask(export_tree, cache, tmp_path):
    out = copy_tree(export_tree("imagemask", "--mask-style", "semantic"), tmp_path)
    manifest = json.loads((out / "export.json").read_text())
    del manifest["format"]  # as written by 1.0
    (out / "export.json").write_text(json.dumps(manifest))
    assert main(["verify", str(out), "--cache-dir", cache, "--quiet"]) == 0


def test_folds_config_writes_one_folder_per_fold(export_tree):
    out = export_tree("imagemask", config="folds")
    assert sorted(p for p in os.listdir(out) if not p.endswith((".json", ".png"))) == [
        "fold1",
        "fold2",
        "fold3",
    ]
    assert len(os.listdir(out / "fold2" / "images")) == 22
