"""nnU-Net v2 reads --format nnunet: its integrity check, its PNG reader, its planning, preprocessing and scoring.

nnU-Net finds a dataset by its folder name under $nnUNet_raw, so each export goes straight to
$nnUNet_raw/Dataset50N_*; nnUNet_raw, nnUNet_preprocessed and nnUNet_results are private to the module.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from pannuke_fixtures import PART1_PATCHES, THREE_FOLD_PATCHES, raw_fold
from reference import reference_image, reference_labels, reference_split  # tests/ is on pytest's pythonpath

from convert.__main__ import main
from convert.sample import fake_tissues

PART1, FOLDS = "Dataset500_PanNuke", "Dataset501_PanNukeFolds"
FOLD_SOURCES = {1: ("", "kaggle"), 2: ("fold_2", "kaggle-flat"), 3: ("", "official")}  # see tests/conftest.py


@pytest.fixture(scope="module")
def nnunet_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("nnunet")
    dirs = {name: base / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for path in dirs.values():
        path.mkdir()
    return dirs


@pytest.fixture(autouse=True)
def _nnunet_env(monkeypatch, nnunet_dirs):
    for name, path in nnunet_dirs.items():
        monkeypatch.setenv(name, str(path))  # nnunetv2.paths reads them when used, and workers inherit them


@pytest.fixture(scope="module")
def exports(nnunet_dirs, kaggle_part1, three_folds, cache):
    raw = nnunet_dirs["nnUNet_raw"]
    for name, data_dir, config in ((PART1, kaggle_part1, "part1"), (FOLDS, three_folds, "folds")):
        argv = ["export", "--out", str(raw / name), "--data-dir", data_dir, "--cache-dir", cache, "--quiet"]
        assert main([*argv, "--format", "nnunet", "--config", config]) == 0
    return raw


def _reference(name, kaggle_part1, three_folds):
    """{case id: (RGB image, semantic mask)} of every patch of an export, from the raw fake folds."""
    if name == PART1:
        sources = [(kaggle_part1, 1, "kaggle")]
    else:
        sources = [(os.path.join(three_folds, sub), fold, layout) for fold, (sub, layout) in FOLD_SOURCES.items()]
    reference = {}
    for root, fold, layout in sources:
        images, masks, _ = raw_fold(root, fold, layout)
        for index in range(len(images)):
            semantic = reference_labels(np.asarray(masks[index]))[0]
            reference[f"fold{fold}_{index:05d}"] = (reference_image(images[index]), semantic)
    return reference


@pytest.mark.parametrize("name", [PART1, FOLDS])
def test_verify_dataset_integrity_and_the_reader_nnunet_picks(name, exports, kaggle_part1, three_folds, capsys):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    folder = exports / name
    start = time.perf_counter()
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem
    print(f"verify_dataset_integrity {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    assert "verify_dataset_integrity Done." in capsys.readouterr().out

    dataset_json = json.loads((folder / "dataset.json").read_text())
    example = str(min((folder / "imagesTr").iterdir()))
    reader = determine_reader_writer_from_dataset_json(dataset_json, example, verbose=False)
    assert reader is NaturalImage2DIO
    reference = _reference(name, kaggle_part1, three_folds)
    assert len(reference) == (PART1_PATCHES if name == PART1 else sum(THREE_FOLD_PATCHES.values()))
    seen = []
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if name == FOLDS and images == "imagesTs":
            assert not (folder / images).exists()  # every fold is a training case
            continue
        for path in sorted((folder / images).iterdir()):
            case = path.name.removesuffix("_0000.png")
            image, semantic = reference[case]
            data, properties = reader().read_images([str(path)])
            assert data.shape == (3, 1, 256, 256) and properties == {"spacing": (999, 1, 1)}
            np.testing.assert_array_equal(data[:, 0], image.transpose(2, 0, 1).astype(np.float32))
            seg, _ = reader().read_seg(str(folder / labels / f"{case}.png"))
            assert seg.shape == (1, 1, 256, 256)  # one channel: a palette PNG would come back as (3, 1, 256, 256)
            np.testing.assert_array_equal(seg[0, 0], semantic.astype(np.float32))
            seen.append(case)
    assert sorted(seen) == sorted(reference)


def test_plan_and_preprocess_2d_takes_our_split_and_labelsTs_scores(exports, nnunet_dirs, kaggle_part1, tmp_path):
    import blosc2
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    raw, preprocessed = exports / PART1, nnunet_dirs["nnUNet_preprocessed"] / PART1
    command = [os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess")]
    command += ["-d", "500", "-c", "2d", "-np", "1", "-npfp", "1"]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    print(f"{' '.join(command[1:])}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    assert done.returncode == 0, done.stderr[-2000:]

    members = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, 0, (0.8, 0.15, 0.05))
    ids = {split: [f"fold1_{i:05d}" for _, i in sorted(members[split])] for split in members}
    training = sorted(ids["train"] + ids["validation"])
    assert (preprocessed / "splits_final.json").read_bytes() == (raw / "splits_final.json").read_bytes()
    assert json.loads((preprocessed / "splits_final.json").read_text()) == [
        {"train": ids["train"], "val": ids["validation"]}
    ]
    assert sorted(os.listdir(preprocessed / "gt_segmentations")) == [f"{case}.png" for case in training]
    reference = _reference(PART1, kaggle_part1, None)
    cases = sorted(os.listdir(preprocessed / "nnUNetPlans_2d"))
    assert cases == sorted(f"{case}{end}" for case in training for end in (".b2nd", ".pkl", "_seg.b2nd"))
    for case in training:  # the training targets nnU-Net made are the reference classes
        seg = blosc2.open(str(preprocessed / "nnUNetPlans_2d" / f"{case}_seg.b2nd"), mode="r")[:]
        assert seg.shape == (1, 1, 256, 256)
        np.testing.assert_array_equal(seg[0, 0], reference[case][1])

    # labelsTs is what nnUNetv2_evaluate_folder scores test predictions against: the truth scores Dice 1.
    predictions = tmp_path / "predictions"
    shutil.copytree(raw / "labelsTs", predictions)
    compute_metrics_on_folder2(
        str(raw / "labelsTs"), str(predictions), str(raw / "dataset.json"), str(preprocessed / "nnUNetPlans.json"),
        num_processes=1,
    )  # fmt: skip
    summary = json.loads((predictions / "summary.json").read_text())
    assert [case["reference_file"] for case in summary["metric_per_case"]] == [
        str(raw / "labelsTs" / f"{case}.png") for case in ids["test"]
    ]
    for case in summary["metric_per_case"]:
        assert sorted(case["metrics"]) == ["1", "2", "3", "4", "5"]
        for metrics in case["metrics"].values():
            assert metrics["FP"] == metrics["FN"] == 0 and metrics["n_pred"] == metrics["n_ref"]
            if metrics["n_ref"]:
                assert metrics["Dice"] == 1.0
            else:  # a class absent from both: nnU-Net's Dice is NaN, left out of its means
                assert np.isnan(metrics["Dice"])
    assert summary["foreground_mean"]["Dice"] == 1.0
