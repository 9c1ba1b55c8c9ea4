"""Export PanNuke splits as an image/mask folder tree: DIR/{train,valid,test}/{images,masks}/<id>.<ext>.

The splits, ids and masks are exactly the builder's (pannuke_imagemask.py). Masks are always lossless
PNG. The tree is written beside DIR and renamed into place only when complete.
"""

import argparse
import csv
import io
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from datetime import datetime, timezone

import datasets
import numpy as np
from PIL import Image
from tqdm import tqdm

import pannuke_imagemask as pim
from . import __version__
from .common import add_source_arguments, build_from_args, refuse_non_empty, run_cli, staging_dir

logger = logging.getLogger(__name__)

MASK_STYLES = ("color", "semantic", "binary", "instance")
IMAGE_FORMATS = ("png", "jpg")
JPEG_QUALITY = 95
NATIVE_SIZE = 256
TASK_PATCHES = 32  # patches per task handed to a worker: small enough for a smooth progress bar

# Seed project's folder names: validation is "valid"; the folds config keeps fold1..fold3.
SPLIT_DIRS = {"train": "train", "validation": "valid", "test": "test"}

COLORS = pim.CLASS_COLORS  # RGB as it appears on screen, index = semantic class

METADATA_COLUMNS = (
    ["split", "id", "fold", "index", "tissue"]
    + [f"n_{name}" for name in pim.NUCLEUS_CLASSES]
    + ["n_nuclei", "image", "mask"]
)


def split_dir(split):
    return SPLIT_DIRS.get(split, split)


