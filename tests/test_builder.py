"""The builder: features, splits, pixels, configs, num_proc, streaming, bad input, download."""

import functools
import hashlib
import http.server
import io
import os
import re
import shutil
import threading
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pytest
from pannuke_fixtures import PART1_PATCHES, THREE_FOLD_PATCHES, raw_fold, real_types
from PIL import Image
from reference import PALETTE, palette_of, reference_image, reference_labels, reference_split

import pannuke_imagemask as pim
from convert.sample import EMPTY_ROW, VOID_ROW, fake_tissues, fold_paths, write_fold

TISSUE_NAMES = [
    "Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus", "HeadNeck",
    "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin", "Stomach", "Testis",
    "Thyroid", "Uterus",
]  # fmt: skip


def test_features_are_the_spec():
    builder = pim.PanNukeImageMask()
    assert builder.info.features == datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "semantic_mask": datasets.Image(),
            "instance_mask": datasets.Image(),
            "nuclei": [
                {
                    "id": datasets.Value("int32"),
                    "label": datasets.ClassLabel(
                        names=["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
                    ),
                    "area": datasets.Value("int32"),
                    "bbox": datasets.Sequence(datasets.Value("int32"), length=4),
                }
            ],
            "tissue": datasets.ClassLabel(names=TISSUE_NAMES),
            "fold": datasets.Value("int8"),
            "index": datasets.Value("int32"),
        }
    )
    assert builder.config.name == "part1"
    assert str(builder.VERSION) == "1.1.0"
    assert builder.info.license == "CC BY-NC-SA 4.0"


# --- the split, on the real tissue lists -----------------------------------------------------


def test_split_of_real_fold1_is_2125_398_133():
    tissues = real_types(1)
    splits = pim.assign_splits({1: tissues})
    assert {name: len(items) for name, items in splits.items()} == {"train": 2125, "validation": 398, "test": 133}
    assert {name: set(items) for name, items in splits.items()} == reference_split({1: tissues}, 0, (0.8, 0.15, 0.05))
    for items in splits.values():
        assert items == sorted(items)


@pytest.mark.parametrize(
    "seed, ratios",
    [(0, (0.8, 0.15, 0.05)), (7, (0.8, 0.15, 0.05)), (3, (0.7, 0.2, 0.1)), (11, (1, 0, 0)), (5, (0.34, 0.33, 0.33))],
)
def test_split_of_real_folds_equals_reference(seed, ratios):
    tissues = {1: real_types(1), 3: real_types(3)}
    for subset in ({1: tissues[1]}, {3: tissues[3]}, tissues):
        splits = pim.assign_splits(subset, seed, ratios)
        assert {name: set(items) for name, items in splits.items()} == reference_split(subset, seed, ratios)
        everything = [item for items in splits.values() for item in items]
        assert len(everything) == len(set(everything)) == sum(len(t) for t in subset.values())


def test_split_members_is_the_one_rule_for_every_config():
    configs = {c.name: c for c in pim.PanNukeImageMask.BUILDER_CONFIGS}
    tissues = {1: real_types(1), 2: real_types(2), 3: real_types(3)}
    assert pim.split_members(configs["part1"], tissues, 7, (0.7, 0.2, 0.1)) == pim.assign_splits(
        {1: tissues[1]}, 7, (0.7, 0.2, 0.1)
    )
    assert pim.split_members(configs["all"], tissues) == pim.assign_splits(tissues)
    folds = pim.split_members(configs["folds"], tissues, 7, (1, 0, 0))  # seed and ratios do not apply
    assert {name: len(items) for name, items in folds.items()} == {"fold1": 2656, "fold2": 2523, "fold3": 2722}
    assert folds["fold2"] == [(2, index) for index in range(2523)]
    # With the folds as splits, one fold's tissues are enough for its split.
    assert pim.split_members(configs["folds"], {3: tissues[3]}) == {"fold3": folds["fold3"]}
    assert pim.split_names(configs["folds"]) == ["fold1", "fold2", "fold3"]
    assert pim.split_names(configs["all"]) == ["train", "validation", "test"]
    assert pim.split_folds(configs["folds"], "fold2") == (2,)
    assert pim.split_folds(configs["all"], "test") == (1, 2, 3)


