"""python -m convert export --format cellpose: every file against the independent reference, verify, estimate."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from pannuke_fixtures import PART1_PATCHES, THREE_FOLD_PATCHES, raw_fold
from reference import reference_image, reference_labels, reference_split

import pannuke_imagemask as pim
from convert.__main__ import main
from convert.formats import get_format
from convert.sample import fake_tissues

SPLITS = {"train": "train", "valid": "validation", "test": "test"}


@pytest.fixture(scope="module")
def tree(export_tree):
    return export_tree("cellpose")


@pytest.fixture(scope="module")
def members():
    """{split folder: sorted (fold, index)}, from the reference split of the default seed and ratios."""
    split = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, 0, (0.8, 0.15, 0.05))
    return {folder: sorted(split[name]) for folder, name in SPLITS.items()}


def _png_header(path):
    """(bit depth, colour type) from the PNG's IHDR: 16, 0 is what cv2.imread(path, -1) reads as uint16."""
    with open(path, "rb") as f:
        head = f.read(26)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return head[24], head[25]


def _check_patch(folder, patch_id, image_raw, mask_raw):
    """The image and mask files of one patch equal the reference RGB and reference instance mask."""
    image = cv2.imread(str(folder / f"{patch_id}.png"), cv2.IMREAD_UNCHANGED)  # as cellpose.io.imread reads
    np.testing.assert_array_equal(image[..., ::-1], reference_image(image_raw))  # OpenCV gives BGR
    mask_path = folder / f"{patch_id}_masks.png"
    assert _png_header(mask_path) == (16, 0)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    _, instance, nuclei = reference_labels(np.asarray(mask_raw))
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, instance)
    return len(nuclei)


def test_each_split_folder_holds_its_patches_image_beside_masks(tree, members):
    assert sorted(os.listdir(tree)) == ["export.json", "samples.png", "statistics.png", "test", "train", "valid"]
    for folder, patches in members.items():
        expected = sorted(f"fold1_{i:05d}{suffix}.png" for _, i in patches for suffix in ("", "_masks"))
        assert sorted(os.listdir(tree / folder)) == expected
    assert json.loads((tree / "export.json").read_text())["splits"] == {
        folder: len(patches) for folder, patches in members.items()
    }


def test_every_image_and_mask_equals_the_reference(tree, members, kaggle_part1):
    images, masks, _ = raw_fold(kaggle_part1)
    empty = []
    for folder, patches in members.items():
        for _, index in patches:
            if _check_patch(tree / folder, f"fold1_{index:05d}", images[index], masks[index]) == 0:
                empty.append(index)
    assert empty  # patches without nuclei are exported too, as all-zero masks


def test_folds_config_writes_one_folder_per_fold(export_tree, three_folds, cache):
    out = export_tree("cellpose", config="folds")
    layouts = {1: (three_folds, "kaggle"), 2: (os.path.join(three_folds, "fold_2"), "kaggle-flat"),
               3: (three_folds, "official")}  # fmt: skip
    assert sorted(p for p in os.listdir(out) if not p.endswith((".json", ".png"))) == ["fold1", "fold2", "fold3"]
    for fold, count in THREE_FOLD_PATCHES.items():
        expected = sorted(f"fold{fold}_{i:05d}{suffix}.png" for i in range(count) for suffix in ("", "_masks"))
        assert sorted(os.listdir(out / f"fold{fold}")) == expected
        root, layout = layouts[fold]
        images, masks, _ = raw_fold(root, fold, layout)
        for index in range(count):
            _check_patch(out / f"fold{fold}", f"fold{fold}_{index:05d}", images[index], masks[index])
    assert main(["verify", str(out), "--cache-dir", cache, "--quiet"]) == 0


def test_verify_accepts_cellposes_own_files_and_names_every_other_difference(tree, members, cache, tmp_path, capsys):
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy)
    assert main(["verify", str(copy), "--cache-dir", cache, "--quiet"]) == 0
    # What training leaves: each image's flows (dynamics.labels_to_flows), the CLI's model in --dir/models/.
    for folder in members:
        for name in os.listdir(copy / folder):
            if not name.endswith("_masks.png"):
                (copy / folder / name.replace(".png", "_flows.tif")).write_bytes(b"flows")
    (copy / "train" / "models").mkdir()
    (copy / "train" / "models" / "cellpose_1700000000.0").write_bytes(b"weights")
    assert main(["verify", str(copy), "--cache-dir", cache, "--quiet"]) == 0
    capsys.readouterr()

    first = f"fold1_{members['train'][0][1]:05d}"
    mask = cv2.imread(str(copy / "train" / f"{first}_masks.png"), cv2.IMREAD_UNCHANGED)
    mask[100, 100] += 1
    cv2.imwrite(str(copy / "train" / f"{first}_masks.png"), mask)
    missing = f"fold1_{members['valid'][0][1]:05d}"
    (copy / "valid" / f"{missing}.png").unlink()
    (copy / "test" / "fold1_99999_classes.png").write_bytes(b"foreign")
    (copy / "test" / "fold1_99999_seg.npy").write_bytes(b"foreign")
    assert main(["verify", str(copy), "--cache-dir", cache, "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"valid/{missing}.png: missing",
        "test/fold1_99999_classes.png: not part of the export",
        "test/fold1_99999_seg.npy: not part of the export",
        f"train/{first}_masks.png: 1 of 65536 pixels differ",
    ]
    assert err.strip().endswith(f"{copy}: 4 difference(s) in {PART1_PATCHES} patches")


def test_estimate_is_exactly_what_was_written(tree, kaggle_part1, cache):
    dataset_dict = pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    estimated = get_format("cellpose").estimate(dataset_dict, {"mask_style": None, "image_format": None, "size": None})
    written = sorted(os.path.getsize(tree / folder / name) for folder in SPLITS for name in os.listdir(tree / folder))
    assert len(estimated) == 2 * PART1_PATCHES
    assert sorted(estimated) == written  # both files are the builder's PNGs, copied: their sizes are known
