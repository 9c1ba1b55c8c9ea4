"""imagemask: DIR/{split}/{images,masks}/<id>.<ext> and DIR/{split}/metadata.jsonl.

The tree that `datasets.load_dataset("imagefolder", data_dir=DIR)` reads as it stands (datasets 3.6 to 5):
its split folders are split names it knows (`valid` is validation), and each split's metadata.jsonl names
the two files of a row in `image_file_name` and `mask_file_name` (relative to that folder), which it
turns into the Image columns `image` and `mask`. A root-level table would not be read (imagefolder takes
a split's metadata from inside the split's files only), so the per-split files are the one place the
rows live. JSON lines, not CSV: datasets 3.6 with pandas 3 reads a CSV's strings as large_string and
then refuses `*_file_name` columns.
"""

import io
import json
import os

import numpy as np
from PIL import Image

import pannuke_imagemask as pim

from . import (
    NATIVE_SIZE,
    Format,
    compare_jpeg,
    compare_png,
    jpeg_bound,
    list_files,
    png_bound,
    png_lengths,
    summary_row,
    undecoded,
    write_bytes,
)

MASK_STYLES = ("color", "semantic", "binary", "instance")
IMAGE_FORMATS = ("png", "jpg")
JPEG_QUALITY = 95
METADATA_LINE_BOUND = 400  # bytes of a metadata.jsonl line: about 260 with the longest tissue and counts
COLORS = pim.CLASS_COLORS  # RGB as it appears on screen, index = semantic class

METADATA_FILE = "metadata.jsonl"  # one per split folder
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


