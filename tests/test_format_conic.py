"""python -m convert export --format conic: the arrays read back as hover_next_train's get_pannuke reads them,
labels.npy equal to the builder's masks on every patch, the tables, and the export scored by evaluate."""

import csv
import os

import numpy as np
from array_predictions import score
from pannuke_fixtures import THREE_FOLD_PATCHES, part1_members, raw_fold
from reference import reference_image, reference_labels

import pannuke_imagemask as pim


def _get_pannuke_arrays(data_path):
    """The np.load calls of hover_next_train src/data_utils.py `get_pannuke` (@ its stored version), written out:
    the same paths, each with mmap_mode="r"."""
    return [
        [np.load(os.path.join(data_path, kind, "fold" + str(i), name), mmap_mode="r") for i in range(1, 4)]
        for kind, name in (("images", "images.npy"), ("images", "types.npy"), ("masks", "labels.npy"))
    ]


def _counts(nuclei):
    return [sum(n["label"] == c for n in nuclei) for c in range(5)]


def _tables(folder):
    with open(folder / "patch_info.csv", newline="") as f:
        info = list(csv.reader(f))
    with open(folder / "counts.csv", newline="") as f:
        counts = list(csv.reader(f))
    return info, counts


def test_the_folds_tree_is_what_get_pannuke_reads_and_labels_are_the_builders_masks(export_tree, three_folds):
    root = export_tree("conic", config="folds")
    assert sorted(os.listdir(root / "images")) == sorted(os.listdir(root / "masks")) == ["fold1", "fold2", "fold3"]
    images, types, labels = _get_pannuke_arrays(root)
    for fold in (1, 2, 3):
        root_of = {1: (three_folds, "kaggle"), 2: (os.path.join(three_folds, "fold_2"), "kaggle-flat")}
        fold_root, layout = root_of.get(fold, (three_folds, "official"))
        raw_images, raw_masks, raw_types = raw_fold(fold_root, fold, layout)
        n = THREE_FOLD_PATCHES[fold]
        assert sorted(os.listdir(root / "images" / f"fold{fold}")) == [
            "counts.csv", "images.npy", "patch_info.csv", "types.npy"
        ]  # fmt: skip
        assert os.listdir(root / "masks" / f"fold{fold}") == ["labels.npy"]
        image, tissue, label = images[fold - 1], types[fold - 1], labels[fold - 1]
        assert (image.dtype, image.shape) == (np.uint8, (n, 256, 256, 3))
        assert (label.dtype, label.shape) == (np.int32, (n, 256, 256, 2))
        assert tissue.dtype == np.dtype("<U13") and tissue.tolist() == list(raw_types)
        info, counts = _tables(root / "images" / f"fold{fold}")
        assert info == [["patch_info"]] + [[pim.patch_id(fold, i)] for i in range(n)]
        assert counts[0] == ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
        for i in range(n):
            semantic, instance, nuclei = reference_labels(np.asarray(raw_masks[i]))
            np.testing.assert_array_equal(image[i], reference_image(raw_images[i]))
            np.testing.assert_array_equal(label[i, ..., 0], instance)
            np.testing.assert_array_equal(label[i, ..., 1], semantic)
            assert counts[1 + i] == [str(c) for c in _counts(nuclei)]
        # What get_pannuke does next: float32 labels, instance ids exact (they are far below 2**24).
        np.testing.assert_array_equal(label.astype(np.float32)[..., 0], label[..., 0])


def test_a_split_of_the_other_configs_is_one_folder_of_the_five_files(export_tree, part1_patches):
    root = export_tree("conic")
    for split, members in part1_members().items():
        folder = root / split
        assert sorted(os.listdir(folder)) == ["counts.csv", "images.npy", "labels.npy", "patch_info.csv", "types.npy"]
        labels = np.load(folder / "labels.npy", mmap_mode="r")
        info, counts = _tables(folder)
        assert info[1:] == [[f"fold1_{i:05d}"] for _, i in members]
        assert np.load(folder / "types.npy").tolist() == [part1_patches[i][4] for _, i in members]
        for row, (_, index) in enumerate(members):
            image, semantic, instance, nuclei, _ = part1_patches[index]
            np.testing.assert_array_equal(np.load(folder / "images.npy", mmap_mode="r")[row], image)
            np.testing.assert_array_equal(labels[row], np.stack([instance, semantic], axis=-1))
            assert counts[1 + row] == [str(c) for c in _counts(nuclei)]


def test_the_export_scored_as_a_prediction_gives_the_builders_numbers(export_tree, three_folds, tmp_path):
    root = export_tree("conic", config="folds")
    _, masks, _ = raw_fold(three_folds, 1, "kaggle")
    builder = np.zeros((len(masks), 256, 256, 5), dtype=np.int64)
    for i in range(len(masks)):
        semantic, instance, _ = reference_labels(np.asarray(masks[i]))
        for c in range(5):
            builder[i, ..., c] = np.where(semantic == c + 1, instance, 0)
    np.save(tmp_path / "builder.npy", builder)
    conic, conic_rows, pred = score(three_folds, root / "masks" / "fold1" / "labels.npy", tmp_path)
    reference, reference_rows, _ = score(three_folds, tmp_path / "builder.npy", tmp_path)
    assert pred["layout"] == "conic"
    assert conic == reference and conic_rows == reference_rows
    # The builder's own masks: every nucleus found with its class; PQ below 1 only where PanNuke's channels overlap.
    assert conic["detection"]["f1"] == 1 and conic["detection"]["type_accuracy"] == 1
