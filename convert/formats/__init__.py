"""Export formats: one module per format behind one small interface.

`export` owns the command: refusal, the free-space check, staging, the worker pool, progress, export.json
and the pictures. A format only says where each patch's files go and what they hold:

- `prepare(root, dataset_dict, options)` makes its folders (and any file shared by the whole split);
- `write_patch(root, split, position, row, options)` runs in a worker, writes one patch, returns a record;
- `finish_split(root, split, records, dataset, options)` writes what needs the whole split (JSON, id lists);
- `finish(root, dataset_dict, options, out, records)` writes top-level files (out: the final folder;
  records: {split: records});
- `estimate(dataset_dict, options)` lists the sizes of the files it will write, before writing;
- `verify(root, dataset_dict, manifest, progress)` re-derives every file, returns "file: what" problems;
- `consumer_files`: glob patterns (relative to the tree) of the files a framework that reads the tree
  leaves in it (Ultralytics' label caches, cellpose's flows): verify does not count them as foreign.
"""

import fnmatch
import importlib
import io
import os
from typing import ClassVar

import datasets
import numpy as np
import pyarrow.compute as pc
from PIL import Image

NATIVE_SIZE = 256
PNG_OVERHEAD = 4096  # signature, IHDR, palette, IEND and zlib framing: far less than this


class Format:
    """The interface every format implements; the defaults suit a format with no whole-split files."""

    name = ""
    takes = ()  # which of the options size, mask_style, image_format it accepts
    consumer_files: ClassVar[tuple] = ()  # fnmatch patterns of files a consumer may leave in the tree
    changed_in = None  # the tool version whose files of this format differ from those of earlier versions
    split_dirs: ClassVar[dict] = {"train": "train", "validation": "valid", "test": "test"}  # fold1..3 unchanged

    @classmethod
    def split_dir(cls, split):
        return cls.split_dirs.get(split, split)

    def file_problems(self, expected, actual):
        """file_set_problems of this format's tree: the files its consumers leave there are not foreign."""
        return file_set_problems(expected, actual, self.consumer_files)

    def prepare(self, root, dataset_dict, options):
        pass

    def write_patch(self, root, split, position, row, options):
        raise NotImplementedError

    def finish_split(self, root, split, records, dataset, options):
        pass

    def finish(self, root, dataset_dict, options, out, records):
        pass

    def estimate(self, dataset_dict, options):
        raise NotImplementedError

    def verify(self, root, dataset_dict, manifest, progress=None):
        raise NotImplementedError


def write_bytes(path, *chunks):
    """The one way formats write a file (a single place to fail, e.g. with ENOSPC); chunks are bytes-like."""
    with open(path, "wb") as f:
        f.writelines(chunks)


def undecoded(dataset):
    """The same rows with images as raw PNG bytes, so that unchanged files are copied, not re-encoded."""
    for column in ("image", "semantic_mask", "instance_mask"):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def decode(png_bytes):
    return np.array(Image.open(io.BytesIO(png_bytes)))


def png_lengths(dataset, column):
    """Byte lengths of a column's stored PNGs, read from Arrow without decoding anything."""
    table = dataset.with_format("arrow")[:] if dataset._indices is not None else dataset.data.table
    return pc.binary_length(pc.struct_field(table.column(column), "bytes")).to_numpy().tolist()


def png_bound(height, width, channels=1, sample_bytes=1):
    """An upper bound of any PNG of that shape: zlib at worst stores the raw rows (one filter byte each)."""
    raw = height * (width * channels * sample_bytes + 1)
    return raw + raw // 1000 + PNG_OVERHEAD


def jpeg_bound(height, width):
    """An upper bound of a quality-95 4:4:4 JPEG: never above the raw RGB bytes plus headers."""
    return height * width * 3 + PNG_OVERHEAD


def npy_bytes(shape, dtype):
    """Size of a .npy file: a 128-byte header (format 1.0, padded to 64) and the raw array."""
    return 128 + int(np.prod(shape)) * np.dtype(dtype).itemsize


# Verification helpers shared by the formats.


def _pixels(data):
    image = Image.open(io.BytesIO(data))
    return image.mode, np.array(image)


