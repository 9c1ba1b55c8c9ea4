"""CellViT / CellViT++ (TIO-IKIM) read the cellvit export.

Their training code is not pip-installable, so this tests the contract it relies on: every label file loads
with `np.load(path, allow_pickle=True)[()]` under numpy 2 (in this process) and under numpy 1.23.5 (the
newest release CellViT's requirements allow: numpy>1.22,<1.24; a venv made once per session), giving the
reference maps; and a re-implementation of how CellViT's PanNukeDataset reads a sample, written from
reading cell_segmentation/datasets/pannuke.py (identical in CellViT++ as cellvit/training/datasets/pannuke.py),
yields the reference values for the documented training config.
"""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from natsort import natsorted
from pannuke_fixtures import PART1_PATCHES, THREE_FOLD_PATCHES, raw_fold
from PIL import Image
from reference import reference_image, reference_labels

from convert.__main__ import main

NUMPY_1 = "1.23.5"
# The data section of a CellViT training config for an export of part1 or all (train, validation, test
# in fold0, fold1, fold2); for --config folds the same lines train on official fold 1, validate on 2, test on 3.
TRAIN_CONFIG = """
data:
  dataset: PanNuke
  dataset_path: EXPORT
  train_folds: [0]
  val_folds: [1]
  test_folds: [2]
  num_nuclei_classes: 6
  num_tissue_classes: 19
"""

# Run by numpy 1.23.5: load every label as CellViT does, write the maps as plain arrays, and check that
# numpy 1.23.5's own np.save of the loaded dict gives the same bytes as the file.
NUMPY_1_SCRIPT = """
import io, sys
from pathlib import Path
import numpy as np
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
print(np.__version__)
for path in sorted(src.glob("fold*/labels/*.npy")):
    label = np.load(path, allow_pickle=True)[()]
    assert type(label) is dict and list(label) == ["inst_map", "type_map"], path
    for key, value in label.items():
        np.save(dst / f"{path.parent.parent.name}_{path.stem}_{key}.npy", value)
    again = io.BytesIO()
    np.save(again, label)
    print(path.parent.parent.name, path.name, again.getvalue() == path.read_bytes())
"""


