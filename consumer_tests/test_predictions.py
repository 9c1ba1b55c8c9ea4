"""Each framework's own prediction writer, read by evaluate: the reader's arrays and evaluate's numbers equal
those of an independent conversion of the same files scored as a masks.npy.

The recipes of docs/evaluate.md ("Recipe per framework") are run as printed: their Python blocks (with a
one-epoch YOLO and an untrained Mask R-CNN for the user's models) and every `evaluate` line, on split 1's
test fold (fold 3) of the fake folds.
"""

import json
import os
import re
import shlex

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from blocks import ROOT, python_blocks
from pannuke_fixtures import THREE_FOLD_PATCHES, raw_fold
from prediction_reference import components, expected, reference_combination
from pycocotools import mask as mask_utils
from reference import reference_labels

import pannuke_imagemask as pim
from convert.__main__ import main
from convert.formats.coco import image_id
from convert.predictions import open_prediction

FOLD = 3
PATCHES = [(pim.patch_id(FOLD, i), image_id(FOLD, i)) for i in range(THREE_FOLD_PATCHES[FOLD])]
SIZE = (256, 256)
CONFIDENCES = (0.9, 0.9, 0.8, 0.6, 0.5, 0.4)  # ties, one equal to --min-score, one below it


def _recipe():
    """(Python blocks, {--pred value: evaluate argv}) of docs/evaluate.md's recipe section."""
    with open(os.path.join(ROOT, "docs", "evaluate.md"), encoding="utf-8") as f:
        section = f.read().split("## Recipe per framework\n")[1].split("\n## ")[0]
    lines = {}
    for line in section.splitlines():
        if line.startswith("    python -m convert evaluate "):
            argv = shlex.split(line)[3:]
            lines[argv[argv.index("--pred") + 1]] = argv
    return python_blocks(section), lines


BLOCKS, LINES = _recipe()


def _block(containing):
    found = [block for block in BLOCKS if containing in block]
    assert len(found) == 1
    return found[0]


def test_the_recipe_section_has_one_evaluate_line_per_framework_and_two_python_blocks():
    assert sorted(LINES) == [
        "cellpose_out", "cellvit_out", "geojson_out", "hovernet_out", "hovernet_out/json", "maskrcnn_results.json",
        "nnunet_pred", "runs/predict",
    ]  # fmt: skip
    assert all(argv[:7] == ["evaluate", "--data-dir", "~/data/pannuke", "--config", "folds", "--split", "fold3"]
               for argv in LINES.values())  # fmt: skip
    assert len(BLOCKS) == 2


@pytest.fixture(scope="module")
def truth(three_folds):
    """Per patch of fold 3: the raw mask and the builder's (semantic, instance, nuclei), from the reference."""
    _, masks, _ = raw_fold(three_folds, FOLD, "official")
    return [(np.asarray(m), *reference_labels(np.asarray(m))) for m in masks]


@pytest.fixture(scope="module")
def work(tmp_path_factory, three_folds, cache):
    """The folder the recipes run in, with the exports they read (--config folds)."""
    root = tmp_path_factory.mktemp("recipes")
    for name in ("yolo", "coco", "cellpose"):
        argv = ["export", "--format", name, "--config", "folds", "--data-dir", three_folds, "--out"]
        assert main([*argv, str(root / f"pannuke-{name}"), "--cache-dir", cache, "--quiet"]) == 0
    return root


@pytest.fixture
def in_work(work, monkeypatch):
    monkeypatch.chdir(work)
    return work


def evaluate(pred, three_folds, out, *extra):
    """evaluate's --json result for a docs line's --pred (or any path), with extra options."""
    argv = [a.replace("~/data/pannuke", three_folds) for a in LINES.get(str(pred), LINES["runs/predict"])]
    argv[argv.index("--pred") + 1] = str(pred)
    assert main([*argv, *extra, "--json", str(out), "--quiet"]) == 0
    return json.loads(out.read_text())


