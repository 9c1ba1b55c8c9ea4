"""Prediction readers: each layout read back against an independent construction from the raw fake folds."""

import json
import os
import pickle

import cv2
import metric_helpers as mh
import numpy as np
import pytest
import scipy.io
from pannuke_fixtures import PART1_PATCHES, raw_fold
from PIL import Image
from prediction_reference import components, expected, reference_combination
from pycocotools import mask as mask_utils
from reference import reference_labels

import pannuke_imagemask as pim
from convert.formats.coco import image_id
from convert.predictions import PredictionError, from_instances, open_prediction
from convert.predictions.combine import combine

SIZE = (256, 256)
PATCHES = [(pim.patch_id(1, i), image_id(1, i)) for i in range(PART1_PATCHES)]


@pytest.fixture(scope="module")
def fold(kaggle_part1):
    """Per patch: the raw (H, W, 6) mask and the builder's (semantic, instance, nuclei), from the reference."""
    _, masks, _ = raw_fold(kaggle_part1)
    return [(np.asarray(masks[i]), *reference_labels(np.asarray(masks[i]))) for i in range(PART1_PATCHES)]


def ranks(instance):
    """{id: its number 1..n in increasing order of the map's ids}."""
    return {value: k for k, value in enumerate(sorted(set(instance.ravel().tolist()) - {0}), 1)}


def assert_reads(prediction, position, channels, centroids, types):
    got = prediction.read(position)
    np.testing.assert_array_equal(got.channels, channels)
    assert got.channels.shape == (*SIZE, 5)
    np.testing.assert_array_equal(got.centroids, centroids)
    np.testing.assert_array_equal(got.types, types)
    assert got.centroids.dtype == np.float64 and got.types.dtype == np.int64


@pytest.mark.parametrize("background", [1.0, 0.5, np.nan])
def test_float_ids_are_checked_on_the_class_channels_whatever_the_background_holds(background):
    """check_ids casts a contiguous float64 patch whole when its sixth channel is integral too, else the five
    class channels alone: the same ids and the same messages either way (values put in rows read apart)."""
    from convert.predictions.base import check_ids

    rng = np.random.default_rng(5)
    patch = np.zeros((256, 256, 6))
    patch[..., :5] = rng.integers(0, 2**31 - 1, (256, 256, 5)) * (rng.random((256, 256, 5)) < 0.1)
    patch[..., 5] = background
    got = check_ids(patch, "p.npy: fold1_00000", channels=5)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got[..., :5], patch[..., :5].astype(np.int64))
    for row, value, message in [
        (255, -3.0, "negative values (min -3)"),
        (130, 2.5, "non-integer values (e.g. 2.5)"),
        (0, np.inf, "non-finite values (NaN or inf)"),
        (200, 2.0**31, "values above 2147483647 (max 2.14748e+09)"),
    ]:
        bad = patch.copy()
        bad[row, 7, 4] = value
        with pytest.raises(PredictionError) as info:
            check_ids(bad, "p.npy: fold1_00000", channels=5)
        assert str(info.value) == f"p.npy: fold1_00000: prediction has {message}"


def error(path, message, pred_format=None, patches=PATCHES, **options):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        open_prediction(str(path), pred_format, patches, SIZE, **options).read(0)
    assert str(info.value) == message


# ---------------------------------------------------------------------------------------------
# The two layouts of before, and the F1 nuclei they give.
# ---------------------------------------------------------------------------------------------


def test_masks_gives_its_channels_and_its_f1_nuclei_are_those_of_the_collapsed_map(fold, tmp_path):
    path = tmp_path / "masks.npy"
    np.save(path, np.stack([mask for mask, *_ in fold]))  # float64 (N, H, W, 6) as PanNuke's own
    prediction = open_prediction(str(path), None, PATCHES, SIZE)
    assert (prediction.name, prediction.classified, prediction.notes) == ("masks", True, [])
    for position, (mask, _, instance, nuclei) in enumerate(fold):
        got = prediction.read(position)
        np.testing.assert_array_equal(got.channels[..., :5], mask[..., :5].astype(np.int64))
        assert got.centroids is None and got.types is None  # evaluate takes them from its binary map
        # What that map gives: the builder's instance mask, one nucleus per visible (channel, id) pair.
        _, centroids, types = expected(instance, [n["label"] + 1 for n in nuclei])
        points, kinds = mh.binary_points(got.channels)
        np.testing.assert_array_equal(points, centroids)
        np.testing.assert_array_equal(kinds, types)


