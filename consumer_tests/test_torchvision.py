"""torchvision 0.29 reads the coco export: CocoDetection wrapped for transforms v2, and Mask R-CNN trains on it."""

import os
import re

import numpy as np
import pytest
from blocks import python_blocks
from pannuke_fixtures import PART1_PATCHES, raw_fold
from reference import reference_image, reference_labels

from convert.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory, kaggle_part1, cache):
    """The tree the docs' recipe names, pannuke-coco, in a folder of its own (the recipe's working folder)."""
    work = tmp_path_factory.mktemp("torchvision")
    argv = ["export", "--format", "coco", "--data-dir", kaggle_part1, "--cache-dir", cache, "--quiet"]
    assert main([*argv, "--out", str(work / "pannuke-coco")]) == 0
    return work


def _dataset(tree, split):
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    return wrap_dataset_for_transforms_v2(
        CocoDetection(str(tree / split / "images"), str(tree / "annotations" / f"instances_{split}.json")),
        target_keys=("image_id", "boxes", "labels", "masks"),
    )


def test_every_mask_box_and_label_is_the_reference(coco_tree, kaggle_part1):
    images, masks, _ = raw_fold(kaggle_part1)
    tree = coco_tree / "pannuke-coco"
    seen, empty = set(), 0
    for split in ("train", "valid", "test"):
        dataset = _dataset(tree, split)
        for k in range(len(dataset)):
            image, target = dataset[k]
            index = target["image_id"] - 100000  # the coco export's image ids: 100000 * fold + index
            seen.add(index)
            _, instance, nuclei = reference_labels(np.asarray(masks[index]))
            np.testing.assert_array_equal(np.asarray(image), reference_image(images[index]))
            if not nuclei:
                assert sorted(target) == ["image_id"]  # what the docs' collate fills in
                empty += 1
                continue
            assert target["labels"].tolist() == [n["label"] + 1 for n in nuclei]
            assert target["boxes"].format.value == "XYXY" and tuple(target["boxes"].canvas_size) == (256, 256)
            assert target["boxes"].tolist() == [[x, y, x + w, y + h] for x, y, w, h in (n["bbox"] for n in nuclei)]
            expected = np.stack([instance == n["id"] for n in nuclei])
            np.testing.assert_array_equal(target["masks"].numpy().astype(bool), expected)
    assert seen == set(range(PART1_PATCHES)) and empty == 2  # the void and the empty fake patch


def _docs_block(*containing):
    """The one python block of README.md or docs/ that contains every one of the strings."""
    found = []
    for name in [
        "README.md",
        *(f"docs/{f}" for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")),
    ]:
        with open(os.path.join(ROOT, name)) as f:
            found += [block for block in python_blocks(f.read()) if all(text in block for text in containing)]
    assert len(found) == 1, f"{len(found)} blocks contain {containing!r}"
    return found[0]


def test_the_docs_mask_rcnn_recipe_trains_on_a_batch_with_a_patch_without_nuclei(coco_tree, monkeypatch):
    import torch

    block = _docs_block("maskrcnn_resnet50_fpn", "optimizer")  # the training recipe (evaluate.md predicts)
    assert re.search(r"box_detections_per_img=\d{4}", block)  # torchvision's cap of 100 detections, raised
    monkeypatch.chdir(coco_tree)
    torch.manual_seed(0)
    namespace = {}
    exec(compile(block, "docs recipe", "exec"), namespace)  # noqa: S102 (our own docs: the recipe as printed)
    train, collate, model, optimizer = (namespace[k] for k in ("train", "collate", "model", "optimizer"))
    empty = [k for k in range(len(train)) if "boxes" not in train[k][1]]
    full = next(k for k in range(len(train)) if "boxes" in train[k][1])
    assert empty, "the train split of the fake fold holds a patch without nuclei"
    images, targets = collate([train[empty[0]], train[full]])
    assert targets[0]["boxes"].shape == (0, 4) and targets[0]["masks"].shape == (0, 256, 256)
    losses = model(list(images), list(targets))
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
