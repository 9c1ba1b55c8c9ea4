"""python -m convert export --format coco|yolo|hovernet|pannuke: every file against independent references."""

import errno
import hashlib
import json
import os
import shutil
from collections import namedtuple

import cv2
import numpy as np
import pytest
import yaml
from pannuke_fixtures import PART1_PATCHES, raw_fold, run_export
from PIL import Image
from reference import reference_image, reference_labels, reference_split

import pannuke_imagemask as pim
from convert import common
from convert import files as files_module
from convert.__main__ import main
from convert.formats import undecoded
from convert.sample import fake_tissues

CLASS_NAMES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
# Colours of the colour masks, written out here: background black, then the classes.
COLOURS = [[0, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 0], [0, 255, 255], [255, 255, 0]]


def _members(split_names=("train", "valid", "test")):
    """{split folder: [(fold, index), ...] in (fold, index) order}, from the reference split."""
    members = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, 0, (0.8, 0.15, 0.05))
    return {name: sorted(members[key]) for name, key in zip(split_names, ("train", "validation", "test"))}


def _export(out, data_dir, cache, *extra):
    return run_export(out, data_dir, cache, *extra)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, kaggle_part1, cache):
    """One fresh export per format, shared by the tests of this module (they only read them)."""
    root = tmp_path_factory.mktemp("formats")
    for name in ("coco", "yolo", "hovernet", "pannuke"):
        assert _export(root / name, kaggle_part1, cache, "--format", name) == 0
    return root


@pytest.fixture(scope="module")
def reference(kaggle_part1):
    images, masks, tissues = raw_fold(kaggle_part1)
    return {
        index: (reference_image(images[index]), *reference_labels(np.asarray(masks[index])), tissues[index])
        for index in range(PART1_PATCHES)
    }


def test_coco_files_load_and_every_annotation_is_its_nucleus(exports, reference):
    from pycocotools.coco import COCO

    root = exports / "coco"
    assert sorted(os.listdir(root / "annotations")) == [f"instances_{s}.json" for s in ("test", "train", "valid")]
    for split, members in _members().items():
        path = root / "annotations" / f"instances_{split}.json"
        document = json.loads(path.read_text())
        assert document["licenses"] == [
            {"id": 1, "name": "CC BY-NC-SA 4.0", "url": "https://creativecommons.org/licenses/by-nc-sa/4.0/"}
        ]
        assert document["categories"] == [
            {"id": k + 1, "name": name, "supercategory": "nucleus"} for k, name in enumerate(CLASS_NAMES)
        ]
        coco = COCO(str(path))
        assert [image["id"] for image in document["images"]] == [100000 + i for _, i in members]
        assert sorted(os.listdir(root / split / "images")) == sorted(f"{100000 + i}.png" for _, i in members)
        annotation_ids = [a["id"] for a in document["annotations"]]
        assert len(set(annotation_ids)) == len(annotation_ids)
        for fold, index in members:
            image, _, instance, nuclei, tissue = reference[index]
            entry = coco.imgs[100000 + index]
            assert entry == {
                "id": 100000 + index,
                "file_name": f"{100000 + index}.png",
                "width": 256,
                "height": 256,
                "license": 1,
                "pannuke_id": f"fold1_{index:05d}",
                "fold": 1,
                "index": index,
                "tissue": tissue,
            }
            with Image.open(root / split / "images" / entry["file_name"]) as picture:
                np.testing.assert_array_equal(np.array(picture), image)
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[entry["id"]]))
            assert len(annotations) == len(nuclei)
            for annotation, nucleus in zip(annotations, nuclei):
                assert isinstance(annotation["segmentation"]["counts"], str)
                np.testing.assert_array_equal(coco.annToMask(annotation), (instance == nucleus["id"]).astype(np.uint8))
                assert annotation["category_id"] == nucleus["label"] + 1
                assert annotation["area"] == nucleus["area"]
                assert annotation["bbox"] == nucleus["bbox"]
                assert annotation["iscrowd"] == 0


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_ground_truth_as_detections_scores_ap_1(exports, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO(str(exports / "coco" / "annotations" / "instances_train.json"))
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
         "bbox": a["bbox"], "score": 1.0}
        for a in coco.dataset["annotations"]
    ]  # fmt: skip
    evaluation = COCOeval(coco, coco.loadRes(detections), iou_type)
    evaluation.params.maxDets = [1, 10, 1000]  # a patch holds more than COCO's default of 100 nuclei
    evaluation.evaluate()
    evaluation.accumulate()
    # AP over IoU 0.50:0.95, all areas, maxDets 1000 (summarize() reports only maxDets 100, as -1 here).
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    assert precision.size and (precision[precision > -1] == 1.0).all()
    assert np.mean(precision[precision > -1]) == 1.0


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
    for split, members in _members(("train", "val", "test")).items():
        assert sorted(os.listdir(root / "labels" / split)) == [f"fold1_{i:05d}.txt" for _, i in members]
        for _, index in members:
            lines = (root / "labels" / split / f"fold1_{index:05d}.txt").read_text().splitlines()
            found.append((split, index, [line.split(" ") for line in lines]))
    return found


