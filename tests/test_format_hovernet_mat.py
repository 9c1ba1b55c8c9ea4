"""python -m convert export --format hovernet-mat: CoNSeP's Labels/*.mat read as HoVer-Net's own code reads them."""

import os

import numpy as np
import scipy.io as sio
from geo_reference import builder_masks, scores
from pannuke_fixtures import part1_members


def test_labels_read_as_compute_stats_and_the_consep_loader_read_them(export_tree, part1_patches):
    root = export_tree("hovernet-mat")
    empty = 0
    for split, members in part1_members().items():
        assert sorted(os.listdir(root / split)) == ["Images", "Labels"]
        assert sorted(os.listdir(root / split / "Labels")) == [f"fold1_{i:05d}.mat" for _, i in members]
        assert sorted(os.listdir(root / split / "Images")) == [f"fold1_{i:05d}.png" for _, i in members]
        for _, index in members:
            _, semantic, instance, nuclei, _ = part1_patches[index]
            path = str(root / split / "Labels" / f"fold1_{index:05d}.mat")
            # compute_stats.py run_nuclei_type_stat, its true folder, written out:
            true_info = sio.loadmat(path)
            true_centroid = (true_info["inst_centroid"]).astype("float32")
            true_inst_type = (true_info["inst_type"]).astype("int32")
            if true_centroid.shape[0] != 0:
                true_inst_type = true_inst_type[:, 0]
            else:
                empty += 1
                assert nuclei == [] and true_inst_type.shape == (0, 1)
                continue
            # The independent truth: each nucleus' pixels found by a loop, their mean (x, y), its class + 1.
            centroids, types = [], []
            for nucleus in nuclei:
                ys, xs = np.nonzero(instance == nucleus["id"])
                centroids.append([xs.mean(), ys.mean()])
                types.append(nucleus["label"] + 1)
            np.testing.assert_allclose(true_info["inst_centroid"], centroids, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(true_centroid, np.array(centroids, dtype=np.float32))
            np.testing.assert_array_equal(true_inst_type, types)
            assert true_info["inst_type"].shape == (len(nuclei), 1) and true_info["inst_type"].dtype == np.int32
            assert true_info["inst_centroid"].shape == (len(nuclei), 2)
            # run_nuclei_inst_stat and dataset.py __CoNSeP.load_ann:
            true = (sio.loadmat(path)["inst_map"]).astype("int32")
            np.testing.assert_array_equal(true, instance)
            ann = np.dstack([sio.loadmat(path)["inst_map"], sio.loadmat(path)["type_map"]]).astype("int32")
            np.testing.assert_array_equal(ann[..., 1], semantic)
            assert true_info["inst_map"].dtype == true_info["type_map"].dtype == np.int32
            assert sorted(k for k in true_info if not k.startswith("__")) == [
                "inst_centroid", "inst_map", "inst_type", "type_map"
            ]  # fmt: skip
    assert empty > 0  # the fake fold has patches without nuclei


def test_the_header_names_the_tool_not_the_time(export_tree):
    # savemat writes the time there: the export would differ each time (the contract test compares bytes).
    header = (export_tree("hovernet-mat") / "train" / "Labels" / "fold1_00000.mat").read_bytes()[:116]
    assert header.startswith(b"MATLAB 5.0 MAT-file, written by pannuke-imagemask")
    assert sio.loadmat(export_tree("hovernet-mat") / "train" / "Labels" / "fold1_00000.mat")["__header__"].startswith(
        b"MATLAB 5.0 MAT-file"
    )


def test_evaluate_scores_the_export_as_the_builders_own_map(export_tree, part1_patches, kaggle_part1, cache, tmp_path):
    root = export_tree("hovernet-mat")
    members = part1_members()["train"]
    truth = builder_masks(tmp_path / "builder.npy", part1_patches, members)
    _, expected = scores(truth, kaggle_part1, cache, tmp_path / "masks.json")
    for pred_path in (root / "train", root / "train" / "Labels"):
        pred, result = scores(pred_path, kaggle_part1, cache, tmp_path / "mat.json", "--pred-format", "hovernet-mat")
        assert (pred["layout"], pred["classified"]) == ("hovernet-mat", True)
        assert result == expected
        assert result["detection"]["f1"] == 1.0 and result["detection"]["type_accuracy"] == 1.0
    pred, _ = scores(root / "train", kaggle_part1, cache, tmp_path / "mat.json")  # recognised: a split's Labels/
    assert pred["layout"] == "hovernet-mat"