def as_masks(conversions, three_folds, tmp_path, name="independent"):
    """evaluate's result for the independent conversion [(channels, centroids, types), ...] as a masks.npy."""
    path = tmp_path / f"{name}.npy"
    np.save(path, np.stack([channels for channels, _, _ in conversions]).astype(np.int32))
    return evaluate(path, three_folds, tmp_path / f"{name}.json")


def same_scores(result, reference, classified=True):
    """The numbers of two results are equal; without classes only bPQ and detection, the rest null."""
    if classified:
        for key in ("mPQ", "bPQ", "per_class", "per_tissue", "detection", "f1_per_class"):
            assert result[key] == reference[key], key
        return
    assert result["bPQ"] == reference["bPQ"]
    assert {t: v["bPQ"] for t, v in result["per_tissue"].items()} == {
        t: v["bPQ"] for t, v in reference["per_tissue"].items()
    }
    for key in ("f1", "precision", "recall"):
        assert result["detection"][key] == reference["detection"][key], key
    assert result["mPQ"] is None and result["detection"]["type_accuracy"] is None
    assert set(result["per_class"].values()) == {None} and set(result["f1_per_class"].values()) == {None}


def same_arrays(path, conversions, **options):
    """The reader's PatchPrediction of every patch equals the independent conversion's."""
    prediction = open_prediction(str(path), None, PATCHES, SIZE, **options)
    for position, (channels, centroids, types) in enumerate(conversions):
        got = prediction.read(position)
        np.testing.assert_array_equal(got.channels, channels)
        np.testing.assert_array_equal(got.centroids, centroids)
        np.testing.assert_array_equal(got.types, types)
    return prediction


# ---------------------------------------------------------------------------------------------
# Ultralytics: predict(save_txt=True, save_conf=True), and Results.save_txt on the truth.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolo_weights(ultralytics_env, work, tmp_path_factory):
    """The tier's one-epoch model (as consumer_tests/test_ultralytics.py trains it), on split 1's data.yaml."""
    from ultralytics import YOLO

    runs = tmp_path_factory.mktemp("yolo-runs")
    model = YOLO("yolo11n-seg.yaml")  # built from the YAML: no checkpoint, nothing downloaded
    model.train(data=str(work / "pannuke-yolo" / "data.yaml"), epochs=1, imgsz=256, batch=8, device="cpu",
                workers=0, plots=False, project=str(runs), name="train", exist_ok=True, verbose=False)  # fmt: skip
    return runs / "train" / "weights" / "last.pt"


def yolo_conversion(labels, min_score=0.5):
    """Each labels file read line by line and filled by Ultralytics' own polygon2mask, then combined."""
    from ultralytics.data.utils import polygon2mask

    conversions, lines = [], 0
    for patch, _ in PATCHES:
        path = labels / f"{patch}.txt"
        masks, scores, types = [], [], []
        for line in path.read_text().splitlines() if path.exists() else []:
            tokens = line.split()
            # As Ultralytics' label loader and Instances.denormalize: float32, times the size.
            points = np.array(tokens[1:-1], dtype=np.float32).reshape(-1, 2) * np.float32(256)
            masks.append(polygon2mask(SIZE, [points.reshape(-1)], color=1, downsample_ratio=1).astype(bool))
            scores.append(float(tokens[-1]))
            types.append(int(tokens[0]) + 1)
        lines += len(masks)
        conversions.append(expected(*reference_combination(masks, scores, types, min_score)))
    return conversions, lines


