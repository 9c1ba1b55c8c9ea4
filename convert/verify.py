"""Verify an exported tree: re-read every file and compare it with the source, as export.json describes it.

PNG files must match pixel for pixel; JPEG images within a mean absolute difference of 4 levels per
channel value. Prints each difference with its file name; exit 0 when all match, 1 otherwise.
"""

import argparse
import io
import json
import logging
import os
import sys
from types import SimpleNamespace

import numpy as np
from PIL import Image
from tqdm import tqdm

from .common import PROG, build_from_args, run_cli, source_of
from .export import (
    METADATA_COLUMNS,
    export_patch,
    metadata_row,
    read_metadata,
    relative_paths,
    resize_image,
    split_dir,
    undecoded,
)

logger = logging.getLogger(__name__)

MANIFEST_KEYS = ("source", "config", "split_seed", "split_ratios", "mask_style", "image_format", "size")
JPEG_TOLERANCE = 4.0  # mean |difference| per channel value; quality-95 4:4:4 JPEG of noisy fake patches: ~3.2


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


def verify_tree(root, dataset_dict, manifest):
    """All differences between the tree at root and the builder's dataset, as 'file: what' lines."""
    options = {key: manifest[key] for key in ("mask_style", "image_format", "size")}
    problems = []
    expected_files = set()
    expected_records = []
    for split, dataset in dataset_dict.items():
        expected_files.update(p for i in dataset["id"] for p in relative_paths(split, i, options["image_format"]))
    actual_files = list_files(root)
    problems += [f"{path}: missing" for path in sorted(expected_files - actual_files)]
    problems += [f"{path}: not in the source's splits" for path in sorted(actual_files - expected_files)]

    total = sum(ds.num_rows for ds in dataset_dict.values())
    with tqdm(total=total, unit="patch", desc="Verifying", disable=None) as bar:
        for split, dataset in dataset_dict.items():
            for row in undecoded(dataset):
                expected_records.append(metadata_row(split, row, options["image_format"]))
                image_bytes, mask_bytes = export_patch(row, options)
                image_path, mask_path = relative_paths(split, row["id"], options["image_format"])
                if image_path in actual_files:
                    if options["image_format"] == "png":
                        problem = compare_png(os.path.join(root, image_path), image_bytes)
                    else:
                        source = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
                        problem = compare_jpeg(
                            os.path.join(root, image_path), np.array(resize_image(source, options["size"]))
                        )
                    if problem:
                        problems.append(f"{image_path}: {problem}")
                if mask_path in actual_files:
                    problem = compare_png(os.path.join(root, mask_path), mask_bytes)
                    if problem:
                        problems.append(f"{mask_path}: {problem}")
                bar.update(1)

    expected_rows = [METADATA_COLUMNS] + [[str(v) for v in r] for r in expected_records]
    try:
        actual_rows = read_metadata(root)
    except OSError as exc:
        problems.append(f"metadata.csv: cannot be read ({exc.strerror})")
    else:
        if actual_rows[:1] != expected_rows[:1]:
            problems.append(f"metadata.csv: columns {actual_rows[:1]}, expected {expected_rows[0]}")
        else:
            actual_set, expected_set = {tuple(r) for r in actual_rows[1:]}, {tuple(r) for r in expected_rows[1:]}
            for row in sorted(expected_set - actual_set):
                problems.append(f"metadata.csv: row missing or changed: {','.join(row)}")
            for row in sorted(actual_set - expected_set):
                problems.append(f"metadata.csv: unexpected row: {','.join(row)}")
    recorded = manifest.get("splits", {})
    actual_splits = {split_dir(s): ds.num_rows for s, ds in dataset_dict.items()}
    if recorded != actual_splits:
        problems.append(f"export.json: splits {recorded}, the source gives {actual_splits}")
    return problems


def _get_parser():
    parser = argparse.ArgumentParser(prog=f"{PROG} verify", description=__doc__)
    parser.add_argument("dir", help="an exported tree (holds export.json)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-dir", help="the PanNuke folds to compare with (default: as recorded in export.json)")
    source.add_argument("--sample", action="store_true", help="compare with the built-in FAKE sample")
    parser.add_argument("--cache-dir", help="datasets cache folder (default: the Hugging Face datasets cache)")
    parser.add_argument("--num-proc", type=int, default=1, help="processes for building the source, if not cached")
    parser.add_argument("--quiet", action="store_true", help="print differences and the summary only")
    return parser


def verify(args):
    manifest_path = os.path.join(args.dir, "export.json")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: not found; is {args.dir} a tree written by export?") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{manifest_path}: not valid JSON ({exc})") from None
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{manifest_path}: missing {', '.join(missing)}; is {args.dir} a tree written by export?")
    source = source_of(args) if args.data_dir or args.sample else manifest["source"]
    options = SimpleNamespace(
        config=manifest["config"],
        split_seed=manifest["split_seed"],
        split_ratios=manifest["split_ratios"],
        num_proc=args.num_proc,
        cache_dir=args.cache_dir,
        **source,
    )
    dataset_dict, _ = build_from_args(options)
    problems = verify_tree(args.dir, dataset_dict, manifest)
    for problem in problems:
        print(problem)
    checked = sum(ds.num_rows for ds in dataset_dict.values())
    if problems:
        print(f"{args.dir}: {len(problems)} difference(s) in {checked} patches", file=sys.stderr)
        return 1
    logger.info("%s: all %d patches and metadata.csv match the source", args.dir, checked)
    return 0


def main(argv=None):
    return run_cli("verify", verify, _get_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
