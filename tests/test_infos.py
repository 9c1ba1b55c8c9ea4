"""python -m convert infos: dataset_infos.json, the official split sizes, a user's folds compared with them."""

import collections
import json
import os

import datasets
from pannuke_fixtures import real_types

import pannuke_imagemask as pim
from convert import infos as infos_module
from convert.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dataset_infos_json_is_up_to_date():
    assert main(["infos", "--check", "--out", os.path.join(ROOT, "dataset_infos.json")]) == 0


def test_dataset_infos_json_holds_the_official_split_sizes():
    with open(os.path.join(ROOT, "dataset_infos.json")) as f:
        recorded = json.load(f)
    sizes = {name: {s: v["num_examples"] for s, v in info["splits"].items()} for name, info in recorded.items()}
    assert sizes == {
        "part1": {"train": 2125, "validation": 398, "test": 133},
        "all": {"train": 6322, "validation": 1186, "test": 393},
        "folds": {"fold1": 2656, "fold2": 2523, "fold3": 2722},
    }
    for name, info in recorded.items():
        assert datasets.Features.from_dict(info["features"]) == pim.PanNukeImageMask().info.features
        assert info["config_name"] == name and info["version"]["version_str"] == "1.1.0"
        assert info["license"] == "CC BY-NC-SA 4.0"
    assert recorded["part1"]["download_checksums"] == {
        "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke/fold_1.zip": {
            "num_bytes": 700275281,
            "checksum": "6e19ad380300e8ce9480f9ab6a14cc91fa4b6a511609b40e3d70bdf9c881ed0b",
        }
    }


def test_official_tissue_table_matches_the_real_tissue_lists():
    for fold in (1, 3):
        counts = collections.Counter(real_types(fold))
        assert counts == collections.Counter(infos_module.official_tissues(fold))
    assert {f: len(infos_module.official_tissues(f)) for f in (1, 2, 3)} == pim.FOLD_SIZES


def test_real_fold1_gives_the_recorded_part1_sizes():
    config = pim.PanNukeImageMask.BUILDER_CONFIGS[0]
    assert infos_module.split_sizes_for(config, {1: real_types(1)}) == {"train": 2125, "validation": 398, "test": 133}


CHECK_DATA_DIR_LINES = [
    "part1: DIFFERENT {'train': 19, 'validation': 4, 'test': 1}, expected {'train': 2125, 'validation': 398, 'test': 133}",
    "all: skipped (needs folds 1, 2, 3)",
    "folds: skipped (needs folds 1, 2, 3)",
]


def test_check_data_dir_compares_a_users_split_with_the_recorded_one(kaggle_part1, capsys):
    out = os.path.join(ROOT, "dataset_infos.json")
    assert main(["infos", "--check-data-dir", kaggle_part1, "--out", out]) == 1
    assert capsys.readouterr().out.splitlines() == CHECK_DATA_DIR_LINES


def test_check_data_dir_without_out_compares_with_the_official_sizes(kaggle_part1, tmp_path, capsys):
    # An installed copy has no dataset_infos.json: the official sizes are computed, the same as recorded.
    assert main(["infos", "--check-data-dir", kaggle_part1]) == 1
    assert capsys.readouterr().out.splitlines() == CHECK_DATA_DIR_LINES
    recorded = tmp_path / "infos.json"  # --out, when given, is what the folds are compared with
    fake_sizes = {"train": {"num_examples": 19}, "validation": {"num_examples": 4}, "test": {"num_examples": 1}}
    recorded.write_text(json.dumps({"part1": {"splits": fake_sizes}}))
    assert main(["infos", "--check-data-dir", kaggle_part1, "--out", str(recorded)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "part1: OK {'train': 19, 'validation': 4, 'test': 1}"


def test_a_checkout_writes_its_own_dataset_infos_json_and_an_installed_copy_needs_out(tmp_path):
    checkout, site = tmp_path / "checkout", tmp_path / "site-packages"
    for root in (checkout, site):
        (root / "pkg").mkdir(parents=True)
        (root / "pannuke_imagemask.py").write_text("")
    (checkout / "pyproject.toml").write_text("")
    assert infos_module.checkout_infos_path(str(checkout / "pkg")) == str(checkout / "dataset_infos.json")
    assert infos_module.checkout_infos_path(str(site / "pkg")) is None  # site-packages: no pyproject.toml
    assert infos_module.checkout_infos_path() == os.path.join(ROOT, "dataset_infos.json")  # this checkout
    # The installed console script refusing to write into site-packages: tests/test_packaging.py.


def test_out_writes_there(tmp_path):
    out = tmp_path / "infos.json"
    assert main(["infos", "--out", str(out), "--quiet"]) == 0
    with open(os.path.join(ROOT, "dataset_infos.json")) as f:
        assert out.read_text() == f.read()
