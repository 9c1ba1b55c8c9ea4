"""--pred-format geojson: QuPath-style GeoJSON in the shapes QuPath, InstanSeg, tiatoolbox and CellViT++ write it,
read back against independent conversions (tests/geo_reference.py)."""

import json
import pickle

import numpy as np
import pytest
from geo_reference import CLASS_NAMES, geometry_of, outlined, painted, post_proc_nucleus
from pannuke_fixtures import PART1_PATCHES, raw_fold
from prediction_reference import expected
from reference import reference_labels
from scipy import ndimage

import pannuke_imagemask as pim
from convert.__main__ import main
from convert.formats.coco import image_id
from convert.predictions import geojson, open_prediction
from convert.predictions.base import read_json

SIZE = (256, 256)
PATCHES = [(pim.patch_id(1, i), image_id(1, i)) for i in range(PART1_PATCHES)]
COLOURS = [[0, 255, 0], [0, 0, 255], [255, 0, 0], [0, 255, 255], [255, 255, 0]]


@pytest.fixture(scope="module")
def fold(kaggle_part1):
    """Per patch: the builder's (semantic, instance, nuclei), from the reference."""
    _, masks, _ = raw_fold(kaggle_part1)
    return [reference_labels(np.asarray(masks[i])) for i in range(PART1_PATCHES)]


def renumbered(instance, types):
    """The map's present numbers as 1..m in increasing order, and their types: how a reader numbers nuclei."""
    present = sorted(set(np.unique(instance).tolist()) - {0})
    out = np.zeros_like(instance)
    for k, value in enumerate(present, 1):
        out[instance == value] = k
    return out, [types[value - 1] for value in present]


def assert_reads(prediction, position, instance, types, classified=True):
    got = prediction.read(position)
    channels, centroids, kinds = expected(instance, types if classified else [1] * len(types))
    np.testing.assert_array_equal(got.channels, channels)
    np.testing.assert_allclose(got.centroids, centroids, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got.types, kinds if classified else np.zeros(len(types)))


def error(path, message, pred_format=None, **options):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        prediction = open_prediction(str(path), pred_format, PATCHES, SIZE, **options)
        for position in range(len(PATCHES)):
            prediction.read(position)
    assert str(info.value) == message


# The three places QuPath (and tiatoolbox, InstanSeg) put the object type, and the forms of a classification.
def _properties(k, label):
    name = CLASS_NAMES[label]
    classification = [
        {"name": name, "color": COLOURS[label]},
        name.upper(),  # a plain string, any case
        {"name": name, "colorRGB": -16711936},  # QuPath before v0.4
    ][k % 3]
    return [
        ({"objectType": "detection", "classification": classification}, {}),
        ({"object_type": "detection", "classification": classification}, {}),
        ({"classification": classification}, {"objectType": "detection"}),
    ][(k // 3) % 3]


def _qupath_document(instance, nuclei, position):
    features = []
    for k, nucleus in enumerate(nuclei):
        properties, top = _properties(k + position, nucleus["label"])
        features.append(
            {"type": "Feature", "geometry": geometry_of(instance == nucleus["id"]), "properties": properties, **top}
        )
    if position % 3 == 0:
        return features  # a bare list
    if position % 3 == 1 and len(features) == 1:
        return features[0]  # a bare Feature
    return {"type": "FeatureCollection", "features": features}


def test_qupath_detections_read_back_the_map_exactly(fold, tmp_path):
    folder = tmp_path / "qupath"
    folder.mkdir()
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        if position == 5:
            continue  # no file: no nuclei
        (folder / f"{patch}.geojson").write_text(json.dumps(_qupath_document(instance, nuclei, position)))
    prediction = open_prediction(str(folder), None, PATCHES, SIZE)
    assert (prediction.name, prediction.classified) == ("geojson", True)
    assert prediction.notes == [f"geojson: 1 of {len(PATCHES)} patches have no file: scored as without nuclei"]
    for position, (_, instance, nuclei) in enumerate(fold):
        if position == 5:
            assert not prediction.read(position).channels.any() and len(prediction.read(position).types) == 0
            continue
        assert_reads(prediction, position, instance, [n["label"] + 1 for n in nuclei])


def test_a_cells_nucleus_geometry_is_scored_and_json_files_are_read(fold, tmp_path):
    _, instance, nuclei = fold[0]
    features = []
    for nucleus in nuclei:
        features.append(
            {
                "type": "Feature",
                "id": "a-uuid",
                "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]]},
                "nucleusGeometry": geometry_of(instance == nucleus["id"]),
                "properties": {"objectType": "cell", "classification": {"name": CLASS_NAMES[nucleus["label"]]}},
            }
        )
    region = {"type": "Feature", "geometry": features[0]["geometry"], "properties": {"objectType": "annotation"}}
    (tmp_path / f"{PATCHES[0][0]}.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": [region, *features]})
    )
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert prediction.name == "geojson"
    assert_reads(prediction, 0, instance, [n["label"] + 1 for n in nuclei])


