"""Today's models' own writers, read by evaluate (issue 27): each framework's code writes its files for predictions
made from our `conic` export of fake fold 1 (the truth's instance maps, and a perturbed copy), ONE evaluate line
scores them, and its numbers equal those of scoring an independent conversion of the same output as a masks.npy
(or, for HoVer-Net, a mat/ folder carrying HoVer-Net's own centroids).

Which code ran (all from PyPI, offline, no weights):
- StarDist 0.9.2 / csbdeep 0.8.2: `stardist.geometry.star_dist` (the distances StarDist learns) at one point per
  nucleus, `stardist.polygons_to_label` (its rendering of predicted polygons) and
  `csbdeep.io.save_tiff_imagej_compatible` (the usual way its users save labels; int32 becomes int16);
- instanseg-torch 0.1.2: `InstanSeg(model_type=<TorchScript module>).eval(png, save_output=True,
  save_geojson=True)`, which calls its `save_output` (the label TIFF) and `instanseg.utils.utils.labels_to_features`
  (the GeoJSON, through rasterio); the module stands for the downloaded network and returns the label map given;
- tiatoolbox 2.1.3 (installed with --no-deps): `DictionaryStore.append(Annotation(...))` and `AnnotationStore.to_geojson`, with the
  properties its engines write (`type`, `classification` {name, color});
- hover-net 0.0.10 (the PyPI fork of vqdang/hover_net, installed with --no-deps beside numpy 2; run in a
  subprocess, as its modules set multiprocessing's start method and silence warnings.warn on import):
  `models/hovernet/targets.py` `gen_instance_hv_map` makes the HV maps of the prediction, `post_proc.py` `process`
  turns [type, nuclei probability, h, v] into nuclei as run_infer.py does, and `infer/base.py`
  `InferManager.__save_json` writes json/<id>.json.
CellViT's `_convert_json_geojson` (cellvit 1.0.9) did not run: it does not install beside the tier's torch (its
pathopatch needs setuptools<=65.6.3, torch 2.14.1 setuptools>=77.0.3; also numpy<2, pydantic<2) and its module
imports ray, snappy and pathopatch; its GeoJSON is tested from that function's contract in tests/.
"""

import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from array_predictions import agnostic_part, score
from pannuke_fixtures import THREE_FOLD_PATCHES
from PIL import Image

import pannuke_imagemask as pim
from convert.__main__ import main

SIZE = (256, 256)
PATCHES = [pim.patch_id(1, i) for i in range(THREE_FOLD_PATCHES[1])]
KINDS = ("truth", "perturbed")
NAMES = [name.capitalize() for name in pim.NUCLEUS_CLASSES]


@pytest.fixture(scope="module")
def conic(tmp_path_factory, three_folds, cache):
    """Our conic export of the fake folds: fold 1's images (N, H, W, 3) and labels (N, H, W, 2)."""
    out = tmp_path_factory.mktemp("writers") / "pannuke-conic"
    argv = ["export", "--format", "conic", "--config", "folds", "--data-dir", three_folds, "--out", str(out)]
    assert main([*argv, "--cache-dir", cache, "--quiet"]) == 0
    images = np.load(out / "images" / "fold1" / "images.npy", allow_pickle=False)
    labels = np.load(out / "masks" / "fold1" / "labels.npy", allow_pickle=False)
    assert images.shape == (len(PATCHES), *SIZE, 3) and labels.shape == (len(PATCHES), *SIZE, 2)
    return images, labels


