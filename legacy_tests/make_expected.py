"""Run in the main environment: write a fake fold and what build() makes of it, for the datasets 3 test.

python legacy_tests/make_expected.py DIR
"""

import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pannuke_imagemask as pim
from convert.infos import legacy_features
from convert.sample import write_fold

PATCHES = 24


def pixels_digest(image):
    return hashlib.sha256(image.mode.encode() + np.array(image).tobytes()).hexdigest()


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
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
