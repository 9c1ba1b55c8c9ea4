"""Export PanNuke splits in the format a framework trains on; default: an image/mask folder tree.

Formats (--format): imagemask DIR/{train,valid,test}/{images,masks}/<id>.<ext>; coco (RLE JSON per split);
yolo (Ultralytics segmentation); hovernet (N x 256 x 256 x 5 arrays); pannuke (the official fold arrays);
cellvit (CellViT's fold{k}/images, labels, CSVs and YAMLs); nnunet (an nnU-Net v2 raw dataset:
--out $nnUNet_raw/Dataset500_PanNuke); cellpose (<id>.png beside its 16-bit instance map <id>_masks.png).
The splits, ids and masks are exactly the builder's (pannuke_imagemask.py). The tree is written beside
DIR and renamed into place only when complete.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone

import datasets

import pannuke_imagemask as pim

from . import __version__
from .common import (
    add_source_arguments,
    build_from_args,
    check_free_space,
    command_parser,
    disk_bytes,
    progress_bar,
    refuse_non_empty,
    run_cli,
    staging_dir,
)
from .formats import FORMAT_NAMES, get_format, summary_row, undecoded
from .formats.imagemask import IMAGE_FORMATS, MASK_STYLES
from .images import JPEG_QUALITY
from .pictures import write_samples, write_statistics
from .pool import WORKER, run_tasks

logger = logging.getLogger(__name__)

TASK_PATCHES = 32  # patches per task handed to a worker: small enough for a smooth progress bar

# The options only some formats take, their defaults, and how the command line spells them.
FORMAT_OPTIONS = {"size": (pim.PATCH_SIZE, "--size"), "mask_style": ("color", "--mask-style"),
                  "image_format": ("png", "--image-format")}  # fmt: skip


def _export_task(task):
    """(summary row, format record) of each patch of one task, in order; its files written."""
    split, start, stop = task
    fmt, options, root = get_format(WORKER["format"]), WORKER["options"], WORKER["root"]
    rows = WORKER["dataset_dict"][split][start:stop]
    results = []
    for k in range(stop - start):
        row = {name: rows[name][k] for name in rows}
        for file in fmt.patch_files(split, start + k, row, options):
            file.write(root)
        results.append((summary_row(fmt, split, row), fmt.record(split, start + k, row, options)))
    return results


def write_tree(dataset_dict, options, root, num_proc=1, format_name="imagemask", quiet=False):
    """Write every split in a format under root; return the summary rows in split, (fold, index) order.

    options: what export.json records of the format's options (None where the format takes none)."""
    fmt = get_format(format_name)
    dataset_dict = datasets.DatasetDict({split: undecoded(ds) for split, ds in dataset_dict.items()})
    options = {**options, "rows": {split: ds.num_rows for split, ds in dataset_dict.items()}}
    for split, dataset in dataset_dict.items():
        if dataset.num_rows:  # a file that several patches fill is made before any of them is written
            for file in fmt.patch_files(split, 0, dataset[0], options):
                file.prepare(root)
    tasks = []
    for split, dataset in dataset_dict.items():
        tasks += [(split, s, min(s + TASK_PATCHES, dataset.num_rows)) for s in range(0, dataset.num_rows, TASK_PATCHES)]
    state = {"dataset_dict": dataset_dict, "options": options, "root": root, "format": format_name}
    summaries, records = [], {split: [] for split in dataset_dict}
    with progress_bar(sum(ds.num_rows for ds in dataset_dict.values()), "Exporting", quiet) as bar:
        for (split, start, stop), chunk in zip(tasks, run_tasks(_export_task, tasks, num_proc, state)):
            summaries += [summary for summary, _ in chunk]
            records[split] += [record for _, record in chunk]
            bar.update(stop - start)
    for file in fmt.tree_files(dataset_dict, records, options):
        file.write(root)
    return summaries


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
    parser = command_parser("export", __doc__)
    parser.add_argument("--out", required=True, help="the folder to write (refused if non-empty, unless --force)")
    parser.add_argument("--format", choices=FORMAT_NAMES, default="imagemask", help="what to write")
    add_source_arguments(parser)
    # SUPPRESS: absent unless given, so that a format that does not take the option can say so.
    parser.add_argument(
        "--mask-style",
        choices=MASK_STYLES,
        default=argparse.SUPPRESS,
        help="how masks encode labels (default: color)",
    )
    parser.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        default=argparse.SUPPRESS,
        help="image files (masks are PNG) (default: png)",
    )
    parser.add_argument(
        "--size", type=int, default=argparse.SUPPRESS, help="side of the square output in pixels (default: 256)"
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out once the new tree is complete")
    return parser


def parse_args(argv=None):
    """Parsed options, with --size/--mask-style/--image-format refused (exit 2) for formats that do not take them."""
    parser = _get_parser()
    args = parser.parse_args(argv)
    fmt = get_format(args.format)
    for key, (default, flag) in FORMAT_OPTIONS.items():
        if hasattr(args, key) and key not in fmt.takes:
            takers = [name for name in FORMAT_NAMES if key in get_format(name).takes]
            parser.error(f"{flag} applies to --format {', '.join(takers)} only, not {args.format}")
        if not hasattr(args, key):
            setattr(args, key, default)
    return args


def export(args):
    if args.size < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {args.size}")
    out = os.path.abspath(args.out)
    refuse_non_empty(out, args.force, "replace")
    dataset_dict, source = build_from_args(args)
    fmt = get_format(args.format)
    # What the format writes, as export.json records it: None for an option the format does not take.
    options = {key: getattr(args, key) if key in fmt.takes else None for key in ("mask_style", "image_format", "size")}
    options["size"] = options["size"] or pim.PATCH_SIZE
    check_free_space(out, disk_bytes(fmt.estimate(dataset_dict, options)))
    with staging_dir(out) as tmp:
        records = write_tree(
            dataset_dict, options, tmp, num_proc=args.num_proc, format_name=args.format, quiet=args.quiet
        )
        manifest = {
            "tool": "pannuke-imagemask",
            "version": __version__,
            "builder_version": str(pim.PanNukeImageMask.VERSION),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format": args.format,
            "source": source,
            "config": args.config,
            "split_seed": args.split_seed,
            "split_ratios": list(args.split_ratios),
            **options,
            "jpeg_quality": JPEG_QUALITY if options["image_format"] == "jpg" else None,
            "num_proc": args.num_proc,
            "splits": {fmt.split_dir(s): ds.num_rows for s, ds in dataset_dict.items()},
        }
        with open(os.path.join(tmp, "export.json"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        write_statistics(tmp, records)
        write_samples(tmp, dataset_dict)
        refuse_non_empty(out, args.force, "replace")  # someone may have written there while we worked
        replace_tree(tmp, out)
    for advice in fmt.advice(out):
        logger.warning(advice)
    logger.info("wrote %d patches to %s as %s", len(records), out, args.format)
    return 0


def main(argv=None):
    return run_cli("export", export, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
