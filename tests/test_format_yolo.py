"""python -m convert export --format yolo: every line filled back as Ultralytics reads it, data.yaml, verify."""

import os
import shutil

import cv2
import numpy as np
import yaml
from pannuke_fixtures import part1_members
from PIL import Image

from convert.__main__ import main

CLASS_NAMES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]


def _fill(values):
    """Ultralytics' reading of a line, written out: coordinates times 256, cast to int32, cv2.fillPoly."""
    mask = np.zeros((256, 256), np.uint8)
    cv2.fillPoly(mask, [np.asarray(values * 256, dtype=np.int32).reshape(-1, 2)], color=1)
    return mask.astype(bool)


def _hull(mask):
    """The pixels of the convex hull of a mask's pixel squares (OpenCV's fill, edges included)."""
    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.column_stack([xs + dx, ys + dy]) for dx in (0, 1) for dy in (0, 1)])
    hull = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(hull, [cv2.convexHull(corners.astype(np.int32))], color=1)
    return hull.astype(bool)


def _yolo_lines(root):
    """[(split, index, line fields)] of every label file, checked against the reference split on the way."""
    found = []
    for split, members in part1_members(("train", "val", "test")).items():
        assert sorted(os.listdir(root / "labels" / split)) == [f"fold1_{i:05d}.txt" for _, i in members]
        for _, index in members:
            lines = (root / "labels" / split / f"fold1_{index:05d}.txt").read_text().splitlines()
            found.append((split, index, [line.split(" ") for line in lines]))
    return found


def test_yolo_lines_fill_back_to_their_nuclei_as_ultralytics_reads_them(export_tree, part1_patches):
    root = export_tree("yolo")
    one_piece = pieces = 0
    for split, index, lines in _yolo_lines(root):
        image, _, instance, nuclei, _ = part1_patches[index]
        with Image.open(root / "images" / split / f"fold1_{index:05d}.png") as picture:
            np.testing.assert_array_equal(np.array(picture), image)
        assert len(lines) == len(nuclei)
        for fields, nucleus in zip(lines, nuclei):
            assert int(fields[0]) == nucleus["label"]
            assert all(len(v.split(".")[1]) == 6 for v in fields[1:])
            values = np.array([float(v) for v in fields[1:]])
            assert len(values) % 2 == 0 and len(values) >= 6 and (0 <= values).all() and (values <= 1).all()
            filled, truth = _fill(values), instance == nucleus["id"]
            count, _ = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
            if count == 2:
                one_piece += 1
                np.testing.assert_array_equal(filled, truth)
            else:  # every pixel covered; the extra pixels are those of the bridges between the pieces
                pieces += 1
                assert (filled | ~truth).all()
                extra = filled & ~truth  # bridges: thin lines between the pieces, inside their convex hull
                assert extra.sum() <= (count - 2) * (max(nucleus["bbox"][2:]) + 1)
                assert not (extra & ~_hull(truth)).any()
            # The box Ultralytics derives from the line (segments2boxes: the extreme points) is the pixel extent.
            x, y, w, h = nucleus["bbox"]
            points = values.reshape(-1, 2) * 256
            box = [points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()]
            np.testing.assert_allclose(box, [x, y, x + w, y + h], atol=0.05)
    assert one_piece > 300 and pieces >= 20  # every patch with nuclei has one nucleus in two pieces


def test_yolo_outlines_stay_within_the_estimates_points_per_pixel():
    from convert.formats.yolo import POINTS_PER_PIXEL, nucleus_polygon

    diagonal, checkerboard, dots = (np.zeros((256, 256), bool) for _ in range(3))
    diagonal[np.arange(10, 70), np.arange(10, 70)] = True
    checkerboard[10:50, 10:50] = np.add.outer(np.arange(40), np.arange(40)) % 2 == 0
    dots[10:50:2, 10:50:2] = True
    counts = [len(nucleus_polygon(m)) for m in (diagonal, checkerboard, dots)]
    assert counts == [358, 7686, 2398]  # 6.0, 9.6 and 6.0 points per pixel: the worst shapes known
    for count, mask in zip(counts, (diagonal, checkerboard, dots)):
        assert count <= POINTS_PER_PIXEL * mask.sum() + 8


def test_yolo_outlines_of_hard_shapes_fill_back_exactly():
    from convert.formats.yolo import nucleus_polygon

    shapes = {
        "one pixel": [(5, 7)],
        "two pixels": [(5, 7), (5, 8)],
        "diagonal pair": [(5, 7), (6, 8)],
        "one-pixel line": [(9, y) for y in range(3, 12)],
        "L": [(2, 2), (2, 3), (2, 4), (3, 4), (4, 4)],
        "ring with a hole": [(x, y) for x in range(10, 15) for y in range(10, 15) if (x, y) != (12, 12)],
        "two holes, one above the other": [
            (x, y) for x in range(20, 25) for y in range(20, 27) if (x, y) not in ((22, 21), (22, 24))
        ],
        "hole beside a notch": [
            (x, y) for x in range(30, 36) for y in range(30, 36) if (x, y) not in ((32, 32), (32, 30))
        ],
    }
    for name, pixels in shapes.items():
        truth = np.zeros((256, 256), bool)
        for x, y in pixels:
            truth[y, x] = True
        values = np.array([float(f"{v:.6f}") for v in (nucleus_polygon(truth) / 256).ravel()])
        assert (_fill(values) == truth).all(), name


def test_yolo_empty_patch_gets_an_empty_label_file(export_tree, part1_patches):
    empty = [i for i, (_, _, _, nuclei, _) in part1_patches.items() if not nuclei]
    assert empty
    for index in empty:
        (found,) = (export_tree("yolo") / "labels").glob(f"*/fold1_{index:05d}.txt")
        assert found.read_text() == ""


def test_yolo_data_yaml(export_tree):
    data = yaml.safe_load((export_tree("yolo") / "data.yaml").read_text())
    assert data == {  # no path: Ultralytics reads the folder the YAML is in, so a moved tree reads itself
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(CLASS_NAMES)),
    }


def test_yolo_folds_config_writes_the_three_protocol_splits(export_tree, cache):
    out = export_tree("yolo", config="folds")
    assert sorted(os.listdir(out / "labels")) == ["fold1", "fold2", "fold3"]
    assert len(os.listdir(out / "images" / "fold2")) == 22
    names = dict(enumerate(CLASS_NAMES))
    for name, (train, val, test) in {
        "data.yaml": ("fold1", "fold2", "fold3"),
        "data_split2.yaml": ("fold2", "fold1", "fold3"),
        "data_split3.yaml": ("fold3", "fold2", "fold1"),
    }.items():
        assert yaml.safe_load((out / name).read_text()) == {
            "train": f"images/{train}",
            "val": f"images/{val}",
            "test": f"images/{test}",
            "names": names,
        }
    assert main(["verify", str(out), "--cache-dir", cache, "--quiet"]) == 0


def test_verify_accepts_the_files_ultralytics_leaves_and_names_any_other(export_tree, cache, tmp_path, capsys):
    tree = tmp_path / "moved" / "yolo"
    shutil.copytree(export_tree("yolo"), tree)  # a moved copy: data.yaml has no path to go stale
    for split in ("train", "val", "test"):
        (tree / "labels" / f"{split}.cache").write_bytes(b"ultralytics label cache")
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 0
    (tree / "labels" / "train" / "notes.cache").write_text("not Ultralytics'")
    (tree / "images" / "train.cache").write_text("not where Ultralytics writes")
    capsys.readouterr()
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "images/train.cache: not part of the export",
        "labels/train/notes.cache: not part of the export",
    ]
