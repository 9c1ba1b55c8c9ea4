"""Our geojson and hovernet-mat exports read by their consumers' own code from PyPI (issue 28), offline:

- tiatoolbox 2.1.3 (installed with --no-deps): `AnnotationStore.from_geojson` (annotation/storage.py
  `add_from_geojson`) reads every nucleus of the geojson export back, with its class and our nucleus id, and
  shapely finds every geometry valid. tiatoolbox stores Point, LineString and Polygon only: a file with a nucleus
  in pieces (a MultiPolygon, as QuPath writes one) is refused whole with a TypeError, so the test also runs the
  recipe docs/formats.md gives for it (each MultiPolygon split into its polygons before from_geojson);
- hover-net 0.0.10 (the PyPI fork of vqdang/hover_net, --no-deps): `dataset.py` `get_dataset("consep").load_img`
  and `load_ann(path, with_type=True)` read Images/ and Labels/ of the hovernet-mat export, and
  `utils/compute_stats.py --mode type|instance` (run as HoVer-Net's README runs it, in a subprocess with
  hover_net/ on PYTHONPATH, as its `from metrics.stats_utils import ...` needs) scores the export against itself.
The conic export as hover_next_train's `get_pannuke` reads it is tested in tests/test_format_conic.py.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pannuke_fixtures import THREE_FOLD_PATCHES, raw_fold
from reference import reference_image, reference_labels

from convert.__main__ import main

NAMES = ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")


@pytest.fixture(scope="module")
def reference(three_folds):
    """{our patch id: (image, semantic, instance, nuclei)} of the three fake folds, from tests/reference.py."""
    out = {}
    for fold, root, layout in ((1, three_folds, "kaggle"), (2, os.path.join(three_folds, "fold_2"), "kaggle-flat"),
                               (3, three_folds, "official")):  # fmt: skip
        images, masks, _ = raw_fold(root, fold, layout)
        for i in range(THREE_FOLD_PATCHES[fold]):
            out[f"fold{fold}_{i:05d}"] = (reference_image(images[i]), *reference_labels(np.asarray(masks[i])))
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory, three_folds, cache):
    root = tmp_path_factory.mktemp("exports-more")
    for name in ("geojson", "hovernet-mat"):
        argv = ["export", "--format", name, "--config", "folds", "--data-dir", three_folds, "--out", str(root / name)]
        assert main([*argv, "--cache-dir", cache, "--quiet"]) == 0
    return root


# ---------------------------------------------------------------------------------------------
# tiatoolbox AnnotationStore.from_geojson
# ---------------------------------------------------------------------------------------------


def split_multipolygons(document):
    """The recipe for tiatoolbox: each MultiPolygon Feature as one Polygon Feature per piece, same properties."""
    features = []
    for feature in document["features"]:
        geometry = feature["geometry"]
        if geometry["type"] != "MultiPolygon":
            features.append(feature)
            continue
        for rings in geometry["coordinates"]:
            features.append({**feature, "geometry": {"type": "Polygon", "coordinates": rings}})
    return {**document, "features": features}


def test_tiatoolbox_from_geojson_reads_every_nucleus_with_its_class(exports, reference):
    import shapely
    from shapely.geometry import shape
    from tiatoolbox.annotation import DictionaryStore

    refused = nuclei = pieces_total = 0
    for patch, (_, _, instance, ref_nuclei) in reference.items():
        path = exports / "geojson" / patch[:5] / f"{patch}.geojson"
        with open(path) as f:
            document = json.load(f)
        geometries = [shape(feature["geometry"]) for feature in document["features"]]
        assert all(g.is_valid for g in geometries), path  # shapely: every polygon and multipolygon valid
        if any(g.geom_type == "MultiPolygon" for g in geometries):
            with pytest.raises(TypeError, match="Invalid geometry type. Must be one of Point, LineString, Polygon."):
                DictionaryStore.from_geojson(path)
            refused += 1
            store = DictionaryStore.from_geojson(io.StringIO(json.dumps(split_multipolygons(document))))
        else:
            store = DictionaryStore.from_geojson(path)
        # Every nucleus, with its class and id, its pieces together covering exactly its pixels' area.
        read = {}
        for annotation in store.values():
            properties = annotation.properties
            assert annotation.geometry.geom_type == "Polygon" and properties["objectType"] == "detection"
            read.setdefault(properties["nucleus_id"], []).append((properties["classification"]["name"], annotation))
        pieces_total += len(store)
        assert sorted(read) == [n["id"] for n in ref_nuclei], path
        for nucleus in ref_nuclei:
            names = {name for name, _ in read[nucleus["id"]]}
            assert names == {NAMES[nucleus["label"]]}, (path, nucleus["id"])
            union = shapely.unary_union([a.geometry for _, a in read[nucleus["id"]]])
            assert union.area == int((instance == nucleus["id"]).sum()), (path, nucleus["id"])
        nuclei += len(ref_nuclei)
        store.close()
    assert nuclei > 1000 and pieces_total > nuclei and refused > 0


# ---------------------------------------------------------------------------------------------
# hover-net: the CoNSeP loader and compute_stats.py on the hovernet-mat export
# ---------------------------------------------------------------------------------------------


def hovernet_dir():
    """site-packages/hover_net of the installed hover-net (found without importing it: its __init__ imports torch
    and openslide and sets multiprocessing's start method)."""
    import importlib.util

    spec = importlib.util.find_spec("hover_net")
    assert spec is not None, "hover-net is not installed: pip install --no-deps hover-net==0.0.10"
    return os.path.dirname(spec.origin)


LOADER_SCRIPT = """
import sys
import numpy as np
from dataset import get_dataset  # as hover_net's run_train.py / extract_patches.py import it

consep = get_dataset("consep")
names, root, out = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
images, anns = [], []
for name in names:
    images.append(consep.load_img(f"{root}/Images/{name}.png"))
    anns.append(consep.load_ann(f"{root}/Labels/{name}.mat", with_type=True))
np.savez(out, images=np.stack(images), anns=np.stack(anns))
"""


def test_hovernet_consep_loader_reads_the_mat_export(exports, reference, tmp_path):
    env = {**os.environ, "PYTHONPATH": hovernet_dir()}
    for fold in (1, 2, 3):
        names = [p for p in reference if p.startswith(f"fold{fold}_")]
        out = tmp_path / f"fold{fold}.npz"
        root = exports / "hovernet-mat" / f"fold{fold}"
        argv = [sys.executable, "-c", LOADER_SCRIPT, ",".join(names), str(root), str(out)]
        run = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        loaded = np.load(out, allow_pickle=False)
        assert loaded["anns"].dtype == np.int32 and loaded["anns"].shape == (len(names), 256, 256, 2)
        for k, name in enumerate(names):
            image, semantic, instance, _ = reference[name]
            np.testing.assert_array_equal(loaded["images"][k], image)
            np.testing.assert_array_equal(loaded["anns"][k, ..., 0], instance)
            # The loader merges CoNSeP's classes for HoVer-Net's paper (3, 4 -> 3; 5, 6, 7 -> 4): on PanNuke's
            # classes that is connective + dead -> 3 and epithelial -> 4, as its comment warns for own data.
            merged = np.where(semantic == 4, 3, np.where(semantic == 5, 4, semantic))
            np.testing.assert_array_equal(loaded["anns"][k, ..., 1], merged)


def compute_stats(mode, pred_dir, true_dir):
    """The numbers HoVer-Net's compute_stats.py prints (its last line), run as a script."""
    script = os.path.join(hovernet_dir(), "utils", "compute_stats.py")
    argv = [sys.executable, script, "--mode", mode, "--pred_dir", pred_dir, "--true_dir", true_dir]
    env = {**os.environ, "PYTHONPATH": hovernet_dir()}
    run = subprocess.run(argv, check=False, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    return [float(v) for v in run.stdout.strip().splitlines()[-1].strip("[] ").split()]


def test_hovernet_compute_stats_scores_the_mat_export_against_itself(exports, reference, tmp_path):
    for fold in (1, 2, 3):
        labels = str(exports / "hovernet-mat" / f"fold{fold}" / "Labels") + "/"  # it globs pred_dir + "*.mat"
        patches = [nuclei for name, (*_, nuclei) in reference.items() if name.startswith(f"fold{fold}_")]
        # type: detection F1, type accuracy, then the F1 of each type of the truth, where an image without nuclei
        # adds its dummy instance of type 0 (compute_stats.py: "no instance at all")
        types = {n["label"] + 1 for nuclei in patches for n in nuclei} | ({0} if not all(patches) else set())
        assert compute_stats("type", labels, labels) == [1.0] * (2 + len(types))
        # instance: the mean over images of Dice, AJI, DQ, SQ, PQ, AJI+. get_fast_pq divides by zero on an image
        # without nuclei (tp + fp + fn = 0), so its pred_dir holds the patches with nuclei (the truth stays whole).
        pred = tmp_path / f"fold{fold}"
        pred.mkdir()
        for name, (*_, nuclei) in reference.items():
            if name.startswith(f"fold{fold}_") and nuclei:
                os.symlink(f"{labels}{name}.mat", pred / f"{name}.mat")
        assert 0 < len(os.listdir(pred)) < len(patches)
        assert compute_stats("instance", f"{pred}/", labels) == [1.0] * 6
