"""python -m convert export --format nnunet: every file against the independent reference."""

import json
import os
import shutil

import numpy as np
import pytest
from pannuke_fixtures import PART1_PATCHES, THREE_FOLD_PATCHES, raw_fold
from PIL import Image
from reference import reference_image, reference_labels, reference_split

import pannuke_imagemask as pim
from convert.__main__ import main
from convert.formats import get_format
from convert.sample import fake_tissues

REPORTS = ["export.json", "samples.png", "statistics.png"]
# dataset.json written out: nnU-Net's required keys (channel_names, labels, numTraining, file_ending), then ours.
DATASET_JSON = {
    "channel_names": {"0": "R", "1": "G", "2": "B"},
    "labels": {"background": 0, "neoplastic": 1, "inflammatory": 2, "connective": 3, "dead": 4, "epithelial": 5},
    "file_ending": ".png",
    "name": "PanNuke",
    "licence": "CC BY-NC-SA 4.0",
    "reference": "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke",
}
# Where each fold of the three_folds fixture lies (tests/conftest.py), for the raw arrays.
FOLD_SOURCES = {1: ("", "kaggle"), 2: ("fold_2", "kaggle-flat"), 3: ("", "official")}


def _ids(members):
    return [f"fold{fold}_{index:05d}" for fold, index in sorted(members)]


@pytest.fixture(scope="module")
def part1_ids():
    members = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, 0, (0.8, 0.15, 0.05))
    return {split: _ids(members[split]) for split in ("train", "validation", "test")}


def _reference(root, fold, layout):
    images, masks, _ = raw_fold(root, fold, layout)
    return {
        f"fold{fold}_{index:05d}": (reference_image(images[index]), reference_labels(np.asarray(masks[index]))[0])
        for index in range(len(images))
    }


def _check_case(tree, images, labels, case, reference):
    image, semantic = reference[case]
    with Image.open(tree / images / f"{case}_0000.png") as picture:
        assert (picture.mode, picture.size) == ("RGB", (256, 256))
        np.testing.assert_array_equal(np.array(picture), image)
    with Image.open(tree / labels / f"{case}.png") as picture:
        assert picture.mode == "L"  # one channel of class indices; a palette would be expanded to RGB by nnU-Net
        label = np.array(picture)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, semantic)


def test_part1_files_pixels_and_labels(export_tree, part1_ids, kaggle_part1):
    part1 = export_tree("nnunet")
    reference = _reference(kaggle_part1, 1, "kaggle")
    training = sorted(part1_ids["train"] + part1_ids["validation"])
    test = part1_ids["test"]
    assert sorted(os.listdir(part1)) == sorted(
        ["dataset.json", "splits_final.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs", *REPORTS]
    )
    assert sorted(os.listdir(part1 / "imagesTr")) == [f"{case}_0000.png" for case in training]
    assert sorted(os.listdir(part1 / "labelsTr")) == [f"{case}.png" for case in training]
    assert sorted(os.listdir(part1 / "imagesTs")) == [f"{case}_0000.png" for case in test]
    assert sorted(os.listdir(part1 / "labelsTs")) == [f"{case}.png" for case in test]
    for case in training:
        _check_case(part1, "imagesTr", "labelsTr", case, reference)
    for case in test:
        _check_case(part1, "imagesTs", "labelsTs", case, reference)


def test_part1_dataset_json_and_splits(export_tree, part1_ids):
    part1 = export_tree("nnunet")
    training = len(part1_ids["train"]) + len(part1_ids["validation"])
    assert training == 23  # the reference split of 24 patches: 19 train, 4 validation, 1 test
    assert json.loads((part1 / "dataset.json").read_text()) == {**DATASET_JSON, "numTraining": 23}
    assert list(json.loads((part1 / "dataset.json").read_text())) == [
        "channel_names", "labels", "numTraining", "file_ending", "name", "licence", "reference"
    ]  # fmt: skip
    splits = json.loads((part1 / "splits_final.json").read_text())
    assert splits == [{"train": part1_ids["train"], "val": part1_ids["validation"]}]


def test_folds_put_every_fold_in_training_with_the_protocol_splits(export_tree, three_folds):
    folds = export_tree("nnunet", config="folds")
    ids = {f"fold{f}": [f"fold{f}_{i:05d}" for i in range(n)] for f, n in THREE_FOLD_PATCHES.items()}
    every = sorted(ids["fold1"] + ids["fold2"] + ids["fold3"])
    assert sorted(os.listdir(folds)) == sorted(["dataset.json", "splits_final.json", "imagesTr", "labelsTr", *REPORTS])
    assert sorted(os.listdir(folds / "imagesTr")) == [f"{case}_0000.png" for case in every]
    assert sorted(os.listdir(folds / "labelsTr")) == [f"{case}.png" for case in every]
    for fold, (sub, layout) in FOLD_SOURCES.items():
        reference = _reference(os.path.join(three_folds, sub), fold, layout)
        for case in ids[f"fold{fold}"]:
            _check_case(folds, "imagesTr", "labelsTr", case, reference)
    assert json.loads((folds / "dataset.json").read_text()) == {**DATASET_JSON, "numTraining": 69}
    # Entries 0, 1, 2 = the official protocol's splits 1, 2, 3 (their tests: fold3, fold3, fold1).
    assert json.loads((folds / "splits_final.json").read_text()) == [
        {"train": ids["fold1"], "val": ids["fold2"]},
        {"train": ids["fold2"], "val": ids["fold1"]},
        {"train": ids["fold3"], "val": ids["fold2"]},
    ]


