"""coco: DIR/{split}/images/<image id>.png and DIR/annotations/instances_{split}.json, masks as RLE.

One annotation per nucleus of the builder's `nuclei`, its mask (instance_mask == id) run-length encoded
by pycocotools, the reference implementation. Image ids are fold * 100000 + index; annotation ids run
1, 2, ... through a split's file in (fold, index, nucleus id) order.
"""

import json
import os

import numpy as np
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

import pannuke_imagemask as pim

from . import Format, decode, list_files, undecoded, write_bytes
from .imagemask import compare_image, image_file, image_size_bounds

LICENSE = {"id": 1, "name": "CC BY-NC-SA 4.0", "url": "https://creativecommons.org/licenses/by-nc-sa/4.0/"}
CATEGORIES = [{"id": k + 1, "name": name, "supercategory": "nucleus"} for k, name in enumerate(pim.NUCLEUS_CLASSES)]
INFO = {
    "description": "PanNuke (Gamper et al. 2019, 2020) exported by pannuke-imagemask",
    "url": pim._HOMEPAGE,
    "version": str(pim.PanNukeImageMask.VERSION),
    "year": 2020,
    "contributor": "Gamper, Koohbanani, Benet, Graham, Jahanifar, Khurram, Azam, Hewitt, Rajpoot",
}
IMAGE_ID_STRIDE = 100000  # image id = fold * 100000 + index: unique over the three folds, readable


def image_id(fold, index):
    return int(fold) * IMAGE_ID_STRIDE + int(index)


def patch_record(row, image_format):
    """The image entry and the annotations (without ids) of one builder row."""
    instance = decode(row["instance_mask"]["bytes"])
    annotations = []
    for nucleus in row["nuclei"]:
        rle = mask_utils.encode(np.asfortranarray(instance == nucleus["id"]).astype(np.uint8))
        annotations.append(
            {
                "category_id": nucleus["label"] + 1,
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": nucleus["area"],
                "bbox": list(nucleus["bbox"]),
                "iscrowd": 0,
            }
        )
    fold, index = row["fold"], row["index"]
    image = {
        "id": image_id(fold, index),
        "file_name": f"{image_id(fold, index)}.{image_format}",
        "width": instance.shape[1],
        "height": instance.shape[0],
        "license": LICENSE["id"],
        "pannuke_id": row["id"],
        "fold": fold,
        "index": index,
        "tissue": pim.TISSUES[row["tissue"]],
    }
    return {"image": image, "annotations": annotations}


def coco_document(records):
    """The COCO JSON of a split from its patch records, in order: annotation ids 1, 2, ..."""
    images, annotations = [], []
    for record in records:
        images.append(record["image"])
        for annotation in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": record["image"]["id"], **annotation})
    return {"info": INFO, "licenses": [LICENSE], "categories": CATEGORIES, "images": images, "annotations": annotations}


class Coco(Format):
    name = "coco"
    takes = ("image_format",)
    changed_in = "1.3.0"  # info.contributor spelt as in the citation

    def annotation_path(self, split):
        return f"annotations/instances_{self.split_dir(split)}.json"

    def image_path(self, split, row, image_format):
        return f"{self.split_dir(split)}/images/{image_id(row['fold'], row['index'])}.{image_format}"

    def prepare(self, root, dataset_dict, options):
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        for split in dataset_dict:
            os.makedirs(os.path.join(root, self.split_dir(split), "images"), exist_ok=True)

    def write_patch(self, root, split, position, row, options):
        path = self.image_path(split, row, options["image_format"])
        write_bytes(os.path.join(root, path), image_file(row, options["image_format"]))
        return patch_record(row, options["image_format"])

    def finish_split(self, root, split, records, dataset, options):
        text = json.dumps(coco_document(records), separators=(",", ":"))
        write_bytes(os.path.join(root, self.annotation_path(split)), text.encode())

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            sizes += image_size_bounds(dataset, options["image_format"], 256)
            nuclei = dataset.data.table.column("nuclei").combine_chunks()  # row indices over the whole split
            areas = pc.struct_field(pc.list_flatten(nuclei), "area").to_numpy(zero_copy_only=False)
            # Per image entry < 400 bytes; per annotation < 200 bytes plus its counts: at most 2 * area + 1
            # runs, each at most 4 characters (pycocotools writes 5 bits per character, runs < 65536).
            sizes.append(2048 + 400 * dataset.num_rows + int((200 + 4 * (2 * areas + 1)).sum()))
        return sizes

    def verify(self, root, dataset_dict, manifest, progress=None):
        image_format = manifest["image_format"]
        expected = set()
        for split, dataset in dataset_dict.items():
            expected.add(self.annotation_path(split))
            for fold, index in zip(dataset["fold"], dataset["index"]):
                expected.add(f"{self.split_dir(split)}/images/{image_id(fold, index)}.{image_format}")
        actual = list_files(root)
        problems = self.file_problems(expected, actual)
        for split, dataset in dataset_dict.items():
            records = []
            for row in undecoded(dataset):
                records.append(patch_record(row, image_format))
                path = self.image_path(split, row, image_format)
                if path in actual:
                    problem = compare_image(root, path, row, image_format)
                    if problem:
                        problems.append(f"{path}: {problem}")
                if progress:
                    progress(1)
            path = self.annotation_path(split)
            if path in actual:
                problems += json_problems(path, os.path.join(root, path), coco_document(records))
        return problems


def json_problems(name, path, expected):
    """What differs between a COCO file and the expected document, section by section."""
    try:
        with open(path) as f:
            actual = json.load(f)
    except (OSError, ValueError) as exc:
        return [f"{name}: cannot be read as JSON ({exc})"]
    expected = json.loads(json.dumps(expected))  # tuples become lists, as in the file
    problems = []
    for key in expected:
        if actual.get(key) == expected[key]:
            continue
        if isinstance(expected[key], list) and isinstance(actual.get(key), list):
            wrong = [e.get("id") for a, e in zip(actual[key], expected[key]) if a != e]
            detail = f"{len(actual[key])} entries, expected {len(expected[key])}"
            if wrong:
                detail += f"; first differing id {wrong[0]}"
            problems.append(f"{name}: {key} differ ({detail})")
        else:
            problems.append(f"{name}: {key} differs")
    problems += [f"{name}: unexpected key {key}" for key in sorted(set(actual) - set(expected))]
    return problems


FORMAT = Coco()