def test_ultralytics_predict_recipe_scores_as_its_labels_filled_by_polygon2mask(
    yolo_weights, in_work, three_folds, tmp_path
):
    from ultralytics import YOLO

    block = _block("save_txt=True")
    exec(block.replace("runs/segment/train/weights/best.pt", str(yolo_weights)), {})  # noqa: S102 (our docs)
    labels = in_work / "runs" / "predict" / "labels"
    assert labels.is_dir()
    conversions, _ = yolo_conversion(labels)
    same_arrays(in_work / "runs" / "predict", conversions)
    result = evaluate("runs/predict", three_folds, tmp_path / "recipe.json")
    assert result["pred"]["layout"] == "yolo" and result["patches"] == len(PATCHES)
    same_scores(result, as_masks(conversions, three_folds, tmp_path))
    # The one-epoch model is unsure of everything (nothing at predict's default conf of 0.25): at a very low
    # threshold it writes dozens of lines per patch, with scores far below --min-score unless it is 0.
    YOLO(str(yolo_weights)).predict(str(in_work / "pannuke-yolo" / "images" / "fold3"), imgsz=256, conf=1e-4,
                                    save_txt=True, save_conf=True, project=str(tmp_path), name="low")  # fmt: skip
    for min_score in (0.5, 0.0):
        conversions, lines = yolo_conversion(tmp_path / "low" / "labels", min_score)
        assert lines > 100
        same_arrays(tmp_path / "low", conversions, min_score=min_score)
        result = evaluate(tmp_path / "low", three_folds, tmp_path / "low.json", "--min-score", str(min_score))
        same_scores(result, as_masks(conversions, three_folds, tmp_path, "low"))


def test_ultralytics_save_txt_of_the_truth_with_confidences(ultralytics_env, truth, three_folds, tmp_path):
    from ultralytics.engine.results import Results

    labels = tmp_path / "predict" / "labels"
    names = dict(enumerate(pim.NUCLEUS_CLASSES))
    for (patch, _), (_, _, instance, nuclei) in zip(PATCHES, truth):
        boxes = [[x, y, x + w, y + h, CONFIDENCES[k % 6], n["label"]] for k, n in enumerate(nuclei)
                 for x, y, w, h in [n["bbox"]]]  # fmt: skip
        masks = torch.stack([torch.from_numpy(instance == n["id"]) for n in nuclei]).float() if nuclei else None
        result = Results(np.zeros((*SIZE, 3), np.uint8), path=f"{patch}.png", names=names,
                         boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6), masks=masks)  # fmt: skip
        result.save_txt(labels / f"{patch}.txt", save_conf=True)
    missing = [patch for patch, _ in PATCHES if not (labels / f"{patch}.txt").exists()]
    assert missing == [patch for (patch, _), t in zip(PATCHES, truth) if not t[3]] and missing  # no file: no nuclei
    conversions, lines = yolo_conversion(labels)
    assert lines > 300
    same_arrays(tmp_path / "predict", conversions)
    result = evaluate(tmp_path / "predict", three_folds, tmp_path / "truth.json")
    same_scores(result, as_masks(conversions, three_folds, tmp_path))
    assert result["detection"]["precision"] == 1.0  # every kept polygon is a true nucleus: nothing spurious


# ---------------------------------------------------------------------------------------------
# COCO results: the Mask R-CNN recipe, on an untrained model and on outputs shaped like its own.
# ---------------------------------------------------------------------------------------------


def coco_conversion(path, min_score=0.5):
    """The results decoded by pycocotools and combined per image, in file order."""
    with open(path) as f:
        results = json.load(f)
    conversions = []
    for _, image in PATCHES:
        mine = [r for r in results if r["image_id"] == image]
        masks = [mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}).astype(bool)
                 for r in mine]  # fmt: skip
        scores, types = [r["score"] for r in mine], [r["category_id"] for r in mine]
        conversions.append(expected(*reference_combination(masks, scores, types, min_score)))
    return conversions, len(results)


def _run_mask_rcnn_recipe(work, **namespace):
    block = _block("maskrcnn_resnet50_fpn")
    block = block.replace('model.load_state_dict(torch.load("maskrcnn_pannuke.pt"))  # your trained weights\n', "")
    if "outputs" in namespace:  # the model's outputs given, so that the recipe's own code writes them
        block = block.replace("output = model([pixels])[0]", 'output = outputs[image["id"]]')
    else:  # an untrained model: 100 detections per patch are enough (1000 take minutes on a CPU)
        block = block.replace("box_detections_per_img=1000", "box_detections_per_img=100")
        block = block.replace("import torch\n", "import torch\ntorch.manual_seed(0)\n", 1)
    exec(block, namespace)  # noqa: S102 (our own docs: the recipe as printed)
    from pycocotools.coco import COCO

    coco = COCO(str(work / "pannuke-coco" / "annotations" / "instances_fold3.json"))
    loaded = coco.loadRes(str(work / "maskrcnn_results.json"))  # pycocotools accepts the file as it is
    return loaded