def perturb(instance, classes, seed=5):
    """A worse prediction of one patch: one nucleus in five dropped, one in five merged into the nucleus painted
    before it (its id and class: one nucleus, often in two pieces), one in four shifted by 2 px (painted over what
    is there), one in four of the rest given the next class. Every id keeps one class."""
    rng = np.random.default_rng(seed)
    out_instance, out_classes = np.zeros_like(instance), np.zeros_like(classes)
    previous = None
    for k, nucleus in enumerate(sorted(set(np.unique(instance).tolist()) - {0})):
        pixels = instance == nucleus
        number, kind = 100 + 3 * k, int(np.bincount(classes[pixels]).argmax())
        roll = rng.integers(0, 60)
        if roll % 5 == 0:
            continue
        if roll % 5 == 1 and previous is not None:  # merged: the id and class of the one before
            number, kind = previous
        elif roll % 3 == 0:
            kind = kind % 5 + 1
        if roll % 4 == 2:
            pixels = np.roll(pixels, (2, -2), axis=(0, 1))
        out_instance[pixels] = number
        out_classes[pixels] = kind
        previous = number, kind
    return out_instance, out_classes


@pytest.fixture(scope="module")
def predictions(conic):
    """{"truth" | "perturbed": [(instance int32, classes int32), ...]} for fold 1, from the conic export."""
    _, labels = conic
    truth = [(lab[..., 0].astype(np.int32), lab[..., 1].astype(np.int32)) for lab in labels]
    return {"truth": truth, "perturbed": [perturb(i, c) for i, c in truth]}


def masks_npy(path, instances, classes=None):
    """The independent route: a masks.npy of class channels (all in channel 0 without classes)."""
    channels = np.zeros((len(instances), *SIZE, 5), dtype=np.int32)
    for k, instance in enumerate(instances):
        for c in range(5):
            where = (classes[k] == c + 1) if classes is not None else (c == 0)
            channels[k, ..., c] = np.where(where, instance, 0)
    np.save(path, channels)
    return path


def same_agnostic(three_folds, pred, reference, tmp_path, *extra):
    """evaluate's class-agnostic numbers (bPQ, detection, per patch) of pred equal those of the reference."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    got, got_rows, entry = score(three_folds, pred, tmp_path / "a", *extra)
    want, want_rows, _ = score(three_folds, reference, tmp_path / "b")
    assert entry["classified"] is False
    assert got["mPQ"] is None and got["detection"]["type_accuracy"] is None
    assert agnostic_part(got, got_rows) == agnostic_part(want, want_rows)
    return got, entry


def same_classified(three_folds, pred, reference, tmp_path, *extra):
    """evaluate's whole result (every number) of pred equals that of the reference."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    got, got_rows, entry = score(three_folds, pred, tmp_path / "a", *extra)
    want, want_rows, _ = score(three_folds, reference, tmp_path / "b")
    assert entry["classified"] is True
    assert got == want and got_rows == want_rows
    return got, entry


# ---------------------------------------------------------------------------------------------
# StarDist: star_dist -> polygons_to_label -> csbdeep save_tiff_imagej_compatible.
# ---------------------------------------------------------------------------------------------


def stardist_labels(instance):
    """What StarDist renders for these nuclei: each nucleus' 32 ray distances (star_dist) at its most interior
    pixel, as the network would predict them there, painted by polygons_to_label in order of that depth."""
    from scipy import ndimage
    from stardist import polygons_to_label, star_dist

    ids = sorted(set(np.unique(instance).tolist()) - {0})
    if not ids:
        return np.zeros(SIZE, np.int32)
    distances = star_dist(instance.astype(np.uint16), n_rays=32)
    points, depth = [], []
    for nucleus in ids:
        inside = ndimage.distance_transform_edt(instance == nucleus)
        y, x = np.unravel_index(int(np.argmax(inside)), SIZE)
        points.append((y, x))
        depth.append(float(inside[y, x]))
    points = np.array(points)
    return polygons_to_label(distances[points[:, 0], points[:, 1]], points, SIZE, prob=np.array(depth))


