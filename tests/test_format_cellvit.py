"""python -m convert export --format cellvit: every file against the independent reference, and verify.

The expected contents are written out here as CellViT's own files have them (configs/datasets/PanNuke in
TIO-IKIM/CellViT: dataset_config.yaml, weight_config.yaml, fold{k}/types.csv, fold{k}/cell_count.csv) and
as its prepare_pannuke.py names files ({k}_{i}.png, {k}_{i}.npy), not taken from the code under test.
"""

import hashlib
import json
import os
import pickle
import pickletools
import shutil

import numpy as np
import pytest
import yaml
from pannuke_fixtures import PART1_PATCHES, THREE_FOLD_PATCHES, raw_fold
from PIL import Image
from reference import reference_image, reference_labels, reference_split

import pannuke_imagemask as pim
from convert.__main__ import main
from convert.formats import get_format
from convert.sample import fake_tissues

# CellViT's dataset_config.yaml, byte for byte as its repository ships it.
DATASET_CONFIG = """tissue_types:
  "Adrenal_gland": 0
  "Bile-duct": 1
  "Bladder": 2
  "Breast": 3
  "Cervix": 4
  "Colon": 5
  "Esophagus": 6
  "HeadNeck": 7
  "Kidney": 8
  "Liver": 9
  "Lung": 10
  "Ovarian": 11
  "Pancreatic": 12
  "Prostate": 13
  "Skin": 14
  "Stomach": 15
  "Testis": 16
  "Thyroid": 17
  "Uterus": 18

nuclei_types:
  "Background": 0
  "Neoplastic": 1
  "Inflammatory": 2
  "Connective": 3
  "Dead": 4
  "Epithelial": 5
"""
CELL_COUNT_HEADER = "Image,Neoplastic,Inflammatory,Connective,Dead,Epithelial\n"
# sha256 of numpy 1.23.5's np.save({"inst_map": zeros, "type_map": zeros}), both int32 (256, 256): the file
# of a patch without nuclei must be exactly that.
EMPTY_LABEL_SHA256 = "7b1c3646993e078e7dee713a448e9d38c76a7aa40a0793130fc4e0fe5f6019be"
# The .npy header of a 0-d object array (what np.save writes before the pickle).
OBJECT_NPY_HEADER = b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (), }" + b" " * 63 + b"\n"


@pytest.fixture(scope="module")
def part1(export_tree):
    return export_tree("cellvit")


@pytest.fixture(scope="module")
def folds(export_tree):
    return export_tree("cellvit", config="folds")


def _reference(root, fold, count, layout):
    images, masks, tissues = raw_fold(root, fold, layout)
    return {
        (fold, i): (reference_image(images[i]), *reference_labels(np.asarray(masks[i])), tissues[i])
        for i in range(count)
    }


@pytest.fixture(scope="module")
def part1_reference(kaggle_part1):
    return _reference(kaggle_part1, 1, PART1_PATCHES, "kaggle")


@pytest.fixture(scope="module")
def folds_reference(three_folds):
    reference = {}
    for fold, root, layout in ((1, three_folds, "kaggle"), (2, os.path.join(three_folds, "fold_2"), "kaggle-flat"),
                               (3, three_folds, "official")):  # fmt: skip
        reference.update(_reference(root, fold, THREE_FOLD_PATCHES[fold], layout))
    return reference


def _part1_folders():
    """{CellViT fold folder: [(fold, index), ...] in split order}: train, validation, test as fold0, 1, 2."""
    members = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, 0, (0.8, 0.15, 0.05))
    return {f"fold{k}": sorted(members[split]) for k, split in enumerate(("train", "validation", "test"))}


def _counts(nuclei):
    return [sum(1 for n in nuclei if n["label"] == c) for c in range(5)]