def test_mask_rcnn_recipe_with_an_untrained_model(in_work, three_folds, tmp_path):
    loaded = _run_mask_rcnn_recipe(in_work)
    assert len(loaded.anns) > 100
    for min_score in (0.5, 0.0):
        conversions, _ = coco_conversion(in_work / "maskrcnn_results.json", min_score)
        same_arrays(in_work / "maskrcnn_results.json", conversions, min_score=min_score)
        extra = ("--min-score", str(min_score))
        result = evaluate("maskrcnn_results.json", three_folds, tmp_path / "coco.json", *extra)
        assert result["pred"]["layout"] == "coco"
        same_scores(result, as_masks(conversions, three_folds, tmp_path))


def test_mask_rcnn_shaped_outputs_of_overlapping_true_nuclei(in_work, truth, three_folds, tmp_path):
    outputs = {}
    for (_, image), (mask, *_) in zip(PATCHES, truth):
        nuclei = [(mask[..., c] == v, c + 1) for c in range(5) for v in sorted(set(np.unique(mask[..., c])) - {0})]
        soft = [np.where(m, 0.9, 0.1).astype(np.float32) for m, _ in nuclei]  # probabilities, as Mask R-CNN's
        outputs[image] = {
            "labels": torch.tensor([t for _, t in nuclei], dtype=torch.int64),
            "scores": torch.tensor([CONFIDENCES[k % 6] for k in range(len(nuclei))]),
            "masks": torch.from_numpy(np.stack(soft)[:, None] if soft else np.zeros((0, 1, *SIZE), np.float32)),
        }
    _run_mask_rcnn_recipe(in_work, outputs=outputs)
    conversions, count = coco_conversion(in_work / "maskrcnn_results.json")
    assert count > 300
    same_arrays(in_work / "maskrcnn_results.json", conversions)
    result = evaluate("maskrcnn_results.json", three_folds, tmp_path / "coco.json")
    same_scores(result, as_masks(conversions, three_folds, tmp_path))


# ---------------------------------------------------------------------------------------------
# cellpose io.save_masks, nnU-Net NaturalImage2DIO.write_seg, HoVer-Net's .mat.
# ---------------------------------------------------------------------------------------------


def test_cellpose_save_masks_is_read_class_agnostic(in_work, truth, three_folds, tmp_path):
    from cellpose import cli, io

    argv = shlex.split(re.search(r"^    (cellpose --dir .*)$", _section(), re.MULTILINE).group(1))[1:]
    args = cli.get_arg_parser().parse_args(argv)  # the recipe's command, parsed by cellpose's own parser
    assert args.save_png and args.no_npy and args.savedir == "cellpose_out"
    names = [str(in_work / "pannuke-cellpose" / "fold3" / f"{patch}.png") for patch, _ in PATCHES]
    images = [io.imread(name) for name in names]
    masks = [(instance.astype(np.int32) * 5) for _, _, instance, _ in truth]  # ids not contiguous
    io.save_masks(images, masks, [[None]] * len(names), names, png=True, savedir=args.savedir)
    written = sorted(os.listdir(in_work / "cellpose_out"))
    assert written == sorted(f"{p}_cp_masks.png" for (p, _), t in zip(PATCHES, truth) if t[3])  # none if empty
    conversions = []
    for _, _, instance, nuclei in truth:  # ids 1..n already: every nucleus in channel 0, type unknown
        channels, centroids, _ = expected(instance, [1] * len(nuclei))
        conversions.append((channels, centroids, np.zeros(len(nuclei), dtype=np.int64)))
    assert same_arrays(in_work / "cellpose_out", conversions).classified is False
    result = evaluate("cellpose_out", three_folds, tmp_path / "cellpose.json")
    assert result["pred"] == {"path": str(in_work / "cellpose_out"), "layout": "cellpose", "classified": False}
    same_scores(result, as_masks(conversions, three_folds, tmp_path), classified=False)
    assert result["bPQ"] > 0.99  # the truth itself