def test_all_config_maps_like_part1(export_tree, three_folds):
    all_config = export_tree("nnunet", config="all")
    tissues = {fold: fake_tissues(n, fold) for fold, n in THREE_FOLD_PATCHES.items()}
    ids = {split: _ids(members) for split, members in reference_split(tissues, 0, (0.8, 0.15, 0.05)).items()}
    training = sorted(ids["train"] + ids["validation"])
    assert sorted(os.listdir(all_config / "imagesTr")) == [f"{case}_0000.png" for case in training]
    assert sorted(os.listdir(all_config / "labelsTr")) == [f"{case}.png" for case in training]
    assert sorted(os.listdir(all_config / "imagesTs")) == [f"{case}_0000.png" for case in ids["test"]]
    assert sorted(os.listdir(all_config / "labelsTs")) == [f"{case}.png" for case in ids["test"]]
    reference = {}
    for fold, (sub, layout) in FOLD_SOURCES.items():
        reference.update(_reference(os.path.join(three_folds, sub), fold, layout))
    for case in training:
        _check_case(all_config, "imagesTr", "labelsTr", case, reference)
    for case in ids["test"]:
        _check_case(all_config, "imagesTs", "labelsTs", case, reference)
    dataset = json.loads((all_config / "dataset.json").read_text())
    assert dataset == {**DATASET_JSON, "numTraining": len(training)}
    assert json.loads((all_config / "splits_final.json").read_text()) == [
        {"train": ids["train"], "val": ids["validation"]}
    ]


def _verify(tree, cache, capsys):
    code = main(["verify", str(tree), "--cache-dir", cache, "--quiet"])
    return code, capsys.readouterr().out.splitlines()


def test_verify_passes_then_names_each_changed_or_extra_file(export_tree, part1_ids, cache, tmp_path, capsys):
    part1 = export_tree("nnunet")
    tree = tmp_path / "Dataset500_PanNuke"
    shutil.copytree(part1, tree)
    assert _verify(tree, cache, capsys) == (0, [])
    first = part1_ids["train"][0]
    label = tree / "labelsTr" / f"{first}.png"
    pixels = np.array(Image.open(label))
    pixels[10, 10] = 5 if pixels[10, 10] != 5 else 4
    Image.fromarray(pixels).save(label)
    assert _verify(tree, cache, capsys) == (1, [f"labelsTr/{first}.png: 1 of 65536 pixels differ"])
    # The very mistake nnU-Net rejects: the same class indices in a palette PNG.
    palette = Image.open(tree / "labelsTs" / f"{part1_ids['test'][0]}.png").convert("P")
    palette.putpalette(pim.CLASS_COLORS.tobytes())
    shutil.copy(part1 / "labelsTr" / f"{first}.png", label)
    palette.save(tree / "labelsTs" / f"{part1_ids['test'][0]}.png")
    assert _verify(tree, cache, capsys) == (
        1, [f"labelsTs/{part1_ids['test'][0]}.png: is P (256, 256), expected L (256, 256)"]
    )  # fmt: skip
    shutil.copy(part1 / "labelsTs" / f"{part1_ids['test'][0]}.png", tree / "labelsTs")
    shutil.copy(tree / "imagesTr" / f"{first}_0000.png", tree / "imagesTr" / "extra_0000.png")
    (tree / "imagesTs" / f"{part1_ids['test'][0]}_0000.png").unlink()
    splits = json.loads((tree / "splits_final.json").read_text())
    splits[0]["val"] = splits[0]["val"][1:]
    (tree / "splits_final.json").write_text(json.dumps(splits))
    assert _verify(tree, cache, capsys) == (
        1,
        [
            f"imagesTs/{part1_ids['test'][0]}_0000.png: missing",
            "imagesTr/extra_0000.png: not part of the export",
            "splits_final.json: differs",
        ],
    )


@pytest.mark.parametrize("config", ["folds", "all"])
def test_three_fold_trees_verify(config, export_tree, cache, capsys):
    assert _verify(export_tree("nnunet", config=config), cache, capsys) == (0, [])


def test_a_folder_nnunet_cannot_find_gets_a_warning():
    fmt = get_format("nnunet")
    assert fmt.advice("/data/Dataset500_PanNuke") == []
    where = "nnU-Net finds a dataset by its folder name Dataset<NNN>_<Name> under $nnUNet_raw"
    assert fmt.advice("/data/pannuke-nnunet") == [
        f"{where}: move /data/pannuke-nnunet to e.g. $nnUNet_raw/Dataset500_PanNuke"
    ]
