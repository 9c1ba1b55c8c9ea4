"""imagemask: DIR/{split}/{images,masks}/<id>.<ext> plus metadata.csv (the tree of 1.0, unchanged)."""

import csv
import io

import numpy as np

import pannuke_imagemask as pim

from ..files import Checked, Png, image_file
from ..images import NATIVE_SIZE, decode, image_size_bounds, png_bound, png_lengths, resize_mask
from . import Format, summary_row

MASK_STYLES = ("color", "semantic", "binary", "instance")
IMAGE_FORMATS = ("png", "jpg")
COLORS = pim.CLASS_COLORS  # RGB as it appears on screen, index = semantic class

METADATA_COLUMNS = (
    ["split", "id", "fold", "index", "tissue"]
    + [f"n_{name}" for name in pim.NUCLEUS_CLASSES]
    + ["n_nuclei", "image", "mask"]
)


def render_mask(semantic, instance, style):
    """The exported mask array of one patch in a style, from the builder's semantic and instance masks."""
    if style == "color":
        return np.take(COLORS, semantic, axis=0)  # the same as COLORS[semantic], in a third of the time
    if style == "semantic":
        return semantic
    if style == "binary":
        return np.where(semantic > 0, 255, 0).astype(np.uint8)
    if style == "instance":
        return instance
    raise ValueError(f"unknown mask style {style!r}; valid: {', '.join(MASK_STYLES)}")


def mask_png(row, options):
    """The mask file of one builder row (images not decoded): the builder's PNG when nothing changes."""
    size, style = options["size"], options["mask_style"]
    if size == NATIVE_SIZE and style in ("semantic", "instance"):
        return row[f"{style}_mask"]["bytes"]
    semantic = decode(row["semantic_mask"]["bytes"])
    instance = decode(row["instance_mask"]["bytes"]) if style == "instance" else None
    mask = resize_mask(render_mask(semantic, instance, style), size)
    return pim.encode_semantic_png(mask) if style == "semantic" else pim.encode_png(mask)


def split_dir(split):
    return ImageMask.split_dirs.get(split, split)


def relative_paths(split, patch_id, image_format):
    folder = split_dir(split)
    return (f"{folder}/images/{patch_id}.{image_format}", f"{folder}/masks/{patch_id}.png")


def metadata_problems(expected_rows):
    def check(data):
        actual_rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline="")))
        if actual_rows[:1] != expected_rows[:1]:
            return [f"columns {actual_rows[:1]}, expected {expected_rows[0]}"]
        actual_set, expected_set = {tuple(r) for r in actual_rows[1:]}, {tuple(r) for r in expected_rows[1:]}
        problems = [f"row missing or changed: {','.join(row)}" for row in sorted(expected_set - actual_set)]
        return problems + [f"unexpected row: {','.join(row)}" for row in sorted(actual_set - expected_set)]

    return check


class ImageMask(Format):
    takes = ("size", "mask_style", "image_format")

    def patch_files(self, split, position, row, options):
        image_path, mask_path = relative_paths(split, row["id"], options["image_format"])
        return [
            image_file(image_path, row, options["image_format"], options["size"]),
            Png(mask_path, mask_png(row, options)),
        ]

    def record(self, split, position, row, options):
        return summary_row(self, split, row) + list(relative_paths(split, row["id"], options["image_format"]))

    def tree_files(self, dataset_dict, records, options):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(r for split in records for r in records[split])
        rows = [METADATA_COLUMNS] + [[str(v) for v in r] for split in records for r in records[split]]
        return [Checked("metadata.csv", (text.getvalue().encode(),), metadata_problems(rows))]

    def estimate(self, dataset_dict, options):
        size, style = options["size"], options["mask_style"]
        sizes = []
        for dataset in dataset_dict.values():
            sizes += image_size_bounds(dataset, options["image_format"], size)
            if size == NATIVE_SIZE and style in ("semantic", "instance"):
                sizes += png_lengths(dataset, f"{style}_mask")
            else:
                shape = {"color": (3, 1), "semantic": (1, 1), "binary": (1, 1), "instance": (1, 2)}[style]
                sizes += [png_bound(size, size, *shape)] * dataset.num_rows
        rows = sum(ds.num_rows for ds in dataset_dict.values())
        return sizes + [200 * (rows + 1)]  # metadata.csv: under 200 bytes a row


FORMAT = ImageMask()