def _check_tree(root, folders, reference):
    """Every file of every fold folder against the reference; returns the tissue names of all patches."""
    assert sorted(os.listdir(root)) == sorted(
        ["dataset_config.yaml", "weight_config.yaml", "export.json", "statistics.png", "samples.png", *folders]
    )
    tissues = []
    for folder, members in folders.items():
        k = int(folder[-1])
        assert sorted(os.listdir(root / folder)) == ["cell_count.csv", "ids.csv", "images", "labels", "types.csv"]
        names = [f"{k}_{i}" for i, _ in members]
        assert sorted(os.listdir(root / folder / "images")) == sorted(f"{n}.png" for n in names)
        assert sorted(os.listdir(root / folder / "labels")) == sorted(f"{n}.npy" for n in names)
        types, counts, ids = [], [], []
        for name, (_, key) in zip(names, members):
            image, semantic, instance, nuclei, tissue = reference[key]
            with Image.open(root / folder / "images" / f"{name}.png") as picture:
                assert picture.mode == "RGB"
                np.testing.assert_array_equal(np.array(picture), image)
            label = np.load(root / folder / "labels" / f"{name}.npy", allow_pickle=True)
            assert label.shape == () and label.dtype == object
            maps = label[()]
            assert list(maps) == ["inst_map", "type_map"]
            for key_name, expected in (("inst_map", instance), ("type_map", semantic)):
                assert maps[key_name].dtype == np.int32 and maps[key_name].shape == (256, 256)
                np.testing.assert_array_equal(maps[key_name], expected)
            types.append(f"{name}.png,{tissue}\n")
            counts.append((f"{name}.png", ",".join(str(c) for c in _counts(nuclei))))
            ids.append(f"{name}.png,fold{key[0]}_{key[1]:05d}\n")
            tissues.append(tissue)
        assert (root / folder / "types.csv").read_text() == "img,type\n" + "".join(types)
        assert (root / folder / "cell_count.csv").read_text() == CELL_COUNT_HEADER + "".join(
            f"{image},{values}\n" for image, values in sorted(counts)
        )
        assert (root / folder / "ids.csv").read_text() == "img,id\n" + "".join(ids)
    assert (root / "dataset_config.yaml").read_text() == DATASET_CONFIG
    present = [t for t in pim.TISSUES if t in tissues]
    assert (root / "weight_config.yaml").read_text() == "tissue:\n" + "".join(
        f'  "{t}": {tissues.count(t)}\n' for t in present
    )
    return tissues


def test_part1_every_file_against_the_reference(part1, part1_reference):
    folders = {folder: list(enumerate(members)) for folder, members in _part1_folders().items()}
    assert [len(m) for m in folders.values()] == [19, 4, 1]
    tissues = _check_tree(part1, folders, part1_reference)
    assert yaml.safe_load((part1 / "weight_config.yaml").read_text()) == {
        "tissue": {"Breast": tissues.count("Breast"), "Skin": tissues.count("Skin")}
    }
    assert sorted(set(tissues)) == ["Breast", "Skin"]
    config = yaml.safe_load((part1 / "dataset_config.yaml").read_text())
    assert config["tissue_types"] == {name: k for k, name in enumerate(pim.TISSUES)}
    assert config["nuclei_types"] == {
        "Background": 0, "Neoplastic": 1, "Inflammatory": 2, "Connective": 3, "Dead": 4, "Epithelial": 5
    }  # fmt: skip
    assert json.loads((part1 / "export.json").read_text())["format"] == "cellvit"


def test_folds_config_names_files_as_cellvit_does(folds, folds_reference, cache):
    # Official fold N in fold{N-1}, i its index in the fold: the names of CellViT's prepare_pannuke.py.
    folders = {f"fold{f - 1}": [(i, (f, i)) for i in range(n)] for f, n in THREE_FOLD_PATCHES.items()}
    tissues = _check_tree(folds, folders, folds_reference)
    assert len(tissues) == 69
    assert main(["verify", str(folds), "--cache-dir", cache, "--quiet"]) == 0


def test_label_files_are_numpy_1x_pickles(part1, part1_reference):
    """The bytes numpy 1.x writes: numpy.core names (numpy 2 reads them), never numpy._core (numpy < 2 cannot)."""
    empty = [key for key, value in part1_reference.items() if not value[3]]
    assert empty
    labels = sorted(part1.glob("fold*/labels/*.npy"))
    assert len(labels) == PART1_PATCHES
    digests = {}
    for path in labels:
        data = path.read_bytes()
        assert len(data) == 524733 and data[:128] == OBJECT_NPY_HEADER
        assert b"numpy._core" not in data
        ops = list(pickletools.genops(data[128:]))
        assert ops[0][0].name == "PROTO" and ops[0][1] == 3
        assert [arg for op, arg, _ in ops if op.name in ("GLOBAL", "STACK_GLOBAL")] == [
            "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"
        ]  # fmt: skip
        digests[path.name] = hashlib.sha256(data).hexdigest()
    ids = {}
    for folder in ("fold0", "fold1", "fold2"):
        for line in (part1 / folder / "ids.csv").read_text().splitlines()[1:]:
            image, patch_id = line.split(",")
            ids[patch_id] = image.replace(".png", ".npy")
    for fold, index in empty:
        assert digests[ids[f"fold{fold}_{index:05d}"]] == EMPTY_LABEL_SHA256