def test_hovernet_npy_gives_majority_types_and_all_nuclei_for_f1(fold, tmp_path):
    folder = tmp_path / "hovernet"
    folder.mkdir()
    for (patch, _), (_, semantic, instance, _) in zip(PATCHES, fold):
        ids = np.where(instance > 0, instance.astype(np.int32) * 5 + 2, 0)  # not contiguous
        np.save(folder / f"{patch}.npy", np.stack([ids, semantic], axis=-1).astype(np.int32))
    (folder / "notes.txt").write_text("a .txt beside the .npy files does not make this a YOLO folder")
    prediction = open_prediction(str(folder), None, PATCHES, SIZE)
    assert prediction.name == "hovernet"
    for position, (_, _, instance, nuclei) in enumerate(fold):
        assert_reads(prediction, position, *expected(instance, [n["label"] + 1 for n in nuclei]))


# ---------------------------------------------------------------------------------------------
# from_instances and the combination of scored instances (detectron2's panoptic FPN rule).
# ---------------------------------------------------------------------------------------------


def test_from_instances_types_through_ids_type_0_in_no_channel_given_centroids_kept():
    instance = np.zeros((4, 6), dtype=np.int64)
    instance[0, :2], instance[1, 3:], instance[3, :] = 900, 12, 40
    got = from_instances(instance, [40, 900, 12, 77], [0, 5, 2, 3], centroids=[[1, 1], [2, 2], [3, 3], [4, 4]])
    channels = np.zeros((4, 6, 5), dtype=np.int64)
    channels[0, :2, 4], channels[1, 3:, 1] = 3, 1  # numbered in increasing id order: 12 -> 1, 40 -> 2, 900 -> 3
    np.testing.assert_array_equal(got.channels, channels)
    np.testing.assert_array_equal(got.centroids, [[1, 1], [2, 2], [3, 3], [4, 4]])  # 77 has no pixels: F1 only
    np.testing.assert_array_equal(got.types, [0, 5, 2, 3])
    np.testing.assert_array_equal(
        from_instances(instance, [12, 40, 900], [1, 1, 1]).centroids, [[4, 1], [2.5, 3], [0.5, 0]]
    )
    with pytest.raises(PredictionError, match=r"^p: instance 12 of the map has no type$"):
        from_instances(instance, [40, 900], [1, 1], where="p")
    with pytest.raises(PredictionError, match=r"^p: nucleus 77 has no pixels in the instance map$"):
        from_instances(instance, [12, 40, 900, 77], [1, 1, 1, 1], where="p")
    with pytest.raises(PredictionError, match=r"^p: nucleus id 40 listed twice$"):
        from_instances(instance, [12, 40, 900, 40], [1, 1, 1, 1], where="p")
    with pytest.raises(PredictionError, match=r"^p: nucleus type 6 is not in 0..5$"):
        from_instances(instance, [12, 40, 900], [1, 6, 1], where="p")


def _piece(rows, cols, shape=(4, 8)):
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return 0, 0, mask


def _combined(pieces, scores, types=None, min_score=0.5, max_overlap=0.5):
    types = types or [1] * len(pieces)
    return combine(pieces, scores, types, min_score, max_overlap, (4, 8), "p").channels.sum(axis=-1)


