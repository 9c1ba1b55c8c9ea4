"""imagemask: DIR/{split}/{images,masks}/<id>.<ext> plus metadata.csv (the tree of 1.0, unchanged)."""

import csv
import io
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
    """(image bytes, mask bytes) of one builder row (images not decoded), re-encoding only what changes."""
    size, style = options["size"], options["mask_style"]
    image_bytes = image_file(row, options["image_format"], size)
    if size == NATIVE_SIZE and style in ("semantic", "instance"):
        return image_bytes, row[f"{style}_mask"]["bytes"]
    semantic = np.array(Image.open(io.BytesIO(row["semantic_mask"]["bytes"])))
    instance = np.array(Image.open(io.BytesIO(row["instance_mask"]["bytes"]))) if style == "instance" else None
    mask = resize_mask(render_mask(semantic, instance, style), size)
    return image_bytes, pim.encode_semantic_png(mask) if style == "semantic" else pim.encode_png(mask)


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


def metadata_row(split, row, image_format):
    return summary_row(ImageMask, split, row) + list(relative_paths(split, row["id"], image_format))


def read_metadata(root):
    with open(os.path.join(root, "metadata.csv"), newline="") as f:
        return list(csv.reader(f))


class ImageMask(Format):
    name = "imagemask"
    takes = ("size", "mask_style", "image_format")

    def prepare(self, root, dataset_dict, options):
        for split in dataset_dict:
            for sub in ("images", "masks"):
                os.makedirs(os.path.join(root, self.split_dir(split), sub), exist_ok=True)

    def write_patch(self, root, split, position, row, options):
        image_bytes, mask_bytes = export_patch(row, options)
        image_path, mask_path = relative_paths(split, row["id"], options["image_format"])
        write_bytes(os.path.join(root, image_path), image_bytes)
        write_bytes(os.path.join(root, mask_path), mask_bytes)
        return metadata_row(split, row, options["image_format"])

    def finish(self, root, dataset_dict, options, out, records):
        with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(METADATA_COLUMNS)
            writer.writerows(r for split in records for r in records[split])

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

    def verify(self, root, dataset_dict, manifest, progress=None):
        options = {key: manifest[key] for key in ("mask_style", "image_format", "size")}
        expected_files = set()
        for split, dataset in dataset_dict.items():
            expected_files.update(p for i in dataset["id"] for p in relative_paths(split, i, options["image_format"]))
        actual_files = list_files(root)
        problems = self.file_problems(expected_files, actual_files)
        expected_records = []
        for split, dataset in dataset_dict.items():
            for row in undecoded(dataset):
                expected_records.append(metadata_row(split, row, options["image_format"]))
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
        return problems + self._metadata_problems(root, expected_records)

    def _metadata_problems(self, root, expected_records):
        problems = []
        expected_rows = [METADATA_COLUMNS] + [[str(v) for v in r] for r in expected_records]
        try:
            actual_rows = read_metadata(root)
        except OSError as exc:
            return [f"metadata.csv: cannot be read ({exc.strerror})"]
        if actual_rows[:1] != expected_rows[:1]:
            return [f"metadata.csv: columns {actual_rows[:1]}, expected {expected_rows[0]}"]
        actual_set, expected_set = {tuple(r) for r in actual_rows[1:]}, {tuple(r) for r in expected_rows[1:]}
        for row in sorted(expected_set - actual_set):
            problems.append(f"metadata.csv: row missing or changed: {','.join(row)}")
        for row in sorted(actual_set - expected_set):
            problems.append(f"metadata.csv: unexpected row: {','.join(row)}")
        return problems


FORMAT = ImageMask()
