"""python -m convert export --format hovernet: every array against the independent reference."""

import json
import os

import numpy as np
from pannuke_fixtures import part1_members

CLASS_NAMES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
# Colours of the colour masks, written out here: background black, then the classes.
COLOURS = [[0, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 0], [0, 255, 255], [255, 255, 0]]


def test_hovernet_arrays_and_type_info(export_tree, part1_patches):
    root = export_tree("hovernet")
    for split, members in part1_members().items():
        assert sorted(os.listdir(root / split)) == [f"fold1_{i:05d}.npy" for _, i in members]
        for _, index in members:
            image, semantic, instance, _, _ = part1_patches[index]
            array = np.load(root / split / f"fold1_{index:05d}.npy", allow_pickle=False)
            assert array.dtype == np.int32 and array.shape == (256, 256, 5)
            np.testing.assert_array_equal(array[..., :3], image)
            np.testing.assert_array_equal(array[..., 3], instance)
            np.testing.assert_array_equal(array[..., 4], semantic)
    assert json.loads((root / "type_info.json").read_text()) == {
        str(k): [name, COLOURS[k]] for k, name in enumerate(["background", *CLASS_NAMES])
    }