def _section():
    with open(os.path.join(ROOT, "docs", "evaluate.md"), encoding="utf-8") as f:
        return f.read().split("## Recipe per framework\n")[1].split("\n## ")[0]


def test_nnunet_write_seg_is_read_as_8_connected_components(in_work, truth, three_folds, tmp_path):
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    out = in_work / "nnunet_pred"
    out.mkdir()
    for name in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):  # what nnUNetv2_predict adds
        (out / name).write_text("{}")
    writer = NaturalImage2DIO()
    for (patch, _), (_, semantic, _, _) in zip(PATCHES, truth):
        writer.write_seg(semantic[None], str(out / f"{patch}.png"), {})  # (1, H, W), as nnU-Net hands it over
    conversions = [expected(*components(semantic)) for _, semantic, _, _ in truth]
    assert same_arrays(out, conversions).notes
    result = evaluate("nnunet_pred", three_folds, tmp_path / "nnunet.json")
    assert result["pred"]["layout"] == "semantic"
    same_scores(result, as_masks(conversions, three_folds, tmp_path))


def hovernet_mat(instance, nuclei):
    """The dict infer/tile.py saves, built as models/hovernet/post_proc.py `process` builds its nucleus list."""
    inst_map = np.where(instance > 0, instance.astype(np.int32) * 3 + 1, 0).astype(np.int32)  # not contiguous
    type_of = {n["id"] * 3 + 1: n["label"] + 1 for n in nuclei}
    info = {}
    for inst_id in np.unique(inst_map)[1:]:
        mask = inst_map == inst_id
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        rmin, rmax, cmin, cmax = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # get_bounding_box
        crop = mask[rmin:rmax, cmin:cmax].astype(np.uint8)
        moment = cv2.moments(crop)
        contour = np.squeeze(cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0][0].astype("int32"))
        if contour.shape[0] < 3 or len(contour.shape) != 2:  # HoVer-Net leaves these out of its list
            continue
        centroid = [moment["m10"] / moment["m00"] + cmin, moment["m01"] / moment["m00"] + rmin]
        info[inst_id] = {"centroid": np.array(centroid), "type": type_of[int(inst_id)]}
    values = list(info.values())
    return {
        "inst_map": inst_map,
        "inst_uid": np.array(list(info.keys()))[:, None],
        "inst_type": np.array([v["type"] for v in values])[:, None],
        "inst_centroid": np.array([v["centroid"] for v in values]),
    }


def test_hovernet_mat_files_as_infer_tile_writes_them(in_work, truth, three_folds, tmp_path):
    out = in_work / "hovernet_out"
    for folder in ("mat", "json", "overlay"):
        (out / folder).mkdir(parents=True)
    conversions = []
    for (patch, _), (_, _, instance, nuclei) in zip(PATCHES, truth):
        mat = hovernet_mat(instance, nuclei)
        scipy.io.savemat(out / "mat" / f"{patch}.mat", mat)
        cv2.imwrite(str(out / "overlay" / f"{patch}.png"), np.zeros((*SIZE, 3), np.uint8))
        uids = mat["inst_uid"].ravel().tolist()
        listed = np.where(np.isin(mat["inst_map"], uids), mat["inst_map"], 0)
        channels = np.zeros((*SIZE, 5), dtype=np.int64)
        for number, uid in enumerate(sorted(uids), 1):  # numbered in increasing id order
            channels[..., mat["inst_type"].ravel()[uids.index(uid)] - 1][listed == uid] = number
        centroids = mat["inst_centroid"].reshape(-1, 2)  # F1 reads HoVer-Net's own centroids
        conversions.append((channels, centroids, mat["inst_type"].ravel().astype(np.int64)))
    same_arrays(out, conversions)
    result = evaluate("hovernet_out", three_folds, tmp_path / "hovernet.json")
    assert result["pred"]["layout"] == "hovernet-mat"
    # As a masks.npy the F1 points are the pixels' means: HoVer-Net's moments of the crop give the same pairs.
    same_scores(result, as_masks(conversions, three_folds, tmp_path))
