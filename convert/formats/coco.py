"""coco: DIR/{split}/images/<image id>.png and DIR/annotations/instances_{split}.json, masks as RLE.

One annotation per nucleus of the builder's `nuclei`, its mask (instance_mask == id) run-length encoded
by pycocotools, the reference implementation. Image ids are fold * 100000 + index; annotation ids run
1, 2, ... through a split's file in (fold, index, nucleus id) order.
"""

import numpy as np
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

import pannuke_imagemask as pim

from ..files import Json, image_file
from ..images import decode, image_size_bounds
from . import Format

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
    takes = ("image_format",)
    changed_in = "1.3.0"  # info.contributor spelt as in the citation

    def patch_files(self, split, position, row, options):
        path = f"{self.split_dir(split)}/images/{image_id(row['fold'], row['index'])}.{options['image_format']}"
        return [image_file(path, row, options["image_format"])]

    def record(self, split, position, row, options):
        return patch_record(row, options["image_format"])

    def tree_files(self, dataset_dict, records, options):
        return [
            Json(f"annotations/instances_{self.split_dir(split)}.json", coco_document(records[split]), compact=True)
            for split in dataset_dict
        ]

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            sizes += image_size_bounds(dataset, options["image_format"])
            nuclei = dataset.data.table.column("nuclei").combine_chunks()  # row indices over the whole split
            areas = pc.struct_field(pc.list_flatten(nuclei), "area").to_numpy(zero_copy_only=False)
            # Per image entry < 400 bytes; per annotation < 200 bytes plus its counts: at most 2 * area + 1
            # runs, each at most 4 characters (pycocotools writes 5 bits per character, runs < 65536).
            sizes.append(2048 + 400 * dataset.num_rows + int((200 + 4 * (2 * areas + 1)).sum()))
        return sizes


FORMAT = Coco()
