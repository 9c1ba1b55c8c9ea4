"""--pred-format cellvit: CellViT's cells.json, written here with the keys and frames of its inference code."""

import json
import pickle
import sys

import numpy as np
import pytest
import snappy
from geo_reference import CLASS_NAMES, outlined, painted, post_proc_nucleus
from pannuke_fixtures import PART1_PATCHES, raw_fold
from prediction_reference import expected
from reference import reference_labels

import pannuke_imagemask as pim
from convert.formats.coco import image_id
from convert.predictions import cellvit, open_prediction
from convert.predictions.base import parse_json

SIZE = (256, 256)
PATCHES = [(pim.patch_id(1, i), image_id(1, i)) for i in range(PART1_PATCHES)]
PANNUKE_MAP = {str(k + 1): name for k, name in enumerate(CLASS_NAMES)}  # cellvit TYPE_NUCLEI_DICT_PANNUKE
REPO_SHIFT = 1024 - 256 - 32  # a 256 px tile padded into CellViT's 1024 px patch, which starts 32 px out


@pytest.fixture(scope="module")
def fold(kaggle_part1):
    _, masks, _ = raw_fold(kaggle_part1)
    return [reference_labels(np.asarray(masks[i])) for i in range(PART1_PATCHES)]


def cells_json(instance, nuclei, shift=0, type_map=PANNUKE_MAP, type_of=lambda n: n["label"] + 1):
    """(document, [(nucleus, contour, centroid)]): CellViT's cells.json of the nuclei, frame moved by shift."""
    cells, kept = [], []
    for nucleus in nuclei:
        found = post_proc_nucleus(instance, nucleus["id"])
        if found is None:
            continue
        contour, centroid = found
        rows, cols = np.nonzero(instance == nucleus["id"])
        centroid = np.rint(centroid).tolist()  # pip cellvit rounds, stored as floats
        cells.append(
            {
                "bbox": [
                    [int(rows.min()) + shift, int(cols.min()) + shift],
                    [int(rows.max()) + 1 + shift, int(cols.max()) + 1 + shift],
                ],
                "centroid": [c + shift for c in centroid],
                "contour": (contour + shift).tolist(),
                "type": type_of(nucleus),
                "type_prob": 0.8,
                "patch_coordinates": [0, 0],
                "cell_status": 0,
                "offset_global": [-32, -32],
                "edge_position": False,
            }
        )
        kept.append((nucleus, contour, centroid))
    metadata = {"base_magnification": 40, "base_mpp": 0.25, "target_patch_mpp": 0.25}
    return {"wsi_metadata": metadata, "type_map": type_map, "cells": cells}, kept


def reference(instance, kept, types):
    masks = [outlined(instance, n["id"], contour) for n, contour, _ in kept]
    truth = painted(masks) if masks else np.zeros(SIZE, dtype=np.int64)
    return expected(truth, types)[0], np.array([c for *_, c in kept], dtype=np.float64).reshape(-1, 2)


def assert_reads(prediction, position, instance, kept, types, classified=True):
    channels, centroids = reference(instance, kept, types if classified else [1] * len(types))
    got = prediction.read(position)
    np.testing.assert_array_equal(got.channels, channels)
    np.testing.assert_array_equal(got.centroids, centroids)
    np.testing.assert_array_equal(got.types, types if classified else [0] * len(types))


def test_pip_layout_plain_and_snappy_missing_and_empty_folders(fold, tmp_path):
    out = tmp_path / "cellvit_out"
    out.mkdir()
    (out / "processed_files.json").write_text(json.dumps([f"{p}.tiff" for p, _ in PATCHES]))
    kept = {}
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        (out / patch).mkdir()
        if position == 3:
            continue  # no cell found: pip cellvit leaves the folder empty
        if position == 4:
            (out / patch).rmdir()  # and no folder at all
            continue
        document, kept[position] = cells_json(instance, nuclei)
        if position % 2:
            (out / patch / "cells.json.snappy").write_bytes(snappy.compress(json.dumps(document)))
        else:
            (out / patch / "cells.json").write_text(json.dumps(document))
        (out / patch / "cell_detection.json").write_text("{}")
        (out / patch / "cells.geojson").write_text("[]")
    prediction = open_prediction(str(out), None, PATCHES, SIZE)
    assert (prediction.name, prediction.classified, prediction.notes) == ("cellvit", True, [])
    for position, (_, instance, _) in enumerate(fold):
        if position in (3, 4):
            assert not prediction.read(position).channels.any() and len(prediction.read(position).types) == 0
            continue
        assert_reads(prediction, position, instance, kept[position], [n["label"] + 1 for n, _, _ in kept[position]])


def test_repo_layout_with_its_padding_shift_and_the_original_type_map(fold, tmp_path):
    original = {"Background": 0, **{name: k + 1 for k, name in enumerate(CLASS_NAMES)}}  # CellViT 1: name -> id
    kept = {}
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        shift = REPO_SHIFT if position % 3 else 0
        document, kept[position] = cells_json(instance, nuclei, shift, original if position == 1 else PANNUKE_MAP)
        if document["cells"]:
            (tmp_path / f"{patch}_cells.json").write_text(json.dumps(document))
            (tmp_path / f"{patch}_cell_detection.json").write_text("{}")
            (tmp_path / f"{patch}_cells.geojson").write_text("[]")
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    moved = sum(1 for p in range(PART1_PATCHES) if p % 3 and kept[p])
    note = (
        f"cellvit: {moved} file(s) in the frame of CellViT's 1024 px patch around a lone tile (+736 px on both "
        "axes, pathopatch pad_tile): moved back"
    )
    assert prediction.name == "cellvit" and prediction.notes == [note]
    for position, (_, instance, _) in enumerate(fold):
        assert_reads(prediction, position, instance, kept[position], [n["label"] + 1 for n, _, _ in kept[position]])