@pytest.mark.parametrize("kind", KINDS)
def test_stardist_labels_saved_by_csbdeep_score_as_the_label_map(kind, predictions, three_folds, tmp_path):
    from csbdeep.io import save_tiff_imagej_compatible

    folder = tmp_path / "stardist_out"
    folder.mkdir()
    rendered = []
    for patch, (instance, _) in zip(PATCHES, predictions[kind]):
        labels = stardist_labels(instance)
        assert labels.dtype == np.int32
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Converting data type from 'int32' to ImageJ-compatible 'int16'")
            save_tiff_imagej_compatible(str(folder / f"{patch}.tif"), labels, axes="YX")
        rendered.append(labels)
    assert sum(len(np.unique(r)) - 1 for r in rendered) > 100
    reference = masks_npy(tmp_path / "stardist.npy", rendered)
    result, entry = same_agnostic(three_folds, folder, reference, tmp_path)
    assert entry["layout"] == "tiff"
    assert 0.5 < result["bPQ"] < 1  # star-convex polygons of 32 rays: close to the nuclei, not equal


def test_csbdeep_int16_wrap_is_refused_in_one_line(predictions, three_folds, tmp_path, capsys):
    from csbdeep.io import save_tiff_imagej_compatible

    folder = tmp_path / "stardist_out"
    folder.mkdir()
    wrapped = next(k for k, (instance, _) in enumerate(predictions["truth"]) if instance.any())
    for k, (patch, (instance, _)) in enumerate(zip(PATCHES, predictions["truth"])):
        labels = stardist_labels(instance)
        if k == wrapped:  # ids from 32768 on, as in a large image: csbdeep's int16 turns them negative
            labels = np.where(labels > 0, labels + 32767, 0).astype(np.int32)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Converting data type")
            save_tiff_imagej_compatible(str(folder / f"{patch}.tif"), labels, axes="YX")
    out = tmp_path / "bad.json"
    argv = ["evaluate", "--pred", str(folder), "--data-dir", three_folds, "--config", "folds", "--split", "fold1"]
    assert main([*argv, "--json", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    first = folder / f"{PATCHES[wrapped]}.tif"
    assert err == (
        f"pannuke-imagemask evaluate: error: {first}: negative ids (min -32768): an int16 TIFF whose ids from 32768 "
        "wrapped (csbdeep's save_tiff_imagej_compatible stores int32 labels as int16): save the labels with "
        "tifffile.imwrite, which keeps int32\n"
    )
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# InstanSeg: InstanSeg.eval(..., save_output=True, save_geojson=True) with a stand-in network.
# ---------------------------------------------------------------------------------------------


class StandIn(torch.nn.Module):
    """Stands for InstanSeg's downloaded TorchScript network: returns the (1, 1, H, W) label map it holds."""

    def __init__(self, labels):
        super().__init__()
        self.register_buffer("labels", torch.from_numpy(labels.astype(np.int32))[None, None])

    def forward(self, x: torch.Tensor, target_segmentation: torch.Tensor) -> torch.Tensor:
        return self.labels


@pytest.fixture(scope="module")
def instanseg_out(conic, predictions, tmp_path_factory):
    """{kind: folder} of InstanSeg's files, written beside each patch's PNG as InstanSeg.eval writes them."""
    from instanseg import InstanSeg

    images, _ = conic
    folders = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(f"instanseg-{kind}")
        for patch, image, (instance, _) in zip(PATCHES, images, predictions[kind]):
            Image.fromarray(image).save(folder / f"{patch}.png")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # no pixel size in a PNG; no CUDA for autocast; jit deprecation
                model = torch.jit.script(StandIn(instance))  # InstanSeg reads its forward's arguments off .graph
                segmenter = InstanSeg(model_type=model, device="cpu", image_reader="skimage.io", verbosity=0)
                segmenter.eval(str(folder / f"{patch}.png"), save_output=True, save_geojson=True)
            os.remove(folder / f"{patch}.png")  # the folder holds InstanSeg's outputs only
        folders[kind] = folder
    return folders


@pytest.mark.parametrize("kind", KINDS)
def test_instanseg_save_output_tiff_scores_as_its_label_map(kind, instanseg_out, predictions, three_folds, tmp_path):
    folder = instanseg_out[kind]
    assert sorted(os.listdir(folder)) == sorted(
        f"{p}_instanseg_prediction.{e}" for p in PATCHES for e in ("tiff", "geojson")
    )
    reference = masks_npy(tmp_path / "instanseg.npy", [instance for instance, _ in predictions[kind]])
    _, entry = same_agnostic(three_folds, folder, reference, tmp_path, "--pred-format", "tiff")
    assert entry["layout"] == "tiff"


def four_connected_pieces(instance):
    """Each 4-connected piece of each id as a nucleus of its own (what rasterio.features.shapes traces), 1..n."""
    from skimage.measure import label

    pieces = np.zeros(SIZE, np.int32)
    for nucleus in sorted(set(np.unique(instance).tolist()) - {0}):
        parts = label(instance == nucleus, connectivity=1)
        for part in range(1, parts.max() + 1):
            pieces[parts == part] = pieces.max() + 1
    return pieces


@pytest.mark.parametrize("kind", KINDS)
def test_instanseg_labels_to_features_geojson_scores_as_its_pieces(
    kind, instanseg_out, predictions, three_folds, tmp_path
):
    folder = instanseg_out[kind]
    pieces = [four_connected_pieces(instance) for instance, _ in predictions[kind]]
    features = 0
    for patch, piece in zip(PATCHES, pieces):
        with open(folder / f"{patch}_instanseg_prediction.geojson") as f:
            document = json.load(f)
        assert document["type"] == "FeatureCollection"  # a one-channel (nuclei) model's file
        assert all(feature["properties"] == {"object_type": "detection"} for feature in document["features"])
        assert len(document["features"]) == len(np.unique(piece)) - 1  # one Feature per piece, no label kept
        features += len(document["features"])
    assert features > 300
    reference = masks_npy(tmp_path / "pieces.npy", pieces)
    # InstanSeg's folder as it wrote it: <id>_instanseg_prediction.geojson beside its label TIFFs (which the
    # recognition would pick: --pred-format geojson chooses the GeoJSON).
    _, entry = same_agnostic(three_folds, folder, reference, tmp_path, "--pred-format", "geojson")
    assert entry["layout"] == "geojson"


# ---------------------------------------------------------------------------------------------
# tiatoolbox: AnnotationStore.to_geojson of the nuclei's polygons.
# ---------------------------------------------------------------------------------------------


def piece_polygons(instance):
    """[(id, shapely Polygon)] of every 4-connected piece of every id, traced along pixel edges by rasterio."""
    import rasterio.features
    from shapely.geometry import shape

    shapes = rasterio.features.shapes(instance.astype(np.int32), mask=instance > 0, connectivity=4)
    return [(int(value), shape(geometry)) for geometry, value in shapes]


@pytest.mark.parametrize("kind", KINDS)
def test_tiatoolbox_to_geojson_scores_as_the_label_map(kind, predictions, three_folds, tmp_path):
    from tiatoolbox.annotation import Annotation, DictionaryStore

    folder = tmp_path / "tiatoolbox_out"
    folder.mkdir()
    pieces, piece_classes = [], []
    for patch, (instance, classes) in zip(PATCHES, predictions[kind]):
        store = DictionaryStore()  # SQLiteStore needs sqlite3 with loadable extensions, which not every Python has
        for nucleus, polygon in piece_polygons(instance):
            assert polygon.is_valid
            kind_of = int(classes[instance == nucleus][0])  # every id has one class
            name = NAMES[kind_of - 1]
            color = [int(v) for v in pim.CLASS_COLORS[kind_of]]
            # An Annotation takes a Point, LineString or Polygon only: a nucleus in two pieces is two annotations.
            store.append(Annotation(polygon, {"type": name, "classification": {"name": name, "color": color}}))
        # to_geojson(fp) of an empty store raises UnboundLocalError (tiatoolbox 2.1.3); the text form does not.
        (folder / f"{patch}.geojson").write_text(store.to_geojson())
        piece = four_connected_pieces(instance)
        pieces.append(piece)
        piece_classes.append(np.where(piece > 0, classes, 0))
    assert sum(len(np.unique(p)) - 1 for p in pieces) > sum(len(np.unique(i)) - 1 for i, _ in predictions[kind])
    reference = masks_npy(tmp_path / "tiatoolbox.npy", pieces, piece_classes)
    result, entry = same_classified(three_folds, folder, reference, tmp_path)
    assert entry["layout"] == "geojson"
    assert 0 < result["mPQ"] < 1


# ---------------------------------------------------------------------------------------------
# HoVer-Net: post_proc.process and InferManager.__save_json, in a subprocess.
# ---------------------------------------------------------------------------------------------

HOVERNET_SCRIPT = """
import os, sys
import numpy as np
import hover_net
sys.path.insert(0, os.path.dirname(hover_net.__file__))  # targets.py imports `misc.utils` as upstream's run_train
from hover_net.infer.base import InferManager
from hover_net.models.hovernet.post_proc import process
from hover_net.models.hovernet.targets import gen_instance_hv_map

arrays, out = np.load(sys.argv[1], allow_pickle=False), sys.argv[2]
os.makedirs(os.path.join(out, "json"))
for name, instance, classes in zip(arrays["names"], arrays["instances"], arrays["classes"]):
    # run_desc.py infer_step's output: [type argmax, nuclei probability, h, v]
    hv = gen_instance_hv_map(instance, instance.shape)
    pred_map = np.dstack([classes, (instance > 0), hv]).astype(np.float32)
    _, inst_info_dict = process(pred_map, nr_types=6, return_centroids=True)  # as infer/tile.py calls it
    InferManager._InferManager__save_json(None, os.path.join(out, "json", name + ".json"), inst_info_dict, None)
"""


def filled_from_json(path):
    """HoVer-Net's JSON drawn independently: each contour filled by cv2.drawContours (FILLED), larger first, as
    hovernet-json documents; returns the mat/ dict (inst_map, inst_uid, inst_type, inst_centroid) of it."""
    with open(path) as f:
        nuclei = json.load(f)["nuc"]
    filled = {}
    for key, nucleus in nuclei.items():
        canvas = np.zeros(SIZE, np.uint8)
        cv2.drawContours(canvas, [np.array(nucleus["contour"], np.int32).reshape(-1, 1, 2)], -1, 1, cv2.FILLED)
        filled[int(key)] = canvas.astype(bool)
    inst_map = np.zeros(SIZE, np.int32)
    for key in sorted(filled, key=lambda k: (-int(filled[k].sum()), k)):
        inst_map[filled[key]] = key
    keys = sorted(nuclei, key=int)
    return {
        "inst_map": inst_map,
        "inst_uid": np.array([int(k) for k in keys], np.int32).reshape(-1, 1),
        "inst_type": np.array([nuclei[k]["type"] for k in keys], np.int32).reshape(-1, 1),
        "inst_centroid": np.array([nuclei[k]["centroid"] for k in keys], np.float64).reshape(-1, 2),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_hovernet_post_processing_json_scores_as_its_contours_filled(kind, predictions, three_folds, tmp_path):
    arrays = tmp_path / "maps.npz"
    instances, classes = zip(*predictions[kind])
    np.savez(arrays, names=np.array(PATCHES), instances=np.stack(instances), classes=np.stack(classes))
    out = tmp_path / "hovernet_out"
    argv = [sys.executable, "-c", HOVERNET_SCRIPT, str(arrays), str(out)]
    run = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(out / "json")) == sorted(f"{p}.json" for p in PATCHES)
    mat = tmp_path / "independent" / "mat"
    mat.mkdir(parents=True)
    count = 0
    for patch in PATCHES:
        drawn = filled_from_json(out / "json" / f"{patch}.json")
        scipy.io.savemat(mat / f"{patch}.mat", drawn)
        count += len(drawn["inst_uid"])
    assert count > 250
    result, entry = same_classified(three_folds, out, mat.parent, tmp_path)
    assert entry["layout"] == "hovernet-json"
    assert result["bPQ"] < 1  # HoVer-Net's watershed of its own HV targets does not give every nucleus back