def test_split_seed_changes_membership_but_not_sizes():
    tissues = {1: real_types(1)}
    a, b = pim.assign_splits(tissues, 0), pim.assign_splits(tissues, 7)
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}
    assert set(a["test"]) != set(b["test"])


def test_split_keeps_each_tissue_in_proportion_on_real_fold3():
    tissues = real_types(3)
    splits = pim.assign_splits({3: tissues})
    uterus = [i for i, t in enumerate(tissues) if t == "Uterus"]  # 163 patches
    counts = {name: sum(1 for _, i in items if tissues[i] == "Uterus") for name, items in splits.items()}
    assert len(uterus) == 163
    # 130.4, 24.45, 8.15 -> floors 130, 24, 8; one left over goes to the largest fraction (validation .45)
    assert counts == {"train": 130, "validation": 25, "test": 8}


@pytest.mark.parametrize(
    "n, ratios, sizes",
    [
        (20, (0.8, 0.15, 0.05), (16, 3, 1)),
        (4, (0.8, 0.15, 0.05), (3, 1, 0)),
        (1, (0.8, 0.15, 0.05), (1, 0, 0)),
        (0, (0.8, 0.15, 0.05), (0, 0, 0)),
        (2, (0.5, 0.25, 0.25), (1, 1, 0)),  # tie between validation and test: validation first
        (3, (0.5, 0.25, 0.25), (1, 1, 1)),
        (1, (0.0, 0.5, 0.5), (0, 1, 0)),
        (100, (0.29, 0.71, 0), (29, 71, 0)),  # 100 * 0.29 is 28.999... in floating point
        (827, (0.8, 0.15, 0.05), (662, 124, 41)),
    ],
)
def test_split_sizes_by_largest_remainder(n, ratios, sizes):
    assert pim.split_sizes(n, ratios) == sizes


@pytest.mark.parametrize("ratios", [(0.8, 0.2), (0.5, 0.6, -0.1), (0.5, 0.4, 0.2), ("a", 0, 1), 3])
def test_bad_split_ratios_are_refused(ratios, kaggle_part1):
    message = f"split_ratios must be three non-negative numbers (train, validation, test) summing to 1, got {ratios!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        pim.PanNukeImageMask(config_name="part1", data_dir=kaggle_part1, split_ratios=ratios)


def test_unknown_config_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"BuilderConfig 'part9' not found\. Available: \['part1', 'all', 'folds'\]"):
        pim.PanNukeImageMask(config_name="part9")


# --- building from fake folds ------------------------------------------------------------------


def _members(dataset_dict):
    return {name: list(zip(ds["fold"], ds["index"])) for name, ds in dataset_dict.items()}


def _assert_examples_equal_reference(ds, raw):
    images, masks, tissues = raw
    for example in ds:
        index = example["index"]
        assert example["id"] == f"fold{example['fold']}_{index:05d}"
        assert example["tissue"] == TISSUE_NAMES.index(tissues[index])
        image = np.array(example["image"])
        assert example["image"].mode == "RGB" and image.dtype == np.uint8
        np.testing.assert_array_equal(image, reference_image(images[index]))
        semantic, instance, nuclei = reference_labels(np.asarray(masks[index]))
        assert example["semantic_mask"].mode == "P"
        assert palette_of(example["semantic_mask"]) == PALETTE
        np.testing.assert_array_equal(np.array(example["semantic_mask"]), semantic)
        assert example["instance_mask"].mode == "I;16"
        got = np.array(example["instance_mask"])
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, instance)
        assert example["nuclei"] == nuclei


def test_part1_splits_and_pixels_equal_reference(kaggle_part1, tmp_path):
    dd = pim.build("part1", data_dir=kaggle_part1, cache_dir=str(tmp_path / "cache"))
    tissues = fake_tissues(PART1_PATCHES, 1)
    expected = reference_split({1: tissues}, 0, (0.8, 0.15, 0.05))
    members = _members(dd)
    assert {name: set(items) for name, items in members.items()} == expected
    assert {name: len(items) for name, items in members.items()} == {"train": 19, "validation": 4, "test": 1}
    for items in members.values():
        assert items == sorted(items)  # (fold, index) order
    everything = [item for items in members.values() for item in items]
    assert sorted(everything) == [(1, i) for i in range(PART1_PATCHES)]
    raw = raw_fold(kaggle_part1)
    for ds in dd.values():
        _assert_examples_equal_reference(ds, raw)


