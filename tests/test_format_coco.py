"""python -m convert export --format coco: every annotation against the independent reference, read by pycocotools."""

import json
import os
import re

import numpy as np
import pytest
from pannuke_fixtures import part1_members
from PIL import Image

import pannuke_imagemask as pim

CLASS_NAMES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]


def test_coco_contributors_are_spelled_as_in_the_citation(export_tree):
    authors = re.findall(r"author\s*=\s*\{(.*?)\},", pim._CITATION, re.DOTALL)
    surnames = {name.split(",")[0].strip() for field in authors for name in re.split(r"\s+and\s+", field)}
    info = json.loads((export_tree("coco") / "annotations" / "instances_train.json").read_text())["info"]
    assert info["contributor"] == "Gamper, Koohbanani, Benet, Graham, Jahanifar, Khurram, Azam, Hewitt, Rajpoot"
    assert set(info["contributor"].split(", ")) <= surnames


def test_coco_files_load_and_every_annotation_is_its_nucleus(export_tree, part1_patches):
    from pycocotools.coco import COCO

    root = export_tree("coco")
    assert sorted(os.listdir(root / "annotations")) == [f"instances_{s}.json" for s in ("test", "train", "valid")]
    for split, members in part1_members().items():
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
            image, _, instance, nuclei, tissue = part1_patches[index]
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
def test_coco_ground_truth_as_detections_scores_ap_1(export_tree, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO(str(export_tree("coco") / "annotations" / "instances_train.json"))
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