def test_binary_and_classifier_type_maps(fold, tmp_path):
    _, instance, nuclei = fold[0]
    document, kept = cells_json(instance, nuclei, type_map={"0": "background", "1": "nuclei"}, type_of=lambda n: 1)
    (tmp_path / f"{PATCHES[0][0]}_cells.json").write_text(json.dumps(document))
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert prediction.classified is False
    assert prediction.notes == ["cellvit: no class of ours in the type_map of the cells: class-agnostic"]
    assert_reads(prediction, 0, instance, kept, [0] * len(kept), classified=False)
    consep = {"0": "Other", "1": "Inflammatory", "2": "Epithelial", "3": "Spindle-Shaped"}  # a classifier head
    document, kept = cells_json(instance, nuclei, type_map=consep, type_of=lambda n: n["id"] % 4)
    (tmp_path / f"{PATCHES[0][0]}_cells.json").write_text(json.dumps(document))
    with pytest.raises(ValueError) as info:
        open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert str(info.value) == (
        f"{tmp_path}: class name(s) 'Other', 'Spindle-Shaped' are not ours (neoplastic, inflammatory, connective, "
        "dead, epithelial); map them with --class-map NAME=CLASS,..."
    )
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE, class_map={"other": 0, "spindle-shaped": 3})
    assert_reads(prediction, 0, instance, kept, [[0, 2, 5, 3][n["id"] % 4] for n, _, _ in kept])


def test_damaged_cellvit_files_are_one_line(fold, tmp_path, monkeypatch):
    _, instance, nuclei = fold[0]
    document, _ = cells_json(instance, nuclei)
    path = tmp_path / f"{PATCHES[0][0]}_cells.json"
    moved, _ = cells_json(instance, nuclei, shift=100)
    cases = [
        (json.dumps(document)[:40], "not complete JSON (Expecting value: line 1 column 41 (char 40))"),
        (json.dumps({"cells": []}), "no type_map object (not a CellViT cells.json)"),
        (json.dumps({"type_map": PANNUKE_MAP}), 'no "cells" list (not a CellViT cells.json)'),
        (
            json.dumps({**document, "cells": [{**document["cells"][0], "type": 7}]}),
            "cell 0: type 7 is not in the type_map",
        ),
        (json.dumps({**document, "cells": [{"contour": [[1, 1]]}]}), "cell 0: no contour, centroid or type"),
        (
            json.dumps(moved),
            "coordinates x {}..{}, y {}..{} leave the 256x256 patch (and are not CellViT's 736 px padding of a lone tile)",
        ),
    ]
    points = np.concatenate(
        [np.array(c["contour"]) for c in moved["cells"]] + [np.array([c["centroid"] for c in moved["cells"]])]
    )
    low, high = points.min(axis=0), points.max(axis=0)
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ValueError) as info:
            open_prediction(str(tmp_path), "cellvit", PATCHES, SIZE)
        assert (
            str(info.value) == f"{path}: {message.format(f'{low[0]:g}', f'{high[0]:g}', f'{low[1]:g}', f'{high[1]:g}')}"
        )
    path.unlink()
    snappy_path = tmp_path / PATCHES[0][0] / "cells.json.snappy"
    snappy_path.parent.mkdir()
    snappy_path.write_bytes(snappy.compress(json.dumps(document)))
    monkeypatch.setitem(sys.modules, "snappy", None)  # python-snappy not installed
    with pytest.raises(ValueError) as info:
        open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert str(info.value) == (
        f"{snappy_path}: compressed with snappy (CellViT's --compression); pip install python-snappy to read it"
    )
    monkeypatch.undo()
    (tmp_path / f"{PATCHES[0][0]}_cells.json").write_text(json.dumps(document))
    with pytest.raises(ValueError) as info:
        open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert str(info.value) == (
        f"{tmp_path}: two cells files for one patch: {PATCHES[0][0]}/cells.json.snappy and {PATCHES[0][0]}_cells.json"
    )
    (tmp_path / f"{PATCHES[0][0]}_cells.json").unlink()
    (tmp_path / "fold1_99999_cells.json").write_text(json.dumps(document))
    with pytest.raises(ValueError) as info:
        open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert str(info.value) == f"{tmp_path}: 1 CellViT file(s) not in the split, the first fold1_99999_cells.json"


def test_each_file_is_parsed_once_and_reads_as_a_worker_reads_it(fold, tmp_path, monkeypatch):
    kept = {}
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        document, kept[position] = cells_json(instance, nuclei, REPO_SHIFT if position % 2 else 0)
        (tmp_path / f"{patch}_cells.json").write_text(json.dumps(document))
    parsed = []
    monkeypatch.setattr(cellvit, "parse_json", lambda data, path: parsed.append(path) or parse_json(data, path))
    prediction = open_prediction(str(tmp_path), "cellvit", PATCHES, SIZE)
    fresh = pickle.loads(pickle.dumps(prediction))  # as a worker gets it: nothing kept, each file parsed again
    for position, (_, instance, _) in enumerate(fold):
        types = [n["label"] + 1 for n, _, _ in kept[position]]
        assert_reads(prediction, position, instance, kept[position], types)
        assert_reads(fresh, position, instance, kept[position], types)
    assert len(parsed) == 2 * len(PATCHES)