def test_fake_fold_has_every_quirk_of_the_real_data(kaggle_part1):
    images, masks, _ = raw_fold(kaggle_part1)
    assert images.dtype == masks.dtype == np.float64
    assert images.shape == (PART1_PATCHES, 256, 256, 3) and masks.shape == (PART1_PATCHES, 256, 256, 6)
    m = np.asarray(masks[0])
    ids = [set(np.unique(m[..., c]).tolist()) - {0.0} for c in range(5)]
    assert max(max(s) for s in ids if s) > 3500
    assert ids[0] & ids[1]  # one id in two channels
    assert ((m[..., :5] != 0).sum(axis=-1) > 1).any()  # overlap pixels
    assert not masks[VOID_ROW].any()  # void: no nuclei, channel 5 all zero
    assert not masks[EMPTY_ROW][..., :5].any() and masks[EMPTY_ROW][..., 5].all()
    assert m[200, 30, 4] == m[220, 60, 4] != 0 and m[210, 45, 4] == 0  # one id in two pieces
    _, _, nuclei = reference_labels(m)
    assert len(nuclei) < sum(len(s) for s in ids)  # at least one nucleus is wholly covered and dropped


def test_empty_and_void_patches_are_kept_with_no_nuclei(kaggle_part1, tmp_path):
    dd = pim.build("folds", data_dir=_three_with_part1(kaggle_part1, tmp_path), cache_dir=str(tmp_path / "c"))
    fold1 = dd["fold1"]
    for row in (VOID_ROW, EMPTY_ROW):
        example = fold1[row]
        assert example["index"] == row and example["nuclei"] == []
        assert not np.array(example["semantic_mask"]).any() and not np.array(example["instance_mask"]).any()


def _three_with_part1(kaggle_part1, tmp_path):
    """Fold 1 by symlink plus small folds 2 and 3, for configs that need all three."""
    root = tmp_path / "three"
    root.mkdir()
    os.symlink(os.path.join(kaggle_part1, "Part 1"), root / "Part 1")
    write_fold(str(root), 2, 3, "kaggle")
    write_fold(str(root), 3, 3, "official")
    return str(root)


def test_folds_config_is_the_official_protocol(three_folds, tmp_path):
    dd = pim.build("folds", data_dir=three_folds, cache_dir=str(tmp_path / "cache"))
    assert list(dd) == ["fold1", "fold2", "fold3"]
    for fold, n in THREE_FOLD_PATCHES.items():
        ds = dd[f"fold{fold}"]
        assert list(zip(ds["fold"], ds["index"])) == [(fold, i) for i in range(n)]
    _assert_examples_equal_reference(dd["fold2"], raw_fold(os.path.join(three_folds, "fold_2"), 2, "kaggle-flat"))
    _assert_examples_equal_reference(dd["fold3"], raw_fold(three_folds, 3, "official"))


def test_all_config_pools_the_folds(three_folds, tmp_path):
    dd = pim.build("all", data_dir=three_folds, cache_dir=str(tmp_path / "cache"), split_seed=3)
    tissues = {fold: fake_tissues(n, fold) for fold, n in THREE_FOLD_PATCHES.items()}
    members = _members(dd)
    assert {name: set(items) for name, items in members.items()} == reference_split(tissues, 3, (0.8, 0.15, 0.05))
    assert sum(len(items) for items in members.values()) == sum(THREE_FOLD_PATCHES.values())
    for items in members.values():
        assert items == sorted(items)


def test_config_kwargs_reach_the_split(kaggle_part1, tmp_path):
    dd = pim.build(
        "part1", data_dir=kaggle_part1, cache_dir=str(tmp_path / "c"), split_seed=7, split_ratios=(0.5, 0.25, 0.25)
    )
    expected = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, 7, (0.5, 0.25, 0.25))
    assert {name: set(items) for name, items in _members(dd).items()} == expected


def test_zero_ratio_leaves_the_split_out(kaggle_part1, tmp_path):
    dd = pim.build("part1", data_dir=kaggle_part1, cache_dir=str(tmp_path / "c"), split_ratios=(0.9, 0.1, 0))
    assert list(dd) == ["train", "validation"]
    assert dd["train"].num_rows + dd["validation"].num_rows == PART1_PATCHES