def render_mask(semantic, instance, style):
    """The exported mask array of one patch in a style, from the builder's semantic and instance masks."""
    if style == "color":
        return COLORS[semantic]
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
        return pim.encode_png(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: keep stain colour
    return buffer.getvalue()


def export_patch(row, options):
    """(image bytes, mask bytes) of one builder row (images not decoded), re-encoding only what changes."""
    size, style, image_format = options["size"], options["mask_style"], options["image_format"]
    image_png = row["image"]["bytes"]
    if image_format == "png" and size == NATIVE_SIZE:
        image_bytes = image_png
    else:
        image = Image.open(io.BytesIO(image_png)).convert("RGB")
        image_bytes = encode_image(resize_image(image, size), image_format)
    if size == NATIVE_SIZE and style in ("semantic", "instance"):
        return image_bytes, row[f"{style}_mask"]["bytes"]
    semantic = np.array(Image.open(io.BytesIO(row["semantic_mask"]["bytes"])))
    instance = np.array(Image.open(io.BytesIO(row["instance_mask"]["bytes"]))) if style == "instance" else None
    mask = resize_mask(render_mask(semantic, instance, style), size)
    return image_bytes, pim.encode_semantic_png(mask) if style == "semantic" else pim.encode_png(mask)


def relative_paths(split, patch_id, image_format):
    folder = split_dir(split)
    return (f"{folder}/images/{patch_id}.{image_format}", f"{folder}/masks/{patch_id}.png")


def metadata_row(split, row, image_format):
    counts = np.bincount([n["label"] for n in row["nuclei"]], minlength=len(pim.NUCLEUS_CLASSES))
    image_path, mask_path = relative_paths(split, row["id"], image_format)
    return (
        [split_dir(split), row["id"], row["fold"], row["index"], pim.TISSUES[row["tissue"]]]
        + counts.tolist()
        + [int(counts.sum()), image_path, mask_path]
    )


def undecoded(dataset):
    """The same rows with images as raw PNG bytes, so that unchanged files are copied, not re-encoded."""
    for column in ("image", "semantic_mask", "instance_mask"):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


# Worker state, set once per process by _init_worker (the Dataset pickles as a path to its Arrow files).
_WORKER = {}


def _init_worker(state):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() must end workers quietly
    _WORKER.update(state)


def _export_task(task):
    split, start, stop = task
    dataset, options, root = _WORKER["dataset_dict"][split], _WORKER["options"], _WORKER["root"]
    rows = dataset[start:stop]
    records = []
    for k in range(stop - start):
        row = {name: rows[name][k] for name in rows}
        image_bytes, mask_bytes = export_patch(row, options)
        image_path, mask_path = relative_paths(split, row["id"], options["image_format"])
        with open(os.path.join(root, image_path), "wb") as f:
            f.write(image_bytes)
        with open(os.path.join(root, mask_path), "wb") as f:
            f.write(mask_bytes)
        records.append(metadata_row(split, row, options["image_format"]))
    return records


def _run_tasks(tasks, num_proc, state):
    """Each task's metadata rows, in task order, from this process or a pool of num_proc workers."""
    if num_proc <= 1:
        _WORKER.update(state)
        yield from map(_export_task, tasks)
        return
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    with context.Pool(num_proc, _init_worker, (state,)) as pool:
        yield from pool.imap(_export_task, tasks)


def write_tree(dataset_dict, options, root, num_proc=1):
    """Write every split's files under root; return the metadata rows in split, (fold, index) order."""
    dataset_dict = datasets.DatasetDict({split: undecoded(ds) for split, ds in dataset_dict.items()})
    tasks = []
    for split, dataset in dataset_dict.items():
        for sub in ("images", "masks"):
            os.makedirs(os.path.join(root, split_dir(split), sub), exist_ok=True)
        tasks += [(split, s, min(s + TASK_PATCHES, dataset.num_rows)) for s in range(0, dataset.num_rows, TASK_PATCHES)]
    state = {"dataset_dict": dataset_dict, "options": options, "root": root}
    records = []
    with tqdm(
        total=sum(ds.num_rows for ds in dataset_dict.values()), unit="patch", desc="Exporting", disable=None
    ) as bar:
        for (_, start, stop), chunk in zip(tasks, _run_tasks(tasks, num_proc, state)):
            records.extend(chunk)
            bar.update(stop - start)
    return records


def write_metadata(root, records):
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(records)


def read_metadata(root):
    with open(os.path.join(root, "metadata.csv"), newline="") as f:
        return list(csv.reader(f))


def write_statistics(root, records):
    """statistics.png: patches per tissue and split, nuclei per class and split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(r[0] for r in records))
    tissues = sorted({r[4] for r in records})
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, max(5, 0.35 * len(tissues) + 2)))
    offset = np.zeros(len(tissues))
    for split in splits:
        counts = np.array([sum(1 for r in records if r[0] == split and r[4] == t) for t in tissues])
        left.barh(tissues, counts, left=offset, label=f"{split_dir(split)} ({counts.sum()})")
        offset += counts
    for y, value in enumerate(offset):
        left.text(value, y, f" {int(value)}", va="center", fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("patches")
    left.set_title("Patches per tissue and split")
    left.legend(loc="lower right")

    width = 0.8 / max(1, len(splits))
    x = np.arange(len(pim.NUCLEUS_CLASSES))
    for k, split in enumerate(splits):
        counts = [sum(int(r[5 + c]) for r in records if r[0] == split) for c in range(len(pim.NUCLEUS_CLASSES))]
        bars = right.bar(x + (k - (len(splits) - 1) / 2) * width, counts, width, label=split_dir(split))
        right.bar_label(bars, fontsize=7)
    right.set_xticks(x, pim.NUCLEUS_CLASSES)
    right.set_ylabel("nuclei")
    right.set_title("Nuclei per class and split")
    right.legend()
    figure.suptitle(f"PanNuke export: {len(records)} patches")
    figure.tight_layout()
    figure.savefig(os.path.join(root, "statistics.png"), dpi=100)
    plt.close(figure)


def write_samples(root, dataset_dict, count=4):
    """samples.png: a few patches of the first split with their colour masks and an overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = next(iter(dataset_dict))
    dataset = dataset_dict[split]
    rows = sorted({int(i) for i in np.linspace(0, dataset.num_rows - 1, min(count, dataset.num_rows))})
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for line, position in zip(axes, rows):
        example = dataset[position]
        image = np.array(example["image"])
        colour = COLORS[np.array(example["semantic_mask"])]
        nuclei = colour.any(axis=-1, keepdims=True)
        overlay = np.where(nuclei, (0.55 * image + 0.45 * colour).astype(np.uint8), image)
        for axis, picture, title in zip(line, (image, colour, overlay), ("image", "colour mask", "overlay")):
            axis.imshow(picture)
            axis.set_title(f"{example['id']} {title}", fontsize=9)
            axis.axis("off")
    legend = ", ".join(f"{name} {tuple(COLORS[k + 1].tolist())}" for k, name in enumerate(pim.NUCLEUS_CLASSES))
    figure.suptitle(f"{split_dir(split)} samples; {legend}", fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(root, "samples.png"), dpi=80)
    plt.close(figure)


def replace_tree(tmp, out):
    """Move the complete tree at tmp to out; the old tree at out is removed only after that."""
    old = None
    if os.path.lexists(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".old", dir=os.path.dirname(out))
        os.rename(out, os.path.join(old, "tree"))
    os.rename(tmp, out)
    if old:
        shutil.rmtree(old)


def _get_parser():
    parser = argparse.ArgumentParser(
        prog="pannuke-imagemask export",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="the folder to write (refused if non-empty, unless --force)")
    add_source_arguments(parser)
    parser.add_argument("--mask-style", choices=MASK_STYLES, default="color", help="how masks encode labels")
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="png", help="image files (masks are PNG)")
    parser.add_argument("--size", type=int, default=NATIVE_SIZE, help="side of the square output in pixels")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out once the new tree is complete")
    return parser


def export(args):
    if args.size < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {args.size}")
    out = os.path.abspath(args.out)
    refuse_non_empty(out, args.force, "replace")
    dataset_dict, source = build_from_args(args)
    options = {"mask_style": args.mask_style, "image_format": args.image_format, "size": args.size}
    with staging_dir(out) as tmp:
        records = write_tree(dataset_dict, options, tmp, num_proc=args.num_proc)
        write_metadata(tmp, records)
        manifest = {
            "tool": "pannuke-imagemask",
            "version": __version__,
            "builder_version": str(pim.PanNukeImageMask.VERSION),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "config": args.config,
            "split_seed": args.split_seed,
            "split_ratios": list(args.split_ratios),
            **options,
            "jpeg_quality": JPEG_QUALITY if args.image_format == "jpg" else None,
            "num_proc": args.num_proc,
            "splits": {split_dir(s): ds.num_rows for s, ds in dataset_dict.items()},
        }
        with open(os.path.join(tmp, "export.json"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        write_statistics(tmp, records)
        write_samples(tmp, dataset_dict)
        refuse_non_empty(out, args.force, "replace")  # someone may have written there while we worked
        replace_tree(tmp, out)
    logger.info("wrote %d patches to %s", len(records), out)
    return 0


def main(argv=None):
    return run_cli("export", export, _get_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
