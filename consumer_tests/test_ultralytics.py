"""Ultralytics 8.4 reads the yolo export: its dataset class, its rasteriser, a one-epoch training from a model YAML."""

import os
import shutil

import cv2
import numpy as np
import pytest
from pannuke_fixtures import PART1_PATCHES, raw_fold
from reference import reference_image, reference_labels

from convert.__main__ import main


@pytest.fixture(scope="module")
def tree(tmp_path_factory, kaggle_part1, cache):
    out = tmp_path_factory.mktemp("yolo") / "export"
    assert (
        main(
            [
                "export",
                "--format",
                "yolo",
                "--data-dir",
                kaggle_part1,
                "--cache-dir",
                cache,
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def reference(kaggle_part1):
    images, masks, _ = raw_fold(kaggle_part1)
    return {i: (reference_image(images[i]), *reference_labels(np.asarray(masks[i]))) for i in range(PART1_PATCHES)}


def _corner_only_junctions(mask):
    """Places where two nucleus pixels touch at a corner alone (both other pixels of the 2x2 outside)."""
    a, b, c, d = mask[:-1, :-1], mask[:-1, 1:], mask[1:, :-1], mask[1:, 1:]
    return int(((a & d & ~b & ~c) | (b & c & ~a & ~d)).sum())


def _dataset(data, split):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset

    hyp = get_cfg(overrides={"mask_ratio": 1, "overlap_mask": False, "imgsz": 256})
    return YOLODataset(
        img_path=data[split], imgsz=256, augment=False, hyp=hyp, data=data, task="segment", batch_size=1, stride=32
    )


def test_the_dataset_class_yields_our_images_classes_boxes_and_masks(ultralytics_env, tree, reference):
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(tree / "data.yaml"))
    exact = one_piece = junction_pixels = pieces = 0
    seen = set()
    for split in ("train", "val", "test"):
        dataset = _dataset(data, split)
        for k in range(len(dataset)):
            item = dataset[k]
            index = int(os.path.basename(item["im_file"])[len("fold1_") : -len(".png")])
            seen.add(index)
            image, _, instance, nuclei = reference[index]
            np.testing.assert_array_equal(item["img"].permute(1, 2, 0).numpy(), image)  # RGB, unscaled
            assert item["cls"].flatten().tolist() == [n["label"] for n in nuclei]
            boxes = item["bboxes"].numpy() * 256  # normalised centre x, y, w, h
            assert len(boxes) == len(nuclei) and item["masks"].shape == (len(nuclei), 256, 256)
            for box, mask, nucleus in zip(boxes, item["masks"].numpy().astype(bool), nuclei):
                x, y, w, h = nucleus["bbox"]
                np.testing.assert_allclose(box, [x + w / 2, y + h / 2, w, h], atol=0.05)
                truth = instance == nucleus["id"]
                assert not (truth & ~mask).any()  # every pixel of the nucleus is in Ultralytics' mask
                count, _ = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
                if count > 2:
                    pieces += 1
                    continue
                one_piece += 1
                extra = int((mask & ~truth).sum())
                # Ultralytics resamples each line to 1,000 points: a point may fall on the rounding-wide crossing
                # of a corner where two pixels touch alone, and fill one of the two outside pixels there.
                assert extra <= _corner_only_junctions(truth)
                exact += extra == 0
                junction_pixels += extra
    assert seen == set(range(PART1_PATCHES))
    print(
        f"Ultralytics' YOLODataset: {exact} of {one_piece} one-piece nuclei exact, {junction_pixels} corner pixels extra"
    )
    assert one_piece > 300 and pieces >= 20
    assert exact >= one_piece - 2


def test_polygon2mask_of_every_line_is_the_nucleus(ultralytics_env, tree, reference):
    """The issue's yardstick: Ultralytics' own rasteriser at 256 px, ratio 1, on the lines as written."""
    from ultralytics.data.utils import polygon2mask
    from ultralytics.utils.ops import segments2boxes

    checked = 0
    for split in ("train", "val", "test"):
        for name in sorted(os.listdir(tree / "labels" / split)):
            index = int(name[len("fold1_") : -len(".txt")])
            _, _, instance, nuclei = reference[index]
            lines = (tree / "labels" / split / name).read_text().splitlines()
            assert len(lines) == len(nuclei)
            for line, nucleus in zip(lines, nuclei):
                points = np.array(line.split(" ")[1:], dtype=np.float32).reshape(-1, 2) * 256
                mask = polygon2mask((256, 256), [points.ravel()], downsample_ratio=1).astype(bool)
                truth = instance == nucleus["id"]
                count, _ = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
                if count == 2:
                    np.testing.assert_array_equal(mask, truth)
                    checked += 1
                else:
                    assert not (truth & ~mask).any()
                x, y, w, h = nucleus["bbox"]
                np.testing.assert_allclose(segments2boxes([points])[0], [x + w / 2, y + h / 2, w, h], atol=0.05)
    assert checked > 300


def test_a_moved_tree_reads_itself_and_one_epoch_trains_offline(ultralytics_env, tree, tmp_path, cache):
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset

    moved = tmp_path / "elsewhere" / "pannuke-yolo"
    shutil.copytree(tree, moved)
    data = check_det_dataset(str(moved / "data.yaml"))
    assert [data[k] for k in ("train", "val", "test")] == [str(moved / "images" / s) for s in ("train", "val", "test")]
    model = YOLO("yolo11n-seg.yaml")  # built from the YAML: no checkpoint, nothing downloaded
    model.train(
        data=str(moved / "data.yaml"),
        epochs=1,
        imgsz=256,
        batch=8,
        device="cpu",
        workers=0,
        plots=False,
        project=str(tmp_path / "runs"),
        name="train",
        exist_ok=True,
        verbose=False,
    )
    assert (tmp_path / "runs" / "train" / "weights" / "last.pt").exists()
    # Ultralytics left its label caches in the tree; verify accepts them and nothing else changed.
    assert sorted(p.name for p in (moved / "labels").glob("*.cache")) == ["test.cache", "train.cache", "val.cache"]
    assert main(["verify", str(moved), "--cache-dir", cache, "--quiet"]) == 0