def test_combination_falling_score_ties_in_file_order_untaken_pixels_only():
    a = _piece(0, slice(0, 4))  # 4 pixels
    b = _piece(0, slice(2, 6))  # 4 pixels, 2 shared with a: overlap exactly 0.5, kept
    c = _piece(0, slice(1, 5))  # 4 pixels, 3 taken once a and b are in: skipped
    np.testing.assert_array_equal(_combined([a, b, c], [0.9, 0.9, 0.9])[0], [1, 1, 1, 1, 2, 2, 0, 0])
    np.testing.assert_array_equal(_combined([b, a, c], [0.9, 0.9, 0.9])[0], [2, 2, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(_combined([a, b, c], [0.6, 0.7, 0.95])[0], [0, 1, 1, 1, 1, 0, 0, 0])  # c, 3/4 taken
    # Three of five pixels taken is more than half: skipped; no confidence: file order, none stopped.
    d = _piece(0, slice(1, 6))
    np.testing.assert_array_equal(_combined([a, d], [0.9, 0.8])[0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(_combined([d, a], None)[0], [0, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(_combined([a, _piece(1, slice(0, 8))], [0.01, 0.02])[:2], np.zeros((2, 8)))


def test_combination_stops_below_min_score_and_keeps_a_score_equal_to_it():
    pieces = [_piece(k, slice(0, 2)) for k in range(4)]
    got = _combined(pieces, [0.5, 0.49, 0.8, 0.5], min_score=0.5)
    np.testing.assert_array_equal(got[:, 0], [2, 0, 1, 3])
    got = combine(pieces, [0.5, 0.49, 0.8, 0.5], [1, 2, 3, 4], 0.5, 0.5, (4, 8), "p")
    np.testing.assert_array_equal(got.types, [3, 1, 4])  # in the order they were taken
    np.testing.assert_array_equal(_combined(pieces, [0.5, 0.49, 0.8, 0.5], min_score=0.0)[:, 0], [2, 4, 1, 3])


def test_combination_max_overlap_1_keeps_partial_overlaps_and_drops_an_instance_left_empty():
    a, inner, b = _piece(0, slice(0, 4)), _piece(0, slice(1, 3)), _piece(0, slice(3, 6))
    got = combine([a, inner, b], [0.9, 0.8, 0.7], [1, 2, 3], 0.5, 1.0, (4, 8), "p")
    np.testing.assert_array_equal(got.channels.sum(axis=-1)[0], [1, 1, 1, 1, 2, 2, 0, 0])
    np.testing.assert_array_equal(got.types, [1, 3])
    empty = (0, 0, np.zeros((0, 0), dtype=bool))
    np.testing.assert_array_equal(_combined([empty, a], [0.9, 0.8])[0], [1, 1, 1, 1, 0, 0, 0, 0])


def raw_nuclei(mask):
    """Each (channel, id) nucleus of the raw mask, whole (covered pixels included): (bool mask, type)."""
    return [
        (mask[..., c] == value, c + 1)
        for c in range(5)
        for value in sorted(set(np.unique(mask[..., c]).tolist()) - {0})
    ]


def scores_for(n, position):
    """Scores with ties and some below 0.5, in no order."""
    rng = np.random.default_rng(position)
    return [float(s) for s in rng.choice([0.3, 0.5, 0.55, 0.7, 0.7, 0.9, 0.95, 1.0], size=n)]


# ---------------------------------------------------------------------------------------------
# COCO results.
# ---------------------------------------------------------------------------------------------


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_coco_results_combine_overlapping_instances_by_score(fold, tmp_path):
    results, truth = [], []
    for position, (mask, *_) in enumerate(fold):
        nuclei = raw_nuclei(mask)  # overlapping: a pixel in two channels is in two instances
        scores = scores_for(len(nuclei), position)
        fold_, index = 1, position
        name = image_id(fold_, index) if position % 2 else pim.patch_id(fold_, index)  # both ways of naming
        for (nucleus, kind), score in zip(nuclei, scores):
            results.append({"image_id": name, "category_id": kind, "segmentation": _rle(nucleus), "score": score})
        truth.append(reference_combination([m for m, _ in nuclei], scores, [t for _, t in nuclei]))
    # The patches' results interleaved, each patch's own in its order.
    by_patch = [[r for r in results if r["image_id"] in PATCHES[k]] for k in range(PART1_PATCHES)]
    results = [r for turn in range(max(map(len, by_patch))) for rs in by_patch for r in rs[turn : turn + 1]]
    path = tmp_path / "coco_instances_results.json"
    path.write_text(json.dumps(results))
    prediction = pickle.loads(pickle.dumps(open_prediction(str(path), None, PATCHES, SIZE)))
    assert (prediction.name, prediction.classified) == ("coco", True)
    for position, (instance, types) in enumerate(truth):
        assert_reads(prediction, position, *expected(instance, types))
    assert sum(len(t) for _, t in truth) > 200 and any(len(t) == 0 for _, t in truth)


def test_coco_min_score_and_max_overlap_options(fold, tmp_path):
    mask = fold[3][0]
    nuclei = raw_nuclei(mask)
    scores = scores_for(len(nuclei), 3)
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            [
                {"image_id": PATCHES[0][1], "category_id": t, "segmentation": _rle(m), "score": s}
                for (m, t), s in zip(nuclei, scores)
            ]
        )
    )
    for min_score, max_overlap in [(0.0, 0.0), (0.7, 1.0), (0.95, 0.5)]:
        prediction = open_prediction(str(path), "coco", PATCHES, SIZE, min_score=min_score, max_overlap=max_overlap)
        instance, types = reference_combination(
            [m for m, _ in nuclei], scores, [t for _, t in nuclei], min_score, max_overlap
        )
        assert_reads(prediction, 0, *expected(instance, types))


# ---------------------------------------------------------------------------------------------
# Ultralytics labels.
# ---------------------------------------------------------------------------------------------


def _box_line(kind, mask, conf=None):
    """A YOLO line of the nucleus' bounding rectangle, each vertex at a pixel centre (divided by 256, %g)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    values = [kind - 1] + [(v + 0.5) / 256 for x, y in corners for v in (x, y)] + ([conf] if conf is not None else [])
    return ("%g " * len(values)).rstrip() % tuple(values)


def _box(mask):
    ys, xs = np.nonzero(mask)
    box = np.zeros(SIZE, dtype=bool)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return box


def test_yolo_labels_fill_polygons_and_combine_them(fold, tmp_path):
    predict = tmp_path / "predict"
    (predict / "labels").mkdir(parents=True)
    Image.new("RGB", SIZE).save(predict / f"{PATCHES[0][0]}.png")  # Ultralytics' drawing beside labels/
    truth = []
    for position, (mask, *_) in enumerate(fold):
        nuclei = raw_nuclei(mask)
        with_conf = position % 4 != 1
        scores = scores_for(len(nuclei), position) if with_conf else None
        if not nuclei or position == 5:  # no file: no detections
            truth.append((np.zeros(SIZE, dtype=np.int64), []))
            continue
        lines = [_box_line(t, m, scores[k] if with_conf else None) for k, (m, t) in enumerate(nuclei)]
        (predict / "labels" / f"{PATCHES[position][0]}.txt").write_text("\n".join(lines) + "\n")
        truth.append(reference_combination([_box(m) for m, _ in nuclei], scores, [t for _, t in nuclei]))
    for path in (predict, predict / "labels"):
        prediction = open_prediction(str(path), None, PATCHES, SIZE)
        assert prediction.name == "yolo"
        for position, (instance, types) in enumerate(truth):
            assert_reads(prediction, position, *expected(instance, types))
    assert sum(len(t) for _, t in truth) > 100


def polygon2mask(points):
    """Ultralytics' data/utils.py polygon2mask at 256 px, downsample 1, as written there."""
    mask = np.zeros(SIZE, dtype=np.uint8)
    polygons = np.asarray([points.reshape(-1)], dtype=np.int32).reshape((1, -1, 2))
    cv2.fillPoly(mask, polygons, color=1)
    return cv2.resize(mask, SIZE)


def test_yolo_polygons_are_filled_as_polygon2mask_fills_them(tmp_path):
    rng = np.random.default_rng(7)
    folder = tmp_path / "labels"
    folder.mkdir()
    lines, masks = [], []
    for k in range(40):
        n = int(rng.integers(3, 12))
        centre = rng.uniform(0, 256, 2)
        points = np.clip(centre + rng.normal(0, 3 + k, (n, 2)), 0, 256) / 256  # some on the far border
        text = " ".join(f"{v:g}" for v in points.reshape(-1))
        lines.append(f"{k % 5} {text}")
        parsed = np.array(text.split(), dtype=np.float32).reshape(-1, 2) * np.float32(256)
        masks.append(polygon2mask(parsed).astype(bool))
    (folder / f"{PATCHES[0][0]}.txt").write_text("\n".join(lines))
    instance, types = reference_combination(masks, None, [k % 5 + 1 for k in range(40)])
    assert_reads(open_prediction(str(folder), None, PATCHES, SIZE), 0, *expected(instance, types))


# ---------------------------------------------------------------------------------------------
# HoVer-Net .mat, cellpose masks, semantic PNGs.
# ---------------------------------------------------------------------------------------------


def _write_mat(path, instance, nuclei, shift=7, typed=True, dropped=None):
    """HoVer-Net's keys as infer/tile.py writes them: ids id * shift + 3, the list in falling id order."""
    inst_map = np.where(instance > 0, instance * shift + 3, 0).astype(np.int32)
    listed = [n for n in reversed(nuclei) if n["id"] != dropped]
    mat = {
        "inst_map": inst_map,
        "inst_uid": np.array([n["id"] * shift + 3 for n in listed])[:, None],
        "inst_type": np.array([n["label"] + 1 for n in listed])[:, None],
        "inst_centroid": np.array([_moved(_centroid(instance == n["id"])) for n in listed]),
    }
    if not typed:
        del mat["inst_type"]
    scipy.io.savemat(path, mat)
    return listed


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _moved(point):
    """A point a quarter pixel off the pixels' mean, still inside the patch: proof that inst_centroid is used."""
    return np.where(point < 128, point + 0.25, point - 0.25)


def test_hovernet_mat_types_through_inst_uid_f1_from_inst_centroid(fold, tmp_path):
    out = tmp_path / "hovernet_out"
    (out / "mat").mkdir(parents=True)
    (out / "json").mkdir()
    (out / "overlay").mkdir()
    listed = {}
    for position, (patch, _) in enumerate(PATCHES):
        _, _, instance, nuclei = fold[position]
        dropped = nuclei[0]["id"] if position == 4 and nuclei else None  # in the map, not in HoVer-Net's list
        listed[position] = (_write_mat(out / "mat" / f"{patch}.mat", instance, nuclei, dropped=dropped), dropped)
        Image.new("RGB", SIZE).save(out / "overlay" / f"{patch}.png")
    assert listed[4][1] is not None
    for path in (out, out / "mat"):
        prediction = open_prediction(str(path), None, PATCHES, SIZE)
        assert (prediction.name, prediction.classified) == ("hovernet-mat", True)
        for position, (nuclei, dropped) in listed.items():
            instance = fold[position][2].copy()
            if dropped is not None:
                instance[instance == dropped] = 0
            numbers = ranks(instance)
            channels = np.zeros((*SIZE, 5), dtype=np.int64)
            for n in nuclei:
                channels[..., n["label"]][instance == n["id"]] = numbers[n["id"]]
            centroids = np.array([_moved(_centroid(instance == n["id"])) for n in nuclei]).reshape(-1, 2)
            assert_reads(prediction, position, channels, centroids, [n["label"] + 1 for n in nuclei])


def test_hovernet_mat_without_inst_type_is_class_agnostic(fold, tmp_path):
    for (patch, _), (_, _, instance, nuclei) in zip(PATCHES, fold):
        _write_mat(tmp_path / f"{patch}.mat", instance, nuclei, typed=False)
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert prediction.classified is False and len(prediction.notes) == 1
    for position, (_, _, instance, nuclei) in enumerate(fold):
        channels = np.zeros((*SIZE, 5), dtype=np.int64)
        channels[..., 0] = instance  # ids 1..n already in increasing order
        centroids = np.array([_moved(_centroid(instance == n["id"])) for n in reversed(nuclei)]).reshape(-1, 2)
        assert_reads(prediction, position, channels, centroids, [0] * len(nuclei))


def test_cellpose_masks_are_class_agnostic_and_a_missing_file_has_no_nuclei(fold, tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    for position, (patch, _) in enumerate(PATCHES):
        instance = fold[position][2].astype(np.uint16) * 300  # ids up to 16 bits, not contiguous
        Image.new("RGB", SIZE).save(folder / f"{patch}.png")  # the images cellpose ran on, beside its outputs
        cv2.imwrite(str(folder / f"{patch}_masks.png"), np.zeros(SIZE, np.uint16))  # our export's truth: ignored
        if instance.max() and position != 6:  # cellpose writes no file for an image without masks
            cv2.imwrite(str(folder / f"{patch}_cp_masks.png"), instance)
            (folder / f"{patch}_seg.npy").write_bytes(b"never read")
    prediction = open_prediction(str(folder), None, PATCHES, SIZE)
    assert (prediction.name, prediction.classified) == ("cellpose", False)
    for position, (_, _, instance, nuclei) in enumerate(fold):
        if position == 6:
            instance = np.zeros_like(instance)
        channels, centroids, _ = expected(instance, [1] * int(instance.max()))
        assert_reads(prediction, position, channels, centroids, [0] * int(instance.max()))
    assert np.count_nonzero(prediction.read(6).channels) == 0 and fold[6][2].max() > 0


def test_cellpose_reads_masks_png_when_there_is_no_cp_masks(fold, tmp_path):
    for (patch, _), (_, _, instance, _) in zip(PATCHES, fold):
        cv2.imwrite(str(tmp_path / f"{patch}_masks.png"), instance)  # the cellpose export's own files
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    instance = fold[0][2]
    assert_reads(prediction, 0, *expected(instance, [1] * int(instance.max()))[:2], [0] * int(instance.max()))


def test_semantic_pngs_become_8_connected_components_per_class(fold, tmp_path):
    folder = tmp_path / "nnunet_out"
    folder.mkdir()
    for name in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
        (folder / name).write_text("{}")
    for (patch, _), (_, semantic, _, _) in zip(PATCHES, fold):
        Image.fromarray(semantic).save(folder / f"{patch}.png")
    prediction = open_prediction(str(folder), None, PATCHES, SIZE)
    assert prediction.name == "semantic" and prediction.notes == [
        "semantic predictions: nuclei are the 8-connected components of each class, so touching nuclei of one class merge"
    ]
    merged = 0
    for position, (_, semantic, instance, _) in enumerate(fold):
        truth, types = components(semantic)
        assert_reads(prediction, position, *expected(truth, types))
        merged += sum(len(np.unique(instance[truth == k])) > 1 for k in range(1, len(types) + 1))
    assert merged > 0  # the fake folds have touching nuclei of one class: one component each


# ---------------------------------------------------------------------------------------------
# Recognition and bad input: one line naming the file and what is wrong.
# ---------------------------------------------------------------------------------------------


def test_unrecognised_and_unknown_formats(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    error(
        tmp_path,
        f"{tmp_path}: not a prediction layout evaluate reads (a masks.npy or CoNIC labels.npy, a COCO results .json, "
        "or a folder of HoVer-Net .mat, .json or <id>.npy files, Ultralytics labels/*.txt, cellpose *_cp_masks.png, "
        "label TIFFs, HoVer-NeXt output folders, class PNGs, CellViT cells.json or GeoJSON); say which with "
        "--pred-format masks|hovernet|hovernet-mat|coco|yolo|cellpose|semantic|hovernet-json|cellvit|geojson|tiff|"
        "hovernext|conic",
    )
    error(tmp_path / "nothing", f"{tmp_path / 'nothing'}: no such file or folder (--pred)")
    error(
        tmp_path,
        "unknown prediction format 'mask'; valid: masks, hovernet, hovernet-mat, coco, yolo, cellpose, semantic, "
        "hovernet-json, cellvit, geojson, tiff, hovernext, conic",
        pred_format="mask",
    )
    error(tmp_path, "--max-overlap must be in 0..1, got 1.5", max_overlap=1.5)


def test_damaged_coco_results(fold, tmp_path):
    path = tmp_path / "r.json"
    good = {"image_id": 100000, "category_id": 1, "segmentation": _rle(fold[0][2] == 1), "score": 0.9}
    path.write_text(json.dumps([good, good])[:100])
    error(path, f"{path}: not complete JSON (Unterminated string starting at: line 1 column 88 (char 87))")
    path.write_text(json.dumps({"images": [], "annotations": []}))
    error(
        path,
        f"{path}: a COCO annotation file, expected a results list [{{image_id, category_id, segmentation, score}}]",
    )
    cases = [
        ({"image_id": 300000}, "[1]: image_id 300000 is not a patch of the split"),
        ({"image_id": "fold2_00000"}, "[1]: image_id 'fold2_00000' is not a patch of the split"),
        ({"image_id": [1]}, "[1]: image_id [1] is not a patch of the split"),
        ({"category_id": 6}, "[1]: category_id 6 is not one of 1..5"),
        ({"category_id": 0}, "[1]: category_id 0 is not one of 1..5"),
        ({"score": float("nan")}, "[1]: score nan is not a finite number"),
        ({"score": "high"}, "[1]: score 'high' is not a finite number"),
        ({"segmentation": [[1, 2, 3, 4, 5, 6]]}, "[1]: segmentation is not RLE {size, counts} (polygons are not read)"),
        (
            {"segmentation": {"size": [128, 128], "counts": "PPY2"}},
            "[1]: segmentation size [128, 128], the patches are [256, 256]",
        ),
        (
            {"segmentation": {"size": [256, 256], "counts": [65535]}},
            "[1]: segmentation counts are not an RLE mask of 256x256",
        ),
    ]
    for change, message in cases:
        path.write_text(json.dumps([good, {**good, **change}]))
        error(path, f"{path}: {message}")
    path.write_text(json.dumps([good, {k: v for k, v in good.items() if k != "score"}]))
    error(path, f"{path}: [1]: no 'score'")
    for counts in ("000", "0" * 40, "zz", "PPY2~"):  # runs short of, or past, 256 x 256; characters outside '0'..'o'
        path.write_text(json.dumps([good, {**good, "segmentation": {"size": [256, 256], "counts": counts}}]))
        error(path, f"{path}: [1]: segmentation counts are not an RLE mask of 256x256")


def test_damaged_yolo_labels(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    path = folder / f"{PATCHES[0][0]}.txt"
    good = "1 0.1 0.1 0.2 0.1 0.2 0.2 0.9"
    cases = [
        ("5 0.1 0.1 0.2 0.1 0.2 0.2", "line 2: class '5' is not one of 0..4"),
        ("a 0.1 0.1 0.2 0.1 0.2 0.2", "line 2: class 'a' is not one of 0..4"),
        ("1.5 0.1 0.1 0.2 0.1 0.2 0.2", "line 2: class '1.5' is not one of 0..4"),
        ("1 0.1 nan 0.2 0.1 0.2 0.2 0.9", "line 2: non-finite number (NaN or inf)"),
        ("1 0.1 x 0.2 0.1 0.2 0.2 0.9", "line 2: 'x' is not a number"),
        ("1 0.1 1.5 0.2 0.1 0.2 0.2 0.9", "line 2: coordinate 1.5 outside 0..1 (coordinates are divided by the size)"),
        (
            "1 0.1 -0.01 0.2 0.1 0.2 0.2 0.9",
            "line 2: coordinate -0.01 outside 0..1 (coordinates are divided by the size)",
        ),
        ("1 0.1 0.1 0.2 0.1 0.9", "line 2: 2 point(s), a polygon needs at least 3"),
        ("1 0.1 0.1 0.2 0.1 0.2 0.2", "line 2: lines with and without a confidence in one file"),
    ]
    for line, message in cases:
        path.write_text(f"{good}\n{line}\n")
        error(folder, f"{path}: {message}")
    path.unlink()
    (folder / "fold2_00001.txt").write_text(good)
    error(folder, f"{folder}: 1 label file(s) not in the split, the first fold2_00001.txt")


def test_damaged_cellpose_and_semantic_pngs(tmp_path):
    patch = PATCHES[0][0]
    cellpose = tmp_path / "cellpose"
    cellpose.mkdir()
    path = cellpose / f"{patch}_cp_masks.png"
    for image, message in [
        (Image.new("RGB", SIZE), "a RGB PNG, expected one 16-bit grey or 8-bit grey channel"),
        (Image.new("I;16", (128, 256)), "128x256 pixels, the patches are 256x256"),
    ]:
        image.save(path)
        error(cellpose, f"{path}: {message}")
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert str(_raises(cellpose)).startswith(f"{path}: not a readable PNG (")
    path.unlink()
    tif = cellpose / f"{PATCHES[1][0]}_cp_masks.tif"
    tif.write_bytes(b"II*\x00")
    error(cellpose, f"{cellpose}: cellpose's {tif.name} is a TIFF: read it with --pred-format tiff", "cellpose")
    assert str(_raises(cellpose)).startswith(f"{tif}: not a readable TIFF (")  # recognised as the tiff layout
    tif.unlink()
    cv2.imwrite(str(cellpose / "fold3_00001_cp_masks.png"), np.zeros(SIZE, np.uint16))
    error(cellpose, f"{cellpose}: 1 mask file(s) not in the split, the first fold3_00001_cp_masks.png")

    semantic = tmp_path / "semantic"
    semantic.mkdir()
    for p, _ in PATCHES:
        Image.fromarray(np.zeros(SIZE, np.uint8)).save(semantic / f"{p}.png")
    Image.fromarray(np.full(SIZE, 7, np.uint8)).save(semantic / f"{patch}.png")
    error(semantic, f"{semantic / patch}.png: class 7 is not one of 0..5")
    Image.new("RGB", SIZE).save(semantic / f"{patch}.png")
    error(semantic, f"{semantic / patch}.png: a RGB PNG, expected one 8-bit grey or 16-bit grey or palette channel")
    (semantic / f"{patch}.png").unlink()
    error(semantic, f"{semantic}: 1 prediction(s) missing, the first {patch}.png")
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(semantic / f"{patch}.png")
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(semantic / "fold1_09999.png")
    error(semantic, f"{semantic}: 1 prediction(s) not in the split, the first fold1_09999.png")


def _raises(path, pred_format=None):
    with pytest.raises(ValueError) as info:
        open_prediction(str(path), pred_format, PATCHES, SIZE).read(0)
    return info.value


class _Trap:
    """Unpickling this writes a file: proof that a reader unpickled something."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_seg_npy_pickles_are_refused_never_unpickled(tmp_path):
    folder = tmp_path / "cellpose"
    folder.mkdir()
    trap = tmp_path / "unpickled"
    for patch, _ in PATCHES:
        np.save(folder / f"{patch}_seg.npy", np.array([_Trap(str(trap))], dtype=object), allow_pickle=True)
    message = (
        f"{folder}: cellpose's {PATCHES[0][0]}_seg.npy is not read (a pickle): predict with --save_png to write "
        "<name>_cp_masks.png (or --save_tif, read by --pred-format tiff)"
    )
    error(folder, message)
    error(folder, message, pred_format="cellpose")
    assert not trap.exists()
    # The same pickles named as HoVer-Net <id>.npy are refused by numpy's header check, not loaded.
    for patch, _ in PATCHES:
        os.replace(folder / f"{patch}_seg.npy", folder / f"{patch}.npy")
    error(folder, f"{folder / PATCHES[0][0]}.npy: holds Python objects (dtype object); refusing to unpickle")
    assert not trap.exists()


def test_damaged_hovernet_mat(fold, tmp_path):
    instance, nuclei = fold[0][2], fold[0][3]
    for patch, _ in PATCHES:
        _write_mat(tmp_path / f"{patch}.mat", instance, nuclei)
    path = tmp_path / f"{PATCHES[0][0]}.mat"
    good = scipy.io.loadmat(path)
    good = {k: v for k, v in good.items() if not k.startswith("__")}
    n = len(nuclei)
    cases = [
        ({"inst_map": None}, "no inst_map (not a HoVer-Net prediction)"),
        ({"inst_map": np.zeros((256, 128), np.int32)}, "inst_map has shape (256, 128), the patches are (256, 256)"),
        ({"inst_type": np.full((n, 1), 9)}, "inst_type 9 is not one of 0..5"),
        ({"inst_centroid": np.full((n, 2), np.nan)}, "inst_centroid has non-finite values (NaN or inf)"),
        ({"inst_centroid": np.full((n, 2), 300.0)}, "inst_centroid 0 (300, 300) is outside the 256x256 patch"),
        (
            {"inst_type": np.ones((n + 1, 1))},
            f"the nucleus lists differ in length (inst_uid {n}, inst_type {n + 1}, inst_centroid {n})",
        ),
        ({"inst_type": None}, "no inst_type, but other files of the folder have one"),
        ({"inst_uid": -good["inst_uid"]}, f"inst_uid has negative values (min {-good['inst_uid'].max()})"),
        ({"inst_map": good["inst_map"] + 1j}, "inst_map has dtype complex128, expected integers"),
    ]
    for change, message in cases:
        scipy.io.savemat(path, {k: v for k, v in {**good, **change}.items() if v is not None})
        error(tmp_path, f"{path}: {message}")
    scipy.io.savemat(path, good)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error(tmp_path, f"{path}: not a readable .mat file (OSError: could not read bytes)")
    path.write_bytes(b"MATLAB? no" * 30)
    assert str(_raises(tmp_path)).startswith(f"{path}: not a readable .mat file (ValueError: ")
    path.unlink()
    error(tmp_path, f"{tmp_path}: 1 prediction(s) missing, the first {PATCHES[0][0]}.mat")
    scipy.io.savemat(path, good)
    scipy.io.savemat(tmp_path / "fold1_99999.mat", good)
    error(tmp_path, f"{tmp_path}: 1 prediction(s) not in the split, the first fold1_99999.mat")


def _counts_by_hand(counts, pixels):
    """Whether COCO compressed counts are runs covering pixels: the characters read one at a time, as
    pycocotools' rleFrString reads them (5 bits each, 0x20 continues, 0x10 of the last one negative, each run
    from the fourth on a difference to the one two before)."""
    runs, value, shift = [], 0, 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code <= 63:
            return False
        value, shift = value | (code & 0x1F) << shift, shift + 5
        if not code & 0x20:
            value -= (1 << shift) if code & 0x10 else 0
            runs.append(value + (runs[-2] if len(runs) > 2 else 0))
            value, shift = 0, 0
    return shift == 0 and min(runs, default=0) >= 0 and sum(runs) == pixels


def _compressed(runs):
    """Runs as COCO compressed counts, written as pycocotools' rleToString writes them."""
    text = ""
    for i, value in enumerate(runs):
        value -= runs[i - 2] if i > 2 else 0
        while True:
            code, value = value & 0x1F, value >> 5
            more = value != -1 if code & 0x10 else value != 0
            text += chr(48 + (code | 0x20 if more else code))
            if not more:
                break
    return text


def test_compressed_counts_are_checked_for_a_whole_file_exactly_as_one_at_a_time(monkeypatch):
    from convert.predictions import coco

    rng = np.random.default_rng(7)
    strings = []
    for size in (1, 2, 5, 64, 256):  # pycocotools' own encodings of masks sparse, dense and empty
        for density in (0.0, 0.02, 0.5, 1.0):
            mask = np.asfortranarray(rng.random((size, size, 3)) < density, dtype=np.uint8)
            strings += [(rle["counts"].decode(), size * size) for rle in mask_utils.encode(mask)]
    damaged = []
    for counts, pixels in strings[::3]:
        k = int(rng.integers(len(counts)))
        damaged += [
            (counts[:k], pixels),  # cut short (or empty)
            (counts + "1", pixels),  # a run past the end
            (counts[:k] + chr(int(rng.integers(48, 112))) + counts[k + 1 :], pixels),  # one character changed
            (counts[:k] + "\u00e9" + counts[k:], pixels),  # outside '0'..'o'
            (counts + "a", pixels),  # ends in a continuation
            (counts, pixels + 1),  # another mask's size
        ]
    # Runs of more than LONG_RUN characters, positive and negative: read one by one.
    damaged += [("a" * 9 + "0", 0), ("o" * 12 + "0", 0), ("Q0", 1), ("0" * 3, 0), ("", 0), ("1", 1)]
    # A negative run in runs that add up to the mask's size; large runs; the same with the differences.
    damaged += [
        (_compressed(runs), sum(runs)) for runs in ([3, -1, 2], [5, 0, 0, -2, 1], [2, 0, 2], [1 << 30, 1 << 29])
    ]
    cases = strings + damaged
    expected = [_counts_by_hand(counts, pixels) for counts, pixels in cases]
    assert all(expected[: len(strings)]) and sum(expected) < len(cases) - len(damaged) // 2
    by_pixels = {}
    for k, (counts, pixels) in enumerate(cases):
        by_pixels.setdefault(pixels, []).append(k)
    for bounds in ((coco.LONG_COUNTS, coco.LONG_RUN), (40, 2)):  # the vectorised path, then most strings slow
        monkeypatch.setattr(coco, "LONG_COUNTS", bounds[0])
        monkeypatch.setattr(coco, "LONG_RUN", bounds[1])
        for pixels, ks in by_pixels.items():
            got = coco.counts_cover([cases[k][0] for k in ks], pixels)
            assert got.tolist() == [expected[k] for k in ks], pixels
    assert coco.counts_cover([], 65536).tolist() == []
