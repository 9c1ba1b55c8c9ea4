"""imagemask: DIR/{split}/{images,masks}/<id>.<ext> and DIR/{split}/metadata.jsonl.

The tree that `datasets.load_dataset("imagefolder", data_dir=DIR)` reads as it stands (datasets 3.6 to 5):
its split folders are split names it knows (`valid` is validation), and each split's metadata.jsonl names
the two files of a row in `image_file_name` and `mask_file_name` (relative to that folder), which it
turns into the Image columns `image` and `mask`. A root-level table would not be read (imagefolder takes
a split's metadata from inside the split's files only), so the per-split files are the one place the
rows live. JSON lines, not CSV: datasets 3.6 with pandas 3 reads a CSV's strings as large_string and
then refuses `*_file_name` columns.

Every mask is a plain PNG (RGB, 8-bit or 16-bit greyscale): the semantic style too, so that OpenCV,
`convert("L")` and every other reader get the classes 0..5. The builder's own semantic_mask is a palette
PNG, whose indices only Pillow's np.asarray reads as classes, so it is decoded and re-encoded.
"""

import json

import numpy as np

import pannuke_imagemask as pim

from ..files import Lines, Png, image_file
from ..images import decode, image_size_bounds, png_bound, png_lengths, resize_mask
from . import Format, summary_row

MASK_STYLES = ("color", "semantic", "binary", "instance")
IMAGE_FORMATS = ("png", "jpg")
METADATA_LINE_BOUND = 400  # bytes of a metadata.jsonl line: about 260 with the longest tissue and counts
COLORS = pim.CLASS_COLORS  # RGB as it appears on screen, index = semantic class

METADATA_COLUMNS = (
    ["image_file_name", "mask_file_name", "id", "fold", "index", "tissue"]
    + [f"n_{name}" for name in pim.NUCLEUS_CLASSES]
    + ["n_nuclei"]
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


def mask_png(row, style, size):
    """The mask file of one builder row (images not decoded): the builder's instance PNG when nothing changes."""
    if size == pim.PATCH_SIZE and style == "instance":
        return row["instance_mask"]["bytes"]
    semantic = decode(row["semantic_mask"]["bytes"])
    instance = decode(row["instance_mask"]["bytes"]) if style == "instance" else None
    return pim.encode_png(resize_mask(render_mask(semantic, instance, style), size))


class ImageMask(Format):
    takes = ("size", "mask_style", "image_format")
    changed_in = "1.3.0"  # metadata.jsonl per split for imagefolder; semantic masks 8-bit greyscale, not palette

    @staticmethod
    def names(row, options):
        """(image, mask) file names of a patch, relative to its split folder."""
        return f"images/{row['id']}.{options['image_format']}", f"masks/{row['id']}.png"

    def patch_files(self, split, position, row, options):
        folder, (image, mask) = self.split_dir(split), self.names(row, options)
        return [
            image_file(f"{folder}/{image}", row, options["image_format"], options["size"]),
            Png(f"{folder}/{mask}", mask_png(row, options["mask_style"], options["size"])),
        ]

    def record(self, split, position, row, options):
        """The metadata.jsonl line of one patch: its files relative to the split folder, then what it holds."""
        values = [*self.names(row, options), *summary_row(self, split, row)[1:]]
        return json.dumps(dict(zip(METADATA_COLUMNS, values))) + "\n"

    def tree_files(self, dataset_dict, records, options):
        return [Lines(f"{self.split_dir(split)}/metadata.jsonl", records[split]) for split in dataset_dict]

    def estimate(self, dataset_dict, options):
        size, style = options["size"], options["mask_style"]
        sizes = []
        for dataset in dataset_dict.values():
            sizes += image_size_bounds(dataset, options["image_format"], size)
            if size == pim.PATCH_SIZE and style == "instance":
                sizes += png_lengths(dataset, "instance_mask")
            else:
                shape = {"color": (3, 1), "semantic": (1, 1), "binary": (1, 1), "instance": (1, 2)}[style]
                sizes += [png_bound(size, size, *shape)] * dataset.num_rows
            sizes.append(METADATA_LINE_BOUND * dataset.num_rows)
        return sizes


FORMAT = ImageMask()
