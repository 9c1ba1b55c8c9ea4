"""python -m convert export --format pannuke: every split read back like an official fold."""

import os

import numpy as np
from pannuke_fixtures import part1_members

import pannuke_imagemask as pim


def test_pannuke_arrays_read_back_like_a_fold(export_tree, part1_patches):
    root = export_tree("pannuke")
    for split, members in part1_members().items():
        assert sorted(os.listdir(root / split)) == ["ids.txt", "images.npy", "masks.npy", "types.npy"]
        assert (root / split / "ids.txt").read_text() == "".join(f"fold1_{i:05d}\n" for _, i in members)
        images = np.load(root / split / "images.npy", mmap_mode="r")
        masks = np.load(root / split / "masks.npy", mmap_mode="r")
        types = np.load(root / split / "types.npy")
        assert (images.dtype, images.shape) == (np.float64, (len(members), 256, 256, 3))
        assert (masks.dtype, masks.shape) == (np.float64, (len(members), 256, 256, 6))
        assert types.dtype == np.dtype("<U13")
        assert types.tolist() == [part1_patches[i][4] for _, i in members]
        for row, (_, index) in enumerate(members):
            image, semantic, instance, _, _ = part1_patches[index]
            np.testing.assert_array_equal(images[row], image.astype(np.float64))
            expected = np.zeros((256, 256, 6))
            for c in range(5):
                expected[..., c][semantic == c + 1] = instance[semantic == c + 1]
            expected[..., 5] = instance == 0
            np.testing.assert_array_equal(masks[row], expected)
            # The builder's own conversion reads the row back to the same masks.
            back_semantic, back_instance, _ = pim.ids_to_labels(pim.mask_to_ids(masks[row]))
            np.testing.assert_array_equal(back_semantic, semantic)
            np.testing.assert_array_equal(back_instance, instance)