def test_yolo_lines_fill_back_to_their_nuclei_as_ultralytics_reads_them(exports, reference):
    root = exports / "yolo"
    one_piece = pieces = 0
    for split, index, lines in _yolo_lines(root):
        image, _, instance, nuclei, _ = reference[index]
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


def test_yolo_empty_patch_gets_an_empty_label_file(exports, reference):
    empty = [i for i, (_, _, _, nuclei, _) in reference.items() if not nuclei]
    assert empty
    for index in empty:
        (found,) = (exports / "yolo" / "labels").glob(f"*/fold1_{index:05d}.txt")
        assert found.read_text() == ""


def test_yolo_data_yaml(exports):
    data = yaml.safe_load((exports / "yolo" / "data.yaml").read_text())
    assert data == {  # no path: Ultralytics reads the folder the YAML is in, so a moved tree reads itself
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(CLASS_NAMES)),
    }


def test_hovernet_arrays_and_type_info(exports, reference):
    root = exports / "hovernet"
    for split, members in _members().items():
        assert sorted(os.listdir(root / split)) == [f"fold1_{i:05d}.npy" for _, i in members]
        for _, index in members:
            image, semantic, instance, _, _ = reference[index]
            array = np.load(root / split / f"fold1_{index:05d}.npy", allow_pickle=False)
            assert array.dtype == np.int32 and array.shape == (256, 256, 5)
            np.testing.assert_array_equal(array[..., :3], image)
            np.testing.assert_array_equal(array[..., 3], instance)
            np.testing.assert_array_equal(array[..., 4], semantic)
    assert json.loads((root / "type_info.json").read_text()) == {
        str(k): [name, COLOURS[k]] for k, name in enumerate(["background", *CLASS_NAMES])
    }


def test_pannuke_arrays_read_back_like_a_fold(exports, reference):
    root = exports / "pannuke"
    for split, members in _members().items():
        assert sorted(os.listdir(root / split)) == ["ids.txt", "images.npy", "masks.npy", "types.npy"]
        assert (root / split / "ids.txt").read_text() == "".join(f"fold1_{i:05d}\n" for _, i in members)
        images = np.load(root / split / "images.npy", mmap_mode="r")
        masks = np.load(root / split / "masks.npy", mmap_mode="r")
        types = np.load(root / split / "types.npy")
        assert (images.dtype, images.shape) == (np.float64, (len(members), 256, 256, 3))
        assert (masks.dtype, masks.shape) == (np.float64, (len(members), 256, 256, 6))
        assert types.dtype == np.dtype("<U13")
        assert types.tolist() == [reference[i][4] for _, i in members]
        for row, (_, index) in enumerate(members):
            image, semantic, instance, _, _ = reference[index]
            np.testing.assert_array_equal(images[row], image.astype(np.float64))
            expected = np.zeros((256, 256, 6))
            for c in range(5):
                expected[..., c][semantic == c + 1] = instance[semantic == c + 1]
            expected[..., 5] = instance == 0
            np.testing.assert_array_equal(masks[row], expected)
            # The builder's own conversion reads the row back to the same masks.
            back_semantic, back_instance, _ = pim.ids_to_labels(pim.mask_to_ids(masks[row]))
            np.testing.assert_array_equal(back_semantic, semantic)
            np.testing.assert_array_equal(back_instance, instance)


CHANGES = {
    "coco": ("annotations/instances_valid.json", "annotations/instances_valid.json: annotations differ"),
    "yolo": ("labels/train/fold1_00000.txt", "labels/train/fold1_00000.txt: line 1 differs from column "),
    "hovernet": ("train/fold1_00000.npy", "train/fold1_00000.npy: 1 of 327680 values differ"),
    "pannuke": ("train/masks.npy", "train/masks.npy: row 0 (fold1_00000): 1 values differ"),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_verify_passes_then_names_a_changed_file(name, exports, cache, tmp_path, capsys):
    tree = tmp_path / name
    shutil.copytree(exports / name, tree)
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 0
    capsys.readouterr()
    path, message = CHANGES[name]
    target = tree / path
    if name == "coco":
        document = json.loads(target.read_text())
        document["annotations"][0]["category_id"] = 5 if document["annotations"][0]["category_id"] != 5 else 4
        target.write_text(json.dumps(document))
    elif name == "yolo":
        target.write_text(target.read_text().replace("0.", "0.1", 1))
    elif name == "hovernet":
        array = np.load(target)
        array[10, 10, 3] += 1
        np.save(target, array)
    else:
        array = np.load(target, mmap_mode="r+")
        array[0, 10, 10, 5] = 7
        array.flush()
        del array
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(message), out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "coco", "--mask-style", "color"], "--mask-style applies to --format imagemask only, not coco"),
        (["--format", "hovernet", "--size", "128"], "--size applies to --format imagemask only, not hovernet"),
        (
            ["--format", "pannuke", "--image-format", "jpg"],
            "--image-format applies to --format coco, imagemask, yolo only, not pannuke",
        ),
    ],
)
def test_options_a_format_does_not_take_are_usage_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["export", "--out", str(tmp_path / "o"), "--sample", *argv])
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {message}")
    assert not (tmp_path / "o").exists()