def _python_for_numpy_1():
    """An interpreter numpy 1.23.5 has wheels for (CPython 3.8 to 3.11)."""
    if sys.version_info < (3, 12):
        return sys.executable
    for name in ("python3.11", "python3.10"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail(f"numpy {NUMPY_1} needs CPython <= 3.11 (python3.11 or python3.10 on PATH); found none")


@pytest.fixture(scope="session")
def numpy1_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("numpy1") / "venv"
    subprocess.run([_python_for_numpy_1(), "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
         f"numpy=={NUMPY_1}"],
        check=True,
    )  # fmt: skip
    return python


@pytest.fixture(scope="module")
def exports(tmp_path_factory, kaggle_part1, three_folds, cache):
    root = tmp_path_factory.mktemp("cellvit-consumer")
    for name, data_dir, config in (("part1", kaggle_part1, "part1"), ("folds", three_folds, "folds")):
        argv = ["export", "--out", str(root / name), "--data-dir", data_dir, "--cache-dir", cache, "--quiet"]
        assert main([*argv, "--format", "cellvit", "--config", config]) == 0
    return root


def _reference(root, fold, count, layout):
    images, masks, tissues = raw_fold(root, fold, layout)
    return {
        f"fold{fold}_{i:05d}": (reference_image(images[i]), *reference_labels(np.asarray(masks[i])), tissues[i])
        for i in range(count)
    }


@pytest.fixture(scope="module")
def reference(kaggle_part1, three_folds):
    """{export name: {our patch id: (image, semantic, instance, nuclei, tissue)}} from the raw fake folds."""
    folds = {}
    for fold, root, layout in ((1, three_folds, "kaggle"), (2, os.path.join(three_folds, "fold_2"), "kaggle-flat"),
                               (3, three_folds, "official")):  # fmt: skip
        folds.update(_reference(root, fold, THREE_FOLD_PATCHES[fold], layout))
    return {"part1": _reference(kaggle_part1, 1, PART1_PATCHES, "kaggle"), "folds": folds}


def _our_ids(root):
    """{(fold folder, CellViT image name): our patch id}, from each fold's ids.csv."""
    ids = {}
    for folder in ("fold0", "fold1", "fold2"):
        table = pd.read_csv(root / folder / "ids.csv")
        ids.update({(folder, img): patch_id for img, patch_id in zip(table["img"], table["id"])})
    return ids


@pytest.mark.parametrize("name", ["part1", "folds"])
def test_labels_load_under_numpy_2(name, exports, reference):
    root = exports / name
    ids = _our_ids(root)
    assert len(ids) == len(reference[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a DeprecationWarning about numpy.core
        for (folder, img), patch_id in ids.items():
            label = np.load(root / folder / "labels" / img.replace(".png", ".npy"), allow_pickle=True)[()]
            _, semantic, instance, _, _ = reference[name][patch_id]
            np.testing.assert_array_equal(label["inst_map"], instance)
            np.testing.assert_array_equal(label["type_map"], semantic)


@pytest.mark.parametrize("name", ["part1", "folds"])
def test_labels_load_under_numpy_1_23_as_its_own_np_save_writes_them(name, exports, reference, numpy1_python, tmp_path):
    root = exports / name
    result = subprocess.run(
        [numpy1_python, "-c", NUMPY_1_SCRIPT, str(root), str(tmp_path)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr  # e.g. ModuleNotFoundError: No module named 'numpy._core'
    lines = result.stdout.splitlines()
    assert lines[0] == NUMPY_1
    ids = _our_ids(root)
    # Every file is byte for byte what numpy 1.23.5's np.save writes for the dict it loaded.
    assert sorted(lines[1:]) == sorted(f"{folder} {img.replace('.png', '.npy')} True" for folder, img in ids)
    for (folder, img), patch_id in ids.items():
        _, semantic, instance, _, _ = reference[name][patch_id]
        prefix = f"{folder}_{img[:-4]}"
        for key, expected in (("inst_map", instance), ("type_map", semantic)):
            loaded = np.load(tmp_path / f"{prefix}_{key}.npy", allow_pickle=False)
            assert loaded.dtype == np.int32 and loaded.shape == (256, 256)
            np.testing.assert_array_equal(loaded, expected)


class CellViTPanNuke:
    """How CellViT's PanNukeDataset (cell_segmentation/datasets/pannuke.py) reads the export, re-implemented
    from reading its code: its __init__ (natsorted images/*.png, labels/<stem>.npy, types.csv as an img -> type
    dict), load_imgfile, load_maskfile, __getitem__ without transforms or the HV map, load_cell_count and
    get_sampling_weights_tissue."""

    def __init__(self, dataset_path, folds):
        self.dataset = Path(dataset_path).resolve()
        self.folds = folds
        self.images, self.masks, self.img_names, self.types = [], [], [], {}
        for fold in folds:
            for fold_image in natsorted((self.dataset / f"fold{fold}" / "images").glob("*.png")):
                mask_path = self.dataset / f"fold{fold}" / "labels" / f"{fold_image.stem}.npy"
                if mask_path.is_file():
                    self.images.append(fold_image)
                    self.masks.append(mask_path)
                    self.img_names.append(fold_image.name)
            fold_types = pd.read_csv(self.dataset / f"fold{fold}" / "types.csv")
            self.types = {**self.types, **fold_types.set_index("img")["type"].to_dict()}

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        img = np.array(Image.open(self.images[index])).astype(np.uint8)
        label = np.load(self.masks[index], allow_pickle=True)
        mask = np.stack([label[()]["inst_map"].astype(np.int32), label[()]["type_map"].astype(np.int32)], axis=-1)
        inst_map, type_map = mask[:, :, 0].copy(), mask[:, :, 1].copy()
        np_map = inst_map.copy()
        np_map[np_map > 0] = 1
        img = torch.Tensor(img).type(torch.float32).permute(2, 0, 1)
        if torch.max(img) >= 5:
            img = img / 255
        masks = {
            "instance_map": torch.Tensor(inst_map).type(torch.int64),
            "nuclei_type_map": torch.Tensor(type_map).type(torch.int64),
            "nuclei_binary_map": torch.Tensor(np_map).type(torch.int64),
        }
        return img, masks, self.types[self.images[index].name], self.images[index].name

    def load_cell_count(self):
        tables = [pd.read_csv(self.dataset / f"fold{fold}" / "cell_count.csv", index_col=0) for fold in self.folds]
        self.cell_count = pd.concat(tables).reindex(self.img_names)

    def get_sampling_weights_tissue(self, gamma=1):
        with open(self.dataset / "weight_config.yaml") as f:
            tissue_counts = dict(yaml.safe_load(f))["tissue"]
        k = np.sum(list(tissue_counts.values()))
        weights = {tissue: k / (gamma * count + (1 - gamma) * k) for tissue, count in tissue_counts.items()}
        return torch.Tensor([weights[self.types[name]] for name in self.img_names])


@pytest.mark.parametrize("name", ["part1", "folds"])
def test_cellvit_reads_every_sample_of_the_documented_config(name, exports, reference):
    root = exports / name
    data = yaml.safe_load(TRAIN_CONFIG.replace("EXPORT", str(root)))["data"]
    with open(Path(data["dataset_path"]) / "dataset_config.yaml") as f:
        dataset_config = yaml.safe_load(f)  # as CellViT's experiment reads it
    assert len(dataset_config["tissue_types"]) == data["num_tissue_classes"]
    assert len(dataset_config["nuclei_types"]) == data["num_nuclei_classes"]
    ids = _our_ids(root)
    seen = []
    for key, expected_fold in (("train_folds", "fold0"), ("val_folds", "fold1"), ("test_folds", "fold2")):
        dataset = CellViTPanNuke(data["dataset_path"], data[key])
        assert len(dataset) == sum(1 for folder, _ in ids if folder == expected_fold)
        dataset.load_cell_count()
        assert not dataset.cell_count.isna().any().any()
        weights = dataset.get_sampling_weights_tissue(gamma=1)
        assert torch.isfinite(weights).all()
        for index in range(len(dataset)):
            img, masks, tissue, image_name = dataset[index]
            patch_id = ids[(expected_fold, image_name)]
            image, semantic, instance, nuclei, ref_tissue = reference[name][patch_id]
            assert img.shape == (3, 256, 256) and img.dtype == torch.float32
            assert torch.equal(img, torch.Tensor(image).permute(2, 0, 1) / 255)
            assert torch.equal(masks["instance_map"], torch.from_numpy(instance.astype(np.int64)))
            assert torch.equal(masks["nuclei_type_map"], torch.from_numpy(semantic.astype(np.int64)))
            assert torch.equal(masks["nuclei_binary_map"], torch.from_numpy((instance > 0).astype(np.int64)))
            assert tissue == ref_tissue
            counts = [sum(1 for n in nuclei if n["label"] == c) for c in range(5)]
            assert dataset.cell_count.loc[image_name].tolist() == counts
            seen.append(patch_id)
    assert sorted(seen) == sorted(reference[name])
