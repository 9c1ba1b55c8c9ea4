"""Run in the main environment: write a fake fold and what build() makes of it, for the datasets 3 tests.

Also the imagemask trees that test_datasets3_imagefolder.py loads with imagefolder: every mask style,
JPEG images, --size 128, and --config folds of three fake folds (DIR/data3).

python legacy_tests/make_expected.py DIR
"""

import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pannuke_imagemask as pim
from convert.__main__ import main as cli
from convert.infos import legacy_features
from convert.sample import write_fold

PATCHES = 24
FOLD_PATCHES = {1: 24, 2: 22, 3: 23}  # the folds config: every fold of a size of its own
IMAGEMASK_TREES = {
    "color": ["--mask-style", "color"],
    "semantic": ["--mask-style", "semantic"],
    "binary": ["--mask-style", "binary"],
    "instance": ["--mask-style", "instance"],
    "jpg": ["--mask-style", "semantic", "--image-format", "jpg"],
    "size": ["--mask-style", "instance", "--size", "128"],
}


def pixels_digest(image):
    """Mode, palette (of the semantic mask) and pixel values."""
    palette = bytes(image.palette.getdata()[1]) if image.mode == "P" else b""
    return hashlib.sha256(image.mode.encode() + palette + np.array(image).tobytes()).hexdigest()


def main(out):
    data_dir = os.path.join(out, "data")
    write_fold(data_dir, 1, PATCHES, "kaggle")
    built = pim.build("part1", data_dir=data_dir, cache_dir=os.path.join(out, "cache"))
    expected = {
        "datasets_version": __import__("datasets").__version__,
        "features": legacy_features(built["train"].features.to_dict()),
        "splits": {
            split: [
                {
                    "id": row["id"],
                    "nuclei": row["nuclei"],
                    "tissue": row["tissue"],
                    "pixels": [pixels_digest(row[c]) for c in ("image", "semantic_mask", "instance_mask")],
                }
                for row in ds
            ]
            for split, ds in built.items()
        },
    }
    # The Hub repository as `push` writes it, for datasets 3 users who load the Parquet copy.
    argv = ["push", "--repo-id", "lab/pannuke", "--data-dir", data_dir, "--local-dir", os.path.join(out, "repo")]
    if cli([*argv, "--cache-dir", os.path.join(out, "cache"), "--quiet"]) != 0:
        raise SystemExit("push --local-dir failed")
    cache = os.path.join(out, "cache")
    for name, extra in IMAGEMASK_TREES.items():
        argv = ["export", "--data-dir", data_dir, "--out", os.path.join(out, "imagemask", name), *extra]
        if cli([*argv, "--cache-dir", cache, "--quiet"]) != 0:
            raise SystemExit(f"export of the imagemask tree {name} failed")
    for fold, patches in FOLD_PATCHES.items():
        write_fold(os.path.join(out, "data3"), fold, patches, "kaggle")
    argv = ["export", "--data-dir", os.path.join(out, "data3"), "--out", os.path.join(out, "imagemask", "folds")]
    if cli([*argv, "--config", "folds", "--mask-style", "semantic", "--cache-dir", cache, "--quiet"]) != 0:
        raise SystemExit("export of the imagemask folds tree failed")
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