def _tables_equal(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].data.table.equals(b[name].data.table), name


def test_num_proc_2_and_a_second_cache_give_identical_tables(kaggle_part1, tmp_path, monkeypatch):
    monkeypatch.setattr(pim, "SHARD_PATCHES", 4)  # several shards per split, so two processes share work
    one = pim.build("part1", data_dir=kaggle_part1, cache_dir=str(tmp_path / "one"))
    again = pim.build("part1", data_dir=kaggle_part1, cache_dir=str(tmp_path / "again"))
    two = pim.build("part1", data_dir=kaggle_part1, cache_dir=str(tmp_path / "two"), num_proc=2)
    _tables_equal(one, again)
    _tables_equal(one, two)
    arrow_files = [f for _, _, files in os.walk(tmp_path / "two") for f in files if f.endswith(".arrow")]
    assert any("-00001-" in f for f in arrow_files)  # the second process really wrote a part


def test_reloaded_builder_reports_the_same_info(kaggle_part1, tmp_path):
    cache = str(tmp_path / "cache")
    pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    reloaded = pim.PanNukeImageMask(config_name="part1", data_dir=kaggle_part1, cache_dir=cache)
    assert {name: s.num_examples for name, s in reloaded.info.splits.items()} == {
        "train": 19,
        "validation": 4,
        "test": 1,
    }
    assert reloaded.info.features == pim.PanNukeImageMask().info.features


def test_streaming_equals_prepared(kaggle_part1, tmp_path):
    builder = pim.PanNukeImageMask(config_name="part1", data_dir=kaggle_part1, cache_dir=str(tmp_path / "c"))
    builder.download_and_prepare()
    prepared = builder.as_dataset()
    streamed = builder.as_streaming_dataset()
    assert list(streamed) == list(prepared)
    for split in prepared:
        rows = list(streamed[split].cast_column("image", datasets.Image(decode=False)))
        stored = list(prepared[split].cast_column("image", datasets.Image(decode=False)))
        assert [r["image"]["bytes"] for r in rows] == [s["image"]["bytes"] for s in stored]
        assert [r["nuclei"] for r in rows] == [s["nuclei"] for s in stored]
        assert [r["id"] for r in rows] == prepared[split]["id"]


def test_streaming_needs_a_local_data_dir(tmp_path):
    builder = pim.PanNukeImageMask(config_name="part1", cache_dir=str(tmp_path / "c"))
    with pytest.raises(NotImplementedError, match="^streaming reads local folds only: pass data_dir="):
        builder.as_streaming_dataset()


# --- finding the files ---------------------------------------------------------------------------


def test_find_folds_in_every_layout(three_folds, kaggle_part1):
    found = pim.find_folds([three_folds], (1, 2, 3))
    assert found == {
        1: fold_paths(three_folds, 1, "kaggle"),
        2: fold_paths(os.path.join(three_folds, "fold_2"), 2, "kaggle-flat"),
        3: fold_paths(three_folds, 3, "official"),
    }
    # One fold's own folder works too, and rogue files (__MACOSX, notes) are ignored.
    assert pim.find_folds([os.path.join(kaggle_part1, "Part 1")], (1,)) == {1: fold_paths(kaggle_part1, 1, "kaggle")}
    assert pim.find_folds([kaggle_part1], (1,)) == {1: fold_paths(kaggle_part1, 1, "kaggle")}


def test_fold_without_a_name_is_told_by_its_patch_count(tmp_path):
    # Kaggle Part 2 can unpack without its folder; 2,523 patches say it is fold 2. The arrays are
    # sparse files, so this costs no disk; only headers are read.
    root = tmp_path / "download"
    paths = fold_paths(str(root), 2, "kaggle-flat")
    for key, shape in (("images", (2523, 256, 256, 3)), ("masks", (2523, 256, 256, 6))):
        os.makedirs(os.path.dirname(paths[key]), exist_ok=True)
        np.lib.format.open_memmap(paths[key], mode="w+", dtype=np.float64, shape=shape).flush()
    np.save(paths["types"], np.array(["Breast"] * 2523, dtype="<U13"))
    assert pim.find_folds([str(root)], (2,)) == {2: paths}
    with pytest.raises(FileNotFoundError, match=re.escape(f"{root}: fold 1 not found; expected, per fold,")):
        pim.find_folds([str(root)], (1,))


