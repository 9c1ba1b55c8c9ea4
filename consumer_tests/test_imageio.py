"""imageio reads every mask style of `export --format imagemask` as the reference (v3 and v2 APIs).

imageio (pulled in by scikit-image, itself a dependency of cellpose and nnU-Net) expands a palette PNG
to its RGB colours: the reason the semantic style is a plain greyscale PNG since 1.3.0.
"""

import os

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest
from pannuke_fixtures import PART1_PATCHES, raw_fold
from reference import reference_mask  # tests/ is on pytest's pythonpath

from convert.__main__ import main

DTYPES = {"color": np.uint8, "semantic": np.uint8, "binary": np.uint8, "instance": np.uint16}


@pytest.mark.parametrize("style", sorted(DTYPES))
def test_imageio_reads_every_mask_style_as_the_reference(style, kaggle_part1, cache, tmp_path):
    out = tmp_path / style
    argv = ["export", "--out", str(out), "--data-dir", kaggle_part1, "--cache-dir", cache, "--quiet"]
    assert main([*argv, "--mask-style", style]) == 0
    _, masks, _ = raw_fold(kaggle_part1)
    read = 0
    for folder in ("train", "valid", "test"):
        for name in sorted(os.listdir(out / folder / "masks")):
            expected = reference_mask(style, np.asarray(masks[int(name[6:11])]))
            for array in (iio.imread(out / folder / "masks" / name), imageio_v2.imread(out / folder / "masks" / name)):
                assert array.dtype == DTYPES[style] and array.shape == expected.shape
                np.testing.assert_array_equal(array, expected)
            read += 1
    assert read == PART1_PATCHES
