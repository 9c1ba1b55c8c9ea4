"""python -m convert export --format geojson: QuPath's conventions, exact outlines, and evaluate reads it back exactly."""

import json
import os
import uuid

import numpy as np
from geo_reference import CLASS_NAMES, builder_masks, scores, square_union
from pannuke_fixtures import part1_members
from reference import PALETTE
from shapely.geometry import shape

from convert.polygons import fill


def test_one_qupath_detection_per_nucleus_with_its_exact_outline(export_tree, part1_patches):
    root = export_tree("geojson")
    seen_ids, pieces = set(), 0
    for split, members in part1_members().items():
        names = sorted(os.listdir(root / split))
        assert names == sorted(f"fold1_{i:05d}{ending}" for _, i in members for ending in (".geojson", ".png"))
        for _, index in members:
            _, _, instance, nuclei, _ = part1_patches[index]
            document = json.loads((root / split / f"fold1_{index:05d}.geojson").read_text())
            assert document["type"] == "FeatureCollection" and list(document) == ["type", "features"]
            features = document["features"]
            assert [f["properties"]["nucleus_id"] for f in features] == [n["id"] for n in nuclei]
            for feature, nucleus in zip(features, nuclei):
                label = nucleus["label"]
                assert feature["type"] == "Feature" and uuid.UUID(feature["id"]).version == 5
                assert feature["properties"] == {
                    "objectType": "detection",
                    "classification": {"name": CLASS_NAMES[label], "color": list(PALETTE[label + 1])},
                    "nucleus_id": nucleus["id"],
                    "class": CLASS_NAMES[label].lower(),
                }
                geometry = shape(feature["geometry"])
                mask = instance == nucleus["id"]
                assert geometry.is_valid and geometry.equals(square_union(mask))
                polygons = feature["geometry"]["coordinates"]
                polygons = [polygons] if feature["geometry"]["type"] == "Polygon" else polygons
                assert all(ring[0] == ring[-1] for polygon in polygons for ring in polygon)  # closed rings
                rings = [[np.array(ring[:-1]) for ring in polygon] for polygon in polygons]
                np.testing.assert_array_equal(fill(rings, instance.shape), mask)
                pieces += feature["geometry"]["type"] == "MultiPolygon"
                seen_ids.add(feature["id"])
    assert pieces > 0  # nuclei in two pieces are MultiPolygons
    assert len(seen_ids) == sum(len(part1_patches[i][3]) for i in range(len(part1_patches)))


def test_feature_ids_are_stable_across_exports(export_tree):
    part1 = json.loads((export_tree("geojson") / "train" / "fold1_00000.geojson").read_text())
    folds = json.loads((export_tree("geojson", config="folds") / "fold1" / "fold1_00000.geojson").read_text())
    assert [f["id"] for f in part1["features"]] == [f["id"] for f in folds["features"]]


def test_evaluate_scores_the_export_as_the_builders_own_map(export_tree, part1_patches, kaggle_part1, cache, tmp_path):
    root = export_tree("geojson")
    members = part1_members()["train"]
    truth = builder_masks(tmp_path / "builder.npy", part1_patches, members)
    pred, expected = scores(truth, kaggle_part1, cache, tmp_path / "masks.json")
    assert pred["layout"] == "masks"
    pred, result = scores(root / "train", kaggle_part1, cache, tmp_path / "geojson.json")
    assert (pred["layout"], pred["classified"]) == ("geojson", True)
    assert result == expected
    assert result["detection"]["f1"] == 1.0 and result["detection"]["type_accuracy"] == 1.0