def _flip_one_inst_value(path):
    """Add 1 to inst_map[10, 10] in place, finding the array's bytes from the pickle opcodes."""
    data = bytearray(path.read_bytes())
    (position,) = [pos for op, arg, pos in pickletools.genops(bytes(data[128:])) if op.name == "BINBYTES"][:1]
    start = 128 + position + 5 + (10 * 256 + 10) * 4  # opcode byte, 4-byte length, then row-major int32
    value = int.from_bytes(data[start : start + 4], "little", signed=True)
    data[start : start + 4] = (value + 1).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(data))


class _Opener:
    """Unpickling this would create a file: verify must refuse it without running it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _corrupt(tree, case, tmp_path):
    label = tree / "fold0" / "labels" / "0_0.npy"
    if case == "changed label":
        _flip_one_inst_value(label)
    elif case == "numpy 2 np.save":
        maps = np.load(label, allow_pickle=True)[()]
        np.save(label, maps)  # the same values, pickled by numpy 2
    elif case == "foreign pickle":
        label.write_bytes(OBJECT_NPY_HEADER + pickle.dumps(_Opener(str(tmp_path / "ran")), protocol=3))
    elif case == "extra file":
        shutil.copy(tree / "fold0" / "images" / "0_0.png", tree / "fold0" / "images" / "0_99.png")
    elif case == "missing file":
        os.remove(tree / "fold1" / "labels" / "1_2.npy")
    elif case == "changed image":
        path = tree / "fold2" / "images" / "2_0.png"
        with Image.open(path) as picture:
            pixels = np.array(picture)
        pixels[0, 0] = 255 - pixels[0, 0]
        Image.fromarray(pixels).save(path)
    elif case == "changed types.csv":
        path = tree / "fold1" / "types.csv"
        lines = path.read_text().splitlines(keepends=True)
        lines[2] = lines[2].replace("Breast", "Skin") if "Breast" in lines[2] else lines[2].replace("Skin", "Breast")
        path.write_text("".join(lines))
    elif case == "changed weight_config.yaml":
        path = tree / "weight_config.yaml"
        path.write_text(path.read_text().replace('"Skin": ', '"Skin": 1'))


def _types_line(part1):
    line = (part1 / "fold1" / "types.csv").read_text().splitlines()[2]
    swapped = line.replace("Breast", "Skin") if "Breast" in line else line.replace("Skin", "Breast")
    return f"fold1/types.csv: line 3 is {swapped!r}, expected {line!r}"


def _weight_line(part1):
    (line,) = [x for x in (part1 / "weight_config.yaml").read_text().splitlines() if "Skin" in x]
    number = (part1 / "weight_config.yaml").read_text().splitlines().index(line) + 1
    return f"weight_config.yaml: line {number} is {line.replace(': ', ': 1')!r}, expected {line!r}"


CASES = {
    "changed label": lambda _: ["fold0/labels/0_0.npy: inst_map: 1 of 65536 values differ"],
    "numpy 2 np.save": lambda _: [
        "fold0/labels/0_0.npy: refers to numpy._core (saved by numpy 2): numpy < 2, which CellViT pins, cannot load it"
    ],
    "foreign pickle": lambda _: ["fold0/labels/0_0.npy: refused: its pickle calls io.open"],
    "extra file": lambda _: ["fold0/images/0_99.png: not part of the export"],
    "missing file": lambda _: ["fold1/labels/1_2.npy: missing"],
    "changed image": lambda _: ["fold2/images/2_0.png: 1 of 65536 pixels differ"],
    "changed types.csv": lambda part1: [_types_line(part1)],
    "changed weight_config.yaml": lambda part1: [_weight_line(part1)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_verify_passes_then_names_the_problem(case, part1, cache, tmp_path, capsys):
    tree = tmp_path / "tree"
    shutil.copytree(part1, tree)
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 0
    capsys.readouterr()
    _corrupt(tree, case, tmp_path)
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    assert capsys.readouterr().out.splitlines() == CASES[case](part1)
    assert not (tmp_path / "ran").exists()  # the foreign pickle was never run


def test_estimate_is_close_to_what_was_written(part1, kaggle_part1, cache):
    dataset_dict = pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    estimated = sum(get_format("cellvit").estimate(dataset_dict, {}))
    reports = ("export.json", "statistics.png", "samples.png")
    written = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(part1)
        for f in files
        if not (d == str(part1) and f in reports)
    )
    # Images and labels are counted exactly; the CSVs at 64 bytes a row and the two YAMLs at 4 KB each (that
    # the estimate bounds what was written: tests/test_format_contract.py).
    assert estimated <= written + 3 * 64 * (PART1_PATCHES + 3) + 2 * 4096