def test_an_unnamed_folder_of_unknown_size_is_ignored(tmp_path, caplog):
    write_fold(str(tmp_path), 1, 2, "kaggle")
    stray = fold_paths(str(tmp_path / "other"), 9, "kaggle-flat")
    write_fold(str(tmp_path / "other"), 2, 3, "kaggle-flat")
    assert pim.find_folds([str(tmp_path)], (1,)) == {1: fold_paths(str(tmp_path), 1, "kaggle")}
    assert caplog.messages == [
        f"{stray['images']}: ignored: no Part N / Fold N folder name, and 3 patches match no official fold size"
    ]


def test_missing_fold_names_the_layout(kaggle_part1):
    message = (
        f"{kaggle_part1}: fold 2 not found; expected, per fold, images.npy, masks.npy and types.npy as unpacked "
        "from Kaggle ('Part 1/Images/images.npy', 'Part 1/Images/types.npy', 'Part 1/Masks/masks.npy') or from "
        "the official zips ('Fold 1/images/fold1/images.npy', 'Fold 1/images/fold1/types.npy', "
        "'Fold 1/masks/fold1/masks.npy')"
    )
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        pim.find_folds([kaggle_part1], (1, 2))


def test_the_same_fold_twice_is_ambiguous(tmp_path):
    write_fold(str(tmp_path / "a"), 1, 2, "kaggle")
    write_fold(str(tmp_path / "b"), 1, 2, "official")
    with pytest.raises(pim.PanNukeFormatError) as error:
        pim.find_folds([str(tmp_path)], (1,))
    assert str(error.value) == (
        f"images.npy found 2 times for one fold: {tmp_path}/a/Part 1/Images/images.npy, "
        f"{tmp_path}/b/Fold 1/images/fold1/images.npy"
    )


def test_many_copies_are_named_in_one_short_line(tmp_path):
    for copy in range(6):
        write_fold(str(tmp_path / f"copy{copy}"), 1, 2, "kaggle")
    with pytest.raises(pim.PanNukeFormatError) as error:
        pim.find_folds([str(tmp_path)], (1,))
    assert str(error.value) == (
        f"images.npy found 6 times for one fold: {tmp_path}/copy0/Part 1/Images/images.npy, "
        f"{tmp_path}/copy1/Part 1/Images/images.npy, {tmp_path}/copy2/Part 1/Images/images.npy and 3 more"
    )


def test_a_symlink_cycle_is_walked_once(kaggle_part1, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(kaggle_part1, "Part 1"), data / "Part 1")
    os.symlink("..", data / "Part 1" / "up")  # D/Part 1/up -> D: a cycle
    os.symlink(data / "Part 1" / "Masks", tmp_path / "masks-link")
    (data / "elsewhere").symlink_to(tmp_path / "masks-link")  # a link to a link to a folder already walked
    expected = {
        "images": str(data / "Part 1" / "Images" / "images.npy"),
        "masks": str(data / "Part 1" / "Masks" / "masks.npy"),
        "types": str(data / "Part 1" / "Images" / "types.npy"),
    }
    assert pim.find_folds([str(data)], (1,)) == {1: expected}
    built = pim.build("part1", data_dir=str(data), cache_dir=str(tmp_path / "cache"))
    plain = pim.build("part1", data_dir=kaggle_part1, cache_dir=str(tmp_path / "cache"))
    assert {s: d["id"] for s, d in built.items()} == {s: d["id"] for s, d in plain.items()}
    assert built["train"]["nuclei"] == plain["train"]["nuclei"]


# --- bad input: one clear message, nothing written -----------------------------------------------


def _arrow_files(path):
    return sorted(f for _, _, files in os.walk(path) for f in files if f.endswith((".arrow", ".incomplete")))


def _edit(path, index, channel_slice, value):
    array = np.lib.format.open_memmap(path, mode="r+")
    array[index, 10, 20, channel_slice] = value
    array.flush()


def _rewrite(path, array, allow_pickle=False):
    np.save(path, array, allow_pickle=allow_pickle)