def compare_png(actual_path, expected_bytes):
    """None if the file's pixels equal those of expected_bytes, else what differs."""
    with open(actual_path, "rb") as f:
        actual = f.read()
    if actual == expected_bytes:
        return None
    try:
        mode, pixels = _pixels(actual)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's decoding errors: a difference, not a crash
        return f"cannot be read as an image ({exc})"
    expected_mode, expected = _pixels(expected_bytes)
    if mode != expected_mode or pixels.shape != expected.shape:
        return f"is {mode} {pixels.shape}, expected {expected_mode} {expected.shape}"
    wrong = int(np.any(pixels != expected, axis=-1).sum() if pixels.ndim == 3 else (pixels != expected).sum())
    return None if wrong == 0 else f"{wrong} of {pixels.shape[0] * pixels.shape[1]} pixels differ"


def png_tree_problems(fmt, root, dataset_dict, contents, progress=None):
    """verify of a format whose files are all PNGs of single patches: missing and foreign files, then pixels.

    fmt.paths(split, id) names a patch's files; contents(row) gives their expected PNG bytes in that order
    (row undecoded), one patch at a time.
    """
    expected = {p for split, ds in dataset_dict.items() for i in ds["id"] for p in fmt.paths(split, i)}
    actual = list_files(root)
    problems = fmt.file_problems(expected, actual)
    for split, dataset in dataset_dict.items():
        for row in undecoded(dataset):
            for path, wanted in zip(fmt.paths(split, row["id"]), contents(row)):
                problem = compare_png(os.path.join(root, path), wanted) if path in actual else None
                if problem:
                    problems.append(f"{path}: {problem}")
            if progress:
                progress(1)
    return problems


JPEG_TOLERANCE = 4.0  # mean |difference| per channel value; quality-95 4:4:4 JPEG of noisy fake patches: ~3.2


def compare_jpeg(actual_path, expected_rgb):
    try:
        with Image.open(actual_path) as image:
            pixels = np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        return f"cannot be read as an image ({exc})"
    if pixels.shape != expected_rgb.shape:
        return f"is {pixels.shape}, expected {expected_rgb.shape}"
    error = float(np.abs(pixels.astype(np.int16) - expected_rgb).mean())
    return None if error <= JPEG_TOLERANCE else f"mean difference {error:.2f} exceeds JPEG tolerance {JPEG_TOLERANCE}"


def list_files(root):
    """Every file under root except the top-level reports, as relative paths."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = os.path.relpath(os.path.join(dirpath, name), root)
            if os.sep not in path:
                continue
            found.add(path.replace(os.sep, "/"))
    return found


def _matches(path, pattern):
    """fnmatch per path component: `labels/*.cache` is labels/train.cache, not labels/train/x.cache."""
    parts, wanted = path.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, wanted))


def file_set_problems(expected, actual, ignore=()):
    """'missing' and 'not in the source's splits' lines for two sets of relative paths.

    ignore: fnmatch patterns of files a consumer of the format leaves in the tree; not foreign.
    """
    foreign = [path for path in sorted(actual - expected) if not any(_matches(path, p) for p in ignore)]
    return [f"{path}: missing" for path in sorted(expected - actual)] + [
        f"{path}: not in the source's splits" for path in foreign
    ]


# The folds config: the official protocol's three (train, val, test) arrangements of the folds.
FOLD_PROTOCOL = {1: ("fold1", "fold2", "fold3"), 2: ("fold2", "fold1", "fold3"), 3: ("fold3", "fold2", "fold1")}

FORMAT_NAMES = ("imagemask", "coco", "yolo", "hovernet", "pannuke", "cellvit", "nnunet", "cellpose")  # one module each


def get_format(name):
    """The format object of a name (its module is imported only when asked for)."""
    if name not in FORMAT_NAMES:
        raise ValueError(f"unknown format {name!r}; valid: {', '.join(FORMAT_NAMES)}")
    return importlib.import_module(f".{name}", __package__).FORMAT


def summary_row(fmt, split, row):
    """[split folder, id, fold, index, tissue, nuclei per class..., nuclei]: what the statistics need."""
    import pannuke_imagemask as pim

    from ..common import nuclei_per_class

    counts = nuclei_per_class([n["label"] for n in row["nuclei"]])
    return (
        [fmt.split_dir(split), row["id"], row["fold"], row["index"], pim.TISSUES[row["tissue"]]]
        + counts
        + [sum(counts)]
    )
