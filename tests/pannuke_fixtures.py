"""The fake folds in the real format and what is made of them, once per session: a pytest plugin.

tests/conftest.py and consumer_tests/conftest.py load it (`pytest_plugins`); test modules import its
constants and helpers (`from pannuke_fixtures import PART1_PATCHES, raw_fold`). One datasets cache serves the
whole run, so that each fake fold is prepared once per config, and `export_tree` exports each
(format, config, options) once; the trees it returns are shared: copy one before changing it.
"""

import os
import shutil

import numpy as np
import pytest

from convert.sample import write_fold

SHARED_REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "pannuke-real")

# Sizes chosen so that every split of every config is non-empty (see convert.sample._RUNS).
PART1_PATCHES = 24
THREE_FOLD_PATCHES = {1: 24, 2: 22, 3: 23}
REPORTS = ("export.json", "samples.png", "statistics.png")  # what export writes beside the format's files
HUB_REPO_ID = "pathology-lab/pannuke-imagemask"  # the id local_repo's card names


@pytest.fixture(autouse=True)
def _quiet_hf(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session", autouse=True)
def _each_picture_drawn_once():
    """export's pictures are a function of the rows alone, drawn by matplotlib in most of a small export's
    time: the run draws each distinct picture once and copies its bytes into the next export that would draw
    it again. The trees stay byte for byte what export writes (the first export of those rows drew them)."""
    import json

    from convert import export

    drawn = {}

    def once(draw, key_of, name):
        def wrapper(root, *args, **kwargs):
            key = (name, key_of(*args, **kwargs))
            if key not in drawn:
                draw(root, *args, **kwargs)
                with open(os.path.join(root, name), "rb") as f:
                    drawn[key] = f.read()
            else:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(drawn[key])

        return wrapper

    patch = pytest.MonkeyPatch()
    patch.setattr(export, "write_statistics", once(export.write_statistics, json.dumps, "statistics.png"))
    first_split = lambda dataset_dict: next((split, ds._fingerprint) for split, ds in dataset_dict.items())
    patch.setattr(export, "write_samples", once(export.write_samples, first_split, "samples.png"))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def kaggle_part1(tmp_path_factory):
    """One fold in the Kaggle layout, with rogue files the reader must ignore."""
    root = tmp_path_factory.mktemp("kaggle")
    write_fold(str(root), 1, PART1_PATCHES, "kaggle")
    notes = root / "Part 1" / "Author Notes"
    notes.mkdir()
    (notes / "README.txt").write_text("PanNuke author notes")
    rogue = root / "__MACOSX" / "Part 1" / "Images"
    rogue.mkdir(parents=True)
    (rogue / "images.npy").write_bytes(b"\x00\x05\x16\x07resource fork")
    return str(root)


@pytest.fixture(scope="session")
def three_folds(tmp_path_factory):
    """Folds 1, 2, 3 in the three layouts users meet: Kaggle, Kaggle without Part N, official."""
    root = tmp_path_factory.mktemp("three")
    write_fold(str(root), 1, THREE_FOLD_PATCHES[1], "kaggle")
    write_fold(str(root / "fold_2"), 2, THREE_FOLD_PATCHES[2], "kaggle-flat")
    write_fold(str(root), 3, THREE_FOLD_PATCHES[3], "official")
    return str(root)


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """The datasets cache of the whole run: the fake folds are prepared into it once per config."""
    return str(tmp_path_factory.mktemp("hf-cache"))


def run_export(out, data_dir, cache, *extra):
    """python -m convert export of data_dir into out, quietly, with the run's cache."""
    from convert.__main__ import main

    return main(["export", "--out", str(out), "--data-dir", data_dir, "--cache-dir", cache, "--quiet", *extra])


@pytest.fixture(scope="session")
def export_tree(tmp_path_factory, kaggle_part1, three_folds, cache):
    """export_tree(format, *options, config="part1", folder=None): the tree of that export, made once per run.

    part1 reads kaggle_part1, the other configs three_folds. Shared between tests: copy before changing it.
    """
    made = {}

    def export(format_name, *options, config="part1", folder=None):
        key = (format_name, config, options, folder)
        if key not in made:
            out = tmp_path_factory.mktemp(f"{format_name}-{config}") / (folder or format_name)
            data_dir = kaggle_part1 if config == "part1" else three_folds
            assert run_export(out, data_dir, cache, "--format", format_name, "--config", config, *options) == 0
            made[key] = out
        return made[key]

    return export


@pytest.fixture(scope="session")
def local_repo(tmp_path_factory, kaggle_part1, cache):
    """What `push --local-dir` writes of the part1 fold: a Hub dataset repository on disk."""
    from convert.__main__ import main

    out = tmp_path_factory.mktemp("hub") / "repo"
    argv = ["push", "--repo-id", HUB_REPO_ID, "--data-dir", kaggle_part1, "--local-dir", str(out), "--cache-dir", cache]
    assert main([*argv, "--quiet"]) == 0
    return out


@pytest.fixture
def writable_fold(tmp_path, kaggle_part1):
    """A private copy of the Kaggle fold, for tests that corrupt it."""
    root = tmp_path / "data"
    shutil.copytree(os.path.join(kaggle_part1, "Part 1"), root / "Part 1")
    return root


def copy_tree(tree, tmp_path):
    """A private copy of a shared tree (under the same folder name), for a test that changes it."""
    copy = tmp_path / tree.name
    shutil.copytree(tree, copy)
    return copy


def real_types(fold):
    path = os.path.join(SHARED_REAL, f"fold{fold}_types.npy")
    if not os.path.exists(path):
        pytest.skip(
            f"real PanNuke tissue lists not found at {os.path.abspath(SHARED_REAL)} (not part of a fresh clone)"
        )
    return np.load(path, allow_pickle=False).tolist()


def raw_fold(root, fold=1, layout="kaggle"):
    """The raw arrays of a fake fold, read straight with numpy."""
    from convert.sample import fold_paths

    paths = fold_paths(root, fold, layout)
    return (
        np.load(paths["images"], mmap_mode="r"),
        np.load(paths["masks"], mmap_mode="r"),
        np.load(paths["types"]).tolist(),
    )


def part1_members(folders=("train", "valid", "test")):
    """{split folder: [(fold, index), ...] in (fold, index) order}: the reference split of part1 (seed 0, 0.8 0.15 0.05)."""
    from reference import SPLIT_NAMES, reference_split

    from convert.sample import fake_tissues

    members = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, 0, (0.8, 0.15, 0.05))
    return {folder: sorted(members[split]) for folder, split in zip(folders, SPLIT_NAMES)}


@pytest.fixture(scope="session")
def part1_patches(kaggle_part1):
    """{index: (image, semantic, instance, nuclei, tissue)} of every part1 patch, from tests/reference.py."""
    from reference import reference_image, reference_labels

    images, masks, tissues = raw_fold(kaggle_part1)
    return {
        index: (reference_image(images[index]), *reference_labels(np.asarray(masks[index])), tissues[index])
        for index in range(PART1_PATCHES)
    }