def test_instanseg_pieces_are_nuclei_of_their_own_and_the_file_is_class_agnostic(fold, tmp_path):
    truths = {}
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        pieces, features = [], []
        for nucleus in nuclei:
            labels, count = ndimage.label(instance == nucleus["id"])  # rasterio's 4-connected pieces
            for k in range(1, count + 1):
                pieces.append(labels == k)
                features.append(
                    {
                        "type": "Feature",
                        "geometry": geometry_of(labels == k),
                        "properties": {"object_type": "detection"},
                    }
                )
        (tmp_path / f"{patch}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        truths[position] = painted(pieces) if pieces else np.zeros(SIZE, dtype=np.int64)
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert prediction.classified is False
    assert prediction.notes == ["geojson: no class of ours in the files: class-agnostic"]
    split = 0
    for position, truth in truths.items():
        n = int(truth.max())
        assert_reads(prediction, position, truth, [0] * n, classified=False)
        split += n - len(fold[position][2])
    assert split > 0  # nuclei in two pieces are two nuclei here


def test_cellvit_plus_plus_one_multipolygon_per_class_of_pixel_centre_contours(fold, tmp_path):
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        features = []
        for label in range(5):
            polygons = []
            for nucleus in nuclei:
                found = post_proc_nucleus(instance, nucleus["id"]) if nucleus["label"] == label else None
                if found is not None:
                    ring = found[0].tolist()
                    polygons.append([[*ring, ring[0]]])
            if polygons:
                features.append(
                    {
                        "type": "Feature",
                        "id": "uuid",
                        "geometry": {"type": "MultiPolygon", "coordinates": polygons},
                        "properties": {
                            "objectType": "annotation",
                            "classification": {"name": CLASS_NAMES[label], "color": COLOURS[label]},
                        },
                    }
                )
        (tmp_path / f"{patch}.geojson").write_text(json.dumps(features))
    prediction = open_prediction(str(tmp_path), "geojson", PATCHES, SIZE)
    note = (
        "geojson: whole-pixel vertices with slanted edges, OpenCV contours through pixel centres (CellViT++, "
        "tiatoolbox, HoVer-Net): each polygon filled as cv2.fillPoly fills it"
    )
    assert prediction.classified and prediction.notes == [note]
    for position, (_, instance, nuclei) in enumerate(fold):
        masks, types = [], []
        for label in range(5):
            for nucleus in nuclei:
                found = post_proc_nucleus(instance, nucleus["id"]) if nucleus["label"] == label else None
                if found is not None:
                    masks.append(outlined(instance, nucleus["id"], found[0]))
                    types.append(label + 1)
        truth, kinds = renumbered(painted(masks), types) if masks else (np.zeros(SIZE, np.int64), [])
        assert_reads(prediction, position, truth, kinds)


def _named_file(path, instance, nuclei, names):
    features = [
        {
            "type": "Feature",
            "geometry": geometry_of(instance == n["id"]),
            "properties": {"objectType": "detection", "classification": names[k % len(names)]},
        }
        for k, n in enumerate(nuclei)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def test_class_names_not_ours_need_a_class_map(fold, tmp_path):
    _, instance, nuclei = fold[0]
    _named_file(tmp_path / f"{PATCHES[0][0]}.geojson", instance, nuclei, ["Tumor", "Lymphocyte", "neoplastic"])
    error(
        tmp_path,
        f"{tmp_path}: class name(s) 'Lymphocyte', 'Tumor' are not ours (neoplastic, inflammatory, connective, dead, "
        "epithelial); map them with --class-map NAME=CLASS,...",
    )
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE, class_map={"tumor": 1, "lymphocyte": 0})
    types = [[1, 0, 1][k % 3] for k in range(len(nuclei))]
    assert_reads(prediction, 0, instance, types)  # "none": a nucleus in no class channel, still a nucleus for F1


def test_instanseg_cells_beside_nuclei_are_not_scored(fold, tmp_path):
    _, instance, nuclei = fold[0]
    _named_file(tmp_path / f"{PATCHES[0][0]}.geojson", instance, nuclei, ["Nuclei", "Cells"])
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert prediction.classified is False and prediction.notes[0] == (
        "geojson: features classified as cells beside nuclei are cell outlines: not scored"
    )
    kept = np.where(np.isin(instance, [n["id"] for n in nuclei[::2]]), instance, 0)
    truth, _ = renumbered(kept, list(range(1, int(instance.max()) + 1)))
    assert_reads(prediction, 0, truth, [0] * int(truth.max()), classified=False)


def test_damaged_geojson_is_one_line(fold, tmp_path):
    _, instance, _ = fold[0]
    path = tmp_path / f"{PATCHES[0][0]}.geojson"
    good = {"type": "Feature", "geometry": geometry_of(instance == 1), "properties": {"classification": "Dead"}}
    square = {"type": "Polygon", "coordinates": [[[250, 250], [300, 250], [300, 300], [250, 300], [250, 250]]]}
    cases = [
        (json.dumps([good, good])[:70], "not complete JSON (Expecting value: line 1 column 71 (char 70))"),
        (
            json.dumps({"type": "Topology"}),
            "an object of type 'Topology', expected a GeoJSON FeatureCollection, Feature or list of Features",
        ),
        (json.dumps([good, 3]), "feature 1 is not a GeoJSON Feature"),
        (
            json.dumps([{**good, "geometry": square}]),
            "feature 0: vertices at x 250..300, y 250..300 leave the 256x256 patch",
        ),
        (
            json.dumps([{**good, "geometry": {"type": "Point", "coordinates": [3, 4]}}]),
            "feature 0: a Point geometry; evaluate scores areas (Polygon, MultiPolygon)",
        ),
        (json.dumps([{**good, "geometry": None}]), "feature 0: no geometry"),
        (
            json.dumps([{**good, "geometry": {"type": "Polygon", "coordinates": [[[1, "a"], [2, 3]]]}}]),
            "feature 0: coordinates are not [x, y] number pairs",
        ),
        (
            json.dumps([{**good, "properties": {"classification": 7}}]),
            "feature 0: classification is not a name, {name, color} or {names}",
        ),
    ]
    for text, message in cases:
        path.write_text(text)
        error(tmp_path, f"{path}: {message}")
    path.write_bytes(b"\xff\xfe")
    error(tmp_path, f"{path}: not JSON text (not UTF-8)", "geojson")
    path.write_text(json.dumps([good]))
    (tmp_path / "fold1_99999.geojson").write_text("[]")
    error(tmp_path, f"{tmp_path}: 1 GeoJSON file(s) not in the split, the first fold1_99999.geojson")


def test_evaluate_names_a_damaged_file_in_one_line_and_scores_nothing(fold, tmp_path, kaggle_part1, cache, capsys):
    (tmp_path / "pred").mkdir()
    path = tmp_path / "pred" / f"{PATCHES[0][0]}.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [')
    out = tmp_path / "r.json"
    argv = [
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--data-dir",
        kaggle_part1,
        "--cache-dir",
        cache,
        "--split",
        "train",
    ]
    assert main([*argv, "--json", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"pannuke-imagemask evaluate: error: {path}: not complete JSON (Expecting value: line 1 column 44 (char 43))"
    ]
    assert not out.exists()
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--class-map", "Tumor=neoplastic,Stroma"])
    assert caught.value.code == 2


def test_regions_classes_do_not_count_when_detections_are_scored(fold, tmp_path):
    _, instance, nuclei = fold[0]
    _named_file(tmp_path / f"{PATCHES[0][0]}.geojson", instance, nuclei, ["Neoplastic"])
    document = json.loads((tmp_path / f"{PATCHES[0][0]}.geojson").read_text())
    region = {"type": "Polygon", "coordinates": [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]]}
    document["features"].append(
        {"type": "Feature", "geometry": region, "properties": {"objectType": "annotation", "classification": "Tumor"}}
    )
    (tmp_path / f"{PATCHES[0][0]}.geojson").write_text(json.dumps(document))
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert_reads(prediction, 0, instance, [1] * len(nuclei))


def test_instanseg_file_names_are_read_and_two_files_for_one_patch_are_an_error(fold, tmp_path, monkeypatch):
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        name = f"{patch}_instanseg_prediction.geojson" if position % 2 else f"{patch}.geojson"
        (tmp_path / name).write_text(json.dumps(_qupath_document(instance, nuclei, position)))
    (tmp_path / f"{PATCHES[1][0]}_instanseg_prediction.tiff").write_bytes(b"")  # its label image: not read here
    parsed = []
    monkeypatch.setattr(geojson, "read_json", lambda path: parsed.append(path) or read_json(path))
    prediction = open_prediction(str(tmp_path), "geojson", PATCHES, SIZE)  # else the TIFF marks the tiff layout
    assert (prediction.name, prediction.notes) == ("geojson", [])
    fresh = pickle.loads(pickle.dumps(prediction))  # as a worker gets it: nothing kept, each file parsed again
    for position, (_, instance, nuclei) in enumerate(fold):
        assert_reads(prediction, position, instance, [n["label"] + 1 for n in nuclei])
        assert_reads(fresh, position, instance, [n["label"] + 1 for n in nuclei])
    assert len(parsed) == 2 * len(PATCHES)  # at opening, and by the worker's copy
    (tmp_path / f"{PATCHES[1][0]}.geojson").write_text("[]")
    patch = PATCHES[1][0]
    error(
        tmp_path,
        f"{tmp_path}: two GeoJSON files for one patch: {patch}.geojson and {patch}_instanseg_prediction.geojson",
        "geojson",
    )
    (tmp_path / "fold1_99999_instanseg_prediction.geojson").write_text("[]")
    error(
        tmp_path,
        f"{tmp_path}: 1 GeoJSON file(s) not in the split, the first fold1_99999_instanseg_prediction.geojson",
        "geojson",
    )


def _square(left, top, side, slanted=False):
    """A closed ring around a square of pixels: on pixel corners, or (slanted) through pixel centres with one
    corner cut, so that the split reads as OpenCV contours."""
    right, bottom = left + side, top + side
    if slanted:
        ring = [[left, top], [right - 1, top], [right, top + 1], [right, bottom], [left, bottom]]
    else:
        ring = [[left, top], [right, top], [right, bottom], [left, bottom]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
        "properties": {"objectType": "detection", "classification": "Neoplastic"},
    }


@pytest.mark.parametrize("slanted", [False, True])
def test_overlapping_nuclei_keep_the_smaller_on_top_in_either_order(tmp_path, slanted):
    big, small, apart = _square(10, 10, 30, slanted), _square(20, 20, 6, slanted), _square(100, 100, 5, slanted)
    for order in ([big, small, apart], [small, apart, big]):
        (tmp_path / f"{PATCHES[0][0]}.geojson").write_text(json.dumps(order))
        prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
        assert prediction.notes[0].startswith("geojson: whole-pixel vertices") == slanted
        channels = prediction.read(0).channels[..., 0]
        inner = 23  # a pixel of the small square, inside the big one
        assert channels[inner, inner] == 1 + order.index(small)
        assert channels[12, 12] == 1 + order.index(big) and channels[102, 102] == 1 + order.index(apart)