def _tree_digest(root):
    digest = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                digest[os.path.relpath(os.path.join(dirpath, name), root)] = hashlib.sha256(f.read()).hexdigest()
    return digest


@pytest.fixture
def previous_tree(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the previous tree")
    return out, _tree_digest(out)


def test_too_little_free_space_is_refused_before_writing(previous_tree, kaggle_part1, cache, monkeypatch, capsys):
    out, before = previous_tree
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(common.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    assert _export(out, kaggle_part1, cache, "--mask-style", "semantic", "--force") == 1
    # Every file's size is known: the builder's image and semantic PNGs, each in whole 4 KB blocks,
    # plus metadata.csv (under 200 bytes a row) and 8 MB for the reports.
    dataset_dict = pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    blocks = 0
    for dataset in dataset_dict.values():
        for row in undecoded(dataset):
            blocks += sum(-(-len(row[c]["bytes"]) // 4096) for c in ("image", "semantic_mask"))
    needed = blocks * 4096 + 4096 * -(-200 * (PART1_PATCHES + 1) // 4096) + (8 << 20)
    assert capsys.readouterr().err == (
        f"pannuke-imagemask export: error: {out}: not enough free space: needs about {needed / 1e6:.1f} MB, "
        "5.0 KB available; with --force the old tree stays until the new one is complete, so there must be "
        "room for both\n"
    )
    assert _tree_digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_running_out_of_space_midway_leaves_the_previous_tree(previous_tree, kaggle_part1, cache, monkeypatch, capsys):
    out, before = previous_tree
    written = []
    real_write = files_module.write_bytes

    def filling_up(path, *chunks):
        if len(written) == 8:  # the 5th patch's image: fold1_00004 is the 5th patch of train
            raise OSError(errno.ENOSPC, "No space left on device", path)
        written.append(path)
        real_write(path, *chunks)

    monkeypatch.setattr(files_module, "write_bytes", filling_up)
    assert _export(out, kaggle_part1, cache, "--force", "--num-proc", "1") == 1
    fifth = _members()["train"][4][1]
    err = capsys.readouterr().err
    assert err == (
        f"pannuke-imagemask export: error: no space left on the device while writing fold1_{fifth:05d}.png; "
        "nothing partial was left and any previous output is unchanged\n"
    )
    assert _tree_digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


@pytest.mark.parametrize("name", ["coco", "yolo", "hovernet", "pannuke"])
def test_estimate_is_at_least_what_was_written(name, exports, kaggle_part1, cache):
    from convert.formats import get_format

    dataset_dict = pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    manifest = json.loads((exports / name / "export.json").read_text())
    options = {key: manifest[key] for key in ("mask_style", "image_format", "size")}
    estimated = sum(get_format(name).estimate(dataset_dict, options))
    reports = ("export.json", "statistics.png", "samples.png")
    written = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(exports / name)
        for f in files
        if not (d == str(exports / name) and f in reports)
    )
    assert written <= estimated


def test_a_tree_without_format_in_export_json_verifies_as_imagemask(kaggle_part1, cache, tmp_path):
    out = tmp_path / "old"
    assert _export(out, kaggle_part1, cache, "--mask-style", "semantic") == 0
    manifest = json.loads((out / "export.json").read_text())
    del manifest["format"]  # as written by 1.0
    (out / "export.json").write_text(json.dumps(manifest))
    assert main(["verify", str(out), "--cache-dir", cache, "--quiet"]) == 0


def test_yolo_folds_config_writes_the_three_protocol_splits(three_folds, cache, tmp_path):
    out = tmp_path / "yolo-folds"
    assert _export(out, three_folds, cache, "--format", "yolo", "--config", "folds") == 0
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


def test_verify_accepts_the_files_ultralytics_leaves_and_names_any_other(exports, cache, tmp_path, capsys):
    tree = tmp_path / "moved" / "yolo"
    shutil.copytree(exports / "yolo", tree)  # a moved copy: data.yaml has no path to go stale
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


def test_verify_of_a_yolo_tree_from_before_1_2_says_to_export_again(exports, cache, tmp_path, capsys):
    tree = tmp_path / "old-yolo"
    shutil.copytree(exports / "yolo", tree)
    manifest = json.loads((tree / "export.json").read_text())
    manifest["version"] = "1.1.0"
    (tree / "export.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "export.json: written by 1.1.0; yolo files changed in 1.2.0: export again"
    ]