BAD_INPUTS = {
    "missing masks": (
        lambda p: os.remove(p["masks"]),
        FileNotFoundError,
        "{root}: masks.npy of fold 1 not found; expected, per fold,",
    ),
    "truncated images": (
        lambda p: os.truncate(p["images"], 1000),
        pim.PanNukeFormatError,
        "{images}: truncated: 1000 bytes, header (24, 256, 256, 3) float64 needs 37748864",
    ),
    "not npy": (
        lambda p: Path(p["masks"]).write_bytes(b"PK\x03\x04 a zip, not an npy file"),
        pim.PanNukeFormatError,
        "{masks}: not a valid .npy file (the magic string is not correct; expected b'\\x93NUMPY', got b'PK\\x03\\x04 a')",
    ),
    "pickled types": (
        lambda p: _rewrite(p["types"], np.array(["Breast"] * 24, dtype=object), allow_pickle=True),
        pim.PanNukeFormatError,
        "{types}: holds Python objects (dtype object); refusing to unpickle",
    ),
    "wrong channel count": (
        lambda p: _rewrite(p["masks"], np.zeros((24, 256, 256, 5))),
        pim.PanNukeFormatError,
        "{masks}: shape (24, 256, 256, 5), expected (N, H, W, 6)",
    ),
    "string images": (
        lambda p: _rewrite(p["images"], np.zeros((24, 2, 2, 3), dtype="<U2")),
        pim.PanNukeFormatError,
        "{images}: dtype <U2 is not numeric",
    ),
    "different lengths": (
        lambda p: _rewrite(p["types"], np.array(["Breast"] * 23, dtype="<U13")),
        pim.PanNukeFormatError,
        "{images_dir}: arrays of different lengths: images.npy 24, masks.npy 24, types.npy 23",
    ),
    "unknown tissue": (
        lambda p: _rewrite(p["types"], np.array(["Breast"] * 5 + ["Brain"] * 19, dtype="<U13")),
        pim.PanNukeFormatError,
        "{types}: patch 5: unknown tissue 'Brain'; valid: Adrenal_gland, Bile-duct,",
    ),
    "image above 255": (
        lambda p: _edit(p["images"], 3, 0, 300.0),
        pim.PanNukeFormatError,
        "{images}: patch 3: image values outside 0..255 (min 0, max 300)",
    ),
    "image NaN": (
        lambda p: _edit(p["images"], 7, 1, np.nan),
        pim.PanNukeFormatError,
        "{images}: patch 7: image has non-finite values (NaN or inf)",
    ),
    "mask negative": (
        lambda p: _edit(p["masks"], 4, 2, -1.0),
        pim.PanNukeFormatError,
        "{masks}: patch 4: mask has negative values (min -1)",
    ),
    "mask non-integer": (
        lambda p: _edit(p["masks"], 5, 0, 2.5),
        pim.PanNukeFormatError,
        "{masks}: patch 5: mask has non-integer values (e.g. 2.5)",
    ),
    "mask above 65535": (
        lambda p: _edit(p["masks"], 6, 3, 70000.0),
        pim.PanNukeFormatError,
        "{masks}: patch 6: mask has values above 65535 (max 70000)",
    ),
    "mask inf": (
        lambda p: _edit(p["masks"], 8, 4, np.inf),
        pim.PanNukeFormatError,
        "{masks}: patch 8: mask has non-finite values (NaN or inf)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_error_and_writes_nothing(case, writable_fold, tmp_path):
    corrupt, error, template = BAD_INPUTS[case]
    paths = fold_paths(str(writable_fold), 1, "kaggle")
    corrupt(paths)
    message = template.format(root=writable_fold, images_dir=os.path.dirname(paths["images"]), **paths)
    cache = tmp_path / "cache"
    with pytest.raises(error) as caught:
        pim.build("part1", data_dir=str(writable_fold), cache_dir=str(cache))
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)
    assert _arrow_files(cache) == []


@pytest.mark.parametrize("case", ["image above 255", "mask non-integer"])
def test_bad_patch_found_by_a_worker_process_gives_the_same_error(case, writable_fold, tmp_path, monkeypatch):
    monkeypatch.setattr(pim, "SHARD_PATCHES", 4)
    corrupt, error, template = BAD_INPUTS[case]
    paths = fold_paths(str(writable_fold), 1, "kaggle")
    corrupt(paths)
    with pytest.raises(error) as caught:
        pim.build("part1", data_dir=str(writable_fold), cache_dir=str(tmp_path / "cache"), num_proc=2)
    assert str(caught.value) == template.format(**paths)
    assert _arrow_files(tmp_path / "cache") == []


# --- the download path, over a real HTTP server on 127.0.0.1 --------------------------------------


def _official_zip(fold, n, workdir):
    """A zip laid out like the official fold_N.zip, holding a fake fold."""
    tree = workdir / f"tree{fold}"
    write_fold(str(tree), fold, n, "official")
    (tree / f"Fold {fold}" / "README.txt").write_text("PanNuke")
    archive = workdir / "served" / f"fold_{fold}.zip"
    archive.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for dirpath, _, files in sorted(os.walk(tree)):
            for name in sorted(files):
                full = os.path.join(dirpath, name)
                zf.write(full, os.path.relpath(full, tree))
    data = archive.read_bytes()
    return tree, (archive.name, len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def http_mirror(tmp_path):
    tree, entry = _official_zip(1, PART1_PATCHES, tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tree, entry
    finally:
        server.shutdown()
        server.server_close()


def test_download_verify_extract_and_build(http_mirror, tmp_path, monkeypatch):
    url, tree, entry = http_mirror
    monkeypatch.setitem(pim.DOWNLOADS, 1, entry)
    monkeypatch.setenv(pim.BASE_URL_ENV, url)
    downloaded = pim.build("part1", cache_dir=str(tmp_path / "cache"))
    local = pim.build("part1", data_dir=str(tree), cache_dir=str(tmp_path / "local"))
    _tables_equal(downloaded, local)
    _assert_examples_equal_reference(downloaded["validation"], raw_fold(str(tree), 1, "official"))


def test_download_of_the_wrong_size_is_refused(http_mirror, tmp_path, monkeypatch):
    url, _, (name, size, sha) = http_mirror
    monkeypatch.setitem(pim.DOWNLOADS, 1, (name, size + 1, sha))
    with pytest.raises(pim.PanNukeFormatError, match=re.escape(f"{url}/fold_1.zip: {size} bytes, expected {size + 1}")):
        pim.build("part1", cache_dir=str(tmp_path / "cache"), base_url=url)


def test_download_with_a_wrong_checksum_is_refused(http_mirror, tmp_path, monkeypatch):
    url, _, (name, size, _) = http_mirror
    monkeypatch.setitem(pim.DOWNLOADS, 1, (name, size, "0" * 64))
    cache = tmp_path / "cache"
    with pytest.raises(pim.PanNukeFormatError) as caught:
        pim.build("part1", cache_dir=str(cache), base_url=url + "/")
    sha = hashlib.sha256((tmp_path / "served" / name).read_bytes()).hexdigest()
    message = str(caught.value)
    assert message.startswith(f"{url}/fold_1.zip: SHA-256 {sha}, expected {'0' * 64} (saved as {cache}")
    saved = re.search(r"\(saved as (.+); delete it to download again\)$", message).group(1)
    assert hashlib.sha256(Path(saved).read_bytes()).hexdigest() == sha
    assert _arrow_files(cache) == []


def test_default_kwargs_reuse_the_cache(kaggle_part1, tmp_path):
    cache = str(tmp_path / "cache")
    pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    pim.build("part1", data_dir=kaggle_part1, cache_dir=cache, split_seed=0, split_ratios=[0.8, 0.15, 0.05])
    prepared = [d for d in os.listdir(os.path.join(cache, "pannuke_imagemask")) if not d.endswith(".lock")]
    assert len(prepared) == 1 and prepared[0].startswith("part1-")
    pim.build("part1", data_dir=kaggle_part1, cache_dir=cache, split_seed=1)
    assert len([d for d in os.listdir(os.path.join(cache, "pannuke_imagemask")) if not d.endswith(".lock")]) == 2


@pytest.mark.parametrize("opencv", [True, False])
def test_image_png_is_lossless_rgb_with_or_without_opencv(opencv, monkeypatch):
    if not opencv:  # the loading script under datasets<4 may run where OpenCV is not installed
        monkeypatch.setattr(pim, "cv2", None)
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)  # pure red: a red/blue swap would show here
    decoded = Image.open(io.BytesIO(pim.encode_image_png(image)))
    assert decoded.mode == "RGB" and decoded.getpixel((0, 0)) == (255, 0, 0)
    np.testing.assert_array_equal(np.asarray(decoded), image)