def resize_mask(mask, size):
    """Nearest-neighbour resize: only label values already present can appear."""
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    return np.array(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def resize_image(image, size):
    """High-quality (Lanczos) resize of an RGB PIL image."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.LANCZOS)


def encode_image(image, image_format):
    if image_format == "png":
        return pim.encode_image_png(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: keep stain colour
    return buffer.getvalue()


def image_file(row, image_format, size=NATIVE_SIZE):
    """The image file's bytes: the builder's PNG itself when nothing changes, else re-encoded."""
    image_png = row["image"]["bytes"]
    if image_format == "png" and size == NATIVE_SIZE:
        return image_png
    image = Image.open(io.BytesIO(image_png)).convert("RGB")
    return encode_image(resize_image(image, size), image_format)


def export_patch(row, options):
    """(image bytes, mask bytes) of one builder row (images not decoded), re-encoding only what changes.

    Every mask is a plain PNG (RGB, 8-bit or 16-bit greyscale): the semantic style too, so that OpenCV,
    `convert("L")` and every other reader get the classes 0..5. The builder's own semantic_mask is a
    palette PNG, whose indices only Pillow's np.asarray reads as classes, so it is decoded and re-encoded.
    """
    size, style = options["size"], options["mask_style"]
    image_bytes = image_file(row, options["image_format"], size)
    if size == NATIVE_SIZE and style == "instance":
        return image_bytes, row["instance_mask"]["bytes"]
    semantic = np.array(Image.open(io.BytesIO(row["semantic_mask"]["bytes"])))
    instance = np.array(Image.open(io.BytesIO(row["instance_mask"]["bytes"]))) if style == "instance" else None
    return image_bytes, pim.encode_png(resize_mask(render_mask(semantic, instance, style), size))


def image_size_bounds(dataset, image_format, size):
    """Sizes of a split's image files: known exactly for native PNG, else an upper bound."""
    if image_format == "png" and size == NATIVE_SIZE:
        return png_lengths(dataset, "image")
    bound = png_bound(size, size, 3) if image_format == "png" else jpeg_bound(size, size)
    return [bound] * dataset.num_rows


def compare_image(root, path, row, image_format, size=NATIVE_SIZE):
    """The verify problem of one image file, or None."""
    if image_format == "png":
        return compare_png(os.path.join(root, path), image_file(row, "png", size))
    source = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
    return compare_jpeg(os.path.join(root, path), np.array(resize_image(source, size)))


def split_dir(split):
    return ImageMask.split_dirs.get(split, split)


def relative_paths(split, patch_id, image_format):
    folder = split_dir(split)
    return (f"{folder}/images/{patch_id}.{image_format}", f"{folder}/masks/{patch_id}.png")


def metadata_path(split):
    return f"{split_dir(split)}/{METADATA_FILE}"


def metadata_line(split, row, image_format):
    """The metadata.jsonl line of one patch: its files relative to the split folder, then what it holds."""
    folder = split_dir(split) + "/"
    files = [path.removeprefix(folder) for path in relative_paths(split, row["id"], image_format)]
    values = files + summary_row(ImageMask, split, row)[1:]
    return json.dumps(dict(zip(METADATA_COLUMNS, values))) + "\n"


def metadata_problems(root, split, expected_lines):
    """What differs between a split's metadata.jsonl and its expected lines (file present)."""
    path = metadata_path(split)
    with open(os.path.join(root, path), "rb") as f:
        actual = f.read().decode("utf-8", errors="replace").splitlines(keepends=True)
    if actual == expected_lines:
        return []
    actual_set, expected_set = set(actual), set(expected_lines)
    problems = [f"{path}: row missing or changed: {line.rstrip()}" for line in expected_lines if line not in actual_set]
    problems += [f"{path}: unexpected row: {line.rstrip()[:300]}" for line in actual if line not in expected_set]
    if problems:
        return problems
    if len(actual) != len(expected_lines):
        return [f"{path}: {len(actual)} rows, expected {len(expected_lines)} (a row is repeated)"]
    return [f"{path}: rows not in the split's order"]


class ImageMask(Format):
    name = "imagemask"
    takes = ("size", "mask_style", "image_format")
    changed_in = "1.3.0"  # metadata.jsonl per split for imagefolder; semantic masks 8-bit greyscale, not palette

    def prepare(self, root, dataset_dict, options):
        for split in dataset_dict:
            for sub in ("images", "masks"):
                os.makedirs(os.path.join(root, self.split_dir(split), sub), exist_ok=True)

    def write_patch(self, root, split, position, row, options):
        image_bytes, mask_bytes = export_patch(row, options)
        image_path, mask_path = relative_paths(split, row["id"], options["image_format"])
        write_bytes(os.path.join(root, image_path), image_bytes)
        write_bytes(os.path.join(root, mask_path), mask_bytes)
        return metadata_line(split, row, options["image_format"])

    def finish_split(self, root, split, records, dataset, options):
        write_bytes(os.path.join(root, metadata_path(split)), "".join(records).encode())

    def estimate(self, dataset_dict, options):
        size, style = options["size"], options["mask_style"]
        sizes = []
        for dataset in dataset_dict.values():
            sizes += image_size_bounds(dataset, options["image_format"], size)
            if size == NATIVE_SIZE and style == "instance":
                sizes += png_lengths(dataset, "instance_mask")
            else:
                shape = {"color": (3, 1), "semantic": (1, 1), "binary": (1, 1), "instance": (1, 2)}[style]
                sizes += [png_bound(size, size, *shape)] * dataset.num_rows
            sizes.append(METADATA_LINE_BOUND * dataset.num_rows)
        return sizes

    def verify(self, root, dataset_dict, manifest, progress=None):
        options = {key: manifest[key] for key in ("mask_style", "image_format", "size")}
        expected_files = set()
        for split, dataset in dataset_dict.items():
            expected_files.add(metadata_path(split))
            expected_files.update(p for i in dataset["id"] for p in relative_paths(split, i, options["image_format"]))
        actual_files = list_files(root)
        problems = self.file_problems(expected_files, actual_files)
        for split, dataset in dataset_dict.items():
            expected_lines = []
            for row in undecoded(dataset):
                expected_lines.append(metadata_line(split, row, options["image_format"]))
                _, mask_bytes = export_patch(row, options)
                image_path, mask_path = relative_paths(split, row["id"], options["image_format"])
                if image_path in actual_files:
                    problem = compare_image(root, image_path, row, options["image_format"], options["size"])
                    if problem:
                        problems.append(f"{image_path}: {problem}")
                if mask_path in actual_files:
                    problem = compare_png(os.path.join(root, mask_path), mask_bytes)
                    if problem:
                        problems.append(f"{mask_path}: {problem}")
                if progress:
                    progress(1)
            if metadata_path(split) in actual_files:
                problems += metadata_problems(root, split, expected_lines)
        return problems


FORMAT = ImageMask()
