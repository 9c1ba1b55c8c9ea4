"""python -m convert push / infos: the Hub repository layout, the card, dataset_infos.json, round trips."""

import collections
import json
import os
import re
import shutil
from types import SimpleNamespace
from typing import ClassVar

import datasets
import numpy as np
import pytest
from blocks import needs_consumer_tier, python_blocks, run_blocks
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard
from pannuke_fixtures import REPO_ID, raw_fold, real_types
from PIL import Image
from reference import PALETTE, palette_of, reference_labels, reference_split

import pannuke_imagemask as pim
from convert import infos as infos_module
from convert.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files if ".cache" not in d
    )


def _assert_same_rows(loaded, built):
    assert list(loaded) == list(built)
    for split in built:
        a, b = loaded[split], built[split]
        assert a.features == b.features
        assert a["id"] == b["id"]
        assert a["nuclei"] == b["nuclei"] and a["tissue"] == b["tissue"] and a["index"] == b["index"]
        for column in ("image", "semantic_mask", "instance_mask"):
            raw_a = a.cast_column(column, datasets.Image(decode=False))[column]
            raw_b = b.cast_column(column, datasets.Image(decode=False))[column]
            assert [x["bytes"] for x in raw_a] == [x["bytes"] for x in raw_b]
        for x, y in zip(a.select(range(min(3, a.num_rows))), b.select(range(min(3, b.num_rows)))):
            np.testing.assert_array_equal(np.array(x["instance_mask"]), np.array(y["instance_mask"]))


def test_local_dir_is_a_hub_repository_layout(local_repo):
    assert _files(local_repo) == [
        "README.md",
        "id2label.json",
        "part1/test-00000-of-00001.parquet",
        "part1/train-00000-of-00001.parquet",
        "part1/validation-00000-of-00001.parquet",
        "preview.png",
    ]


def test_local_dir_loads_with_load_dataset_like_build(local_repo, kaggle_part1, cache, tmp_path):
    loaded = datasets.load_dataset(str(local_repo), "part1", cache_dir=str(tmp_path / "load"))
    built = pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    _assert_same_rows(loaded, built)


def test_card_parses_and_documents_every_field(local_repo):
    card = DatasetCard.load(local_repo / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-sa-4.0"
    assert data["task_categories"] == ["image-segmentation"]
    assert {"histopathology", "nuclei", "medical"} <= set(data["tags"])
    assert data["configs"] == [
        {
            "config_name": "part1",
            "data_files": [
                {"split": "train", "path": "part1/train-*"},
                {"split": "validation", "path": "part1/validation-*"},
                {"split": "test", "path": "part1/test-*"},
            ],
            "default": True,
        }
    ]
    info = data["dataset_info"][0]
    assert info["config_name"] == "part1"
    assert [(s["name"], s["num_examples"]) for s in info["splits"]] == [("train", 19), ("validation", 4), ("test", 1)]
    assert datasets.Features._from_yaml_list(info["features"]) == pim.PanNukeImageMask().info.features
    text = card.text
    for field in pim.PanNukeImageMask().info.features:
        assert f"| `{field}` |" in text
    for value, name in enumerate(["background", "neoplastic", "inflammatory", "connective / soft tissue", "dead"]):
        assert f"| {value} |" in text and name in text
    assert ", ".join(pim.TISSUES) in text
    assert f'load_dataset("{REPO_ID}", "part1")' in text
    assert "@inproceedings{gamper2019pannuke," in text and "@article{gamper2020pannuke," in text
    assert "| 3 | fold3 | fold2 | fold1 |" in text
    assert "$" not in text.replace("$ ", "")  # every template placeholder was filled
    assert "| `part1` | train 19, validation 4, test 1 |" in text
    assert "FAKE" not in text


def test_id2label_json_holds_the_semantic_values(local_repo):
    assert json.loads((local_repo / "id2label.json").read_text()) == {
        "0": "background",
        "1": "neoplastic",
        "2": "inflammatory",
        "3": "connective",
        "4": "dead",
        "5": "epithelial",
    }


def test_preview_is_the_samples_montage_and_the_card_shows_it(local_repo):
    with Image.open(local_repo / "preview.png") as preview:
        assert preview.format == "PNG" and preview.size[0] > 256
    assert "![Samples: image, colour mask, overlay](preview.png)" in (local_repo / "README.md").read_text()


def test_semantic_mask_through_load_dataset_is_a_palette_of_class_indices(local_repo, kaggle_part1, tmp_path):
    loaded = datasets.load_dataset(str(local_repo), "part1", cache_dir=str(tmp_path / "load"))
    _, masks, _ = raw_fold(kaggle_part1)
    for split in loaded.values():
        for example in split:
            assert example["semantic_mask"].mode == "P" and palette_of(example["semantic_mask"]) == PALETTE
            expected = reference_labels(np.asarray(masks[example["index"]]))[0]
            np.testing.assert_array_equal(np.asarray(example["semantic_mask"]), expected)
    as_numpy = loaded["train"].with_format("numpy")[0]["semantic_mask"]
    np.testing.assert_array_equal(as_numpy, reference_labels(np.asarray(masks[loaded["train"][0]["index"]]))[0])


def _table_rows(text, heading):
    """{first cell: [other cells]} of the markdown table right after a line starting with heading."""
    lines = text.split("\n")
    start = next(k for k, line in enumerate(lines) if line.startswith(heading)) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_card_statistics_are_counted_from_the_pushed_data(local_repo, kaggle_part1):
    text = (local_repo / "README.md").read_text()
    _, masks, tissues = raw_fold(kaggle_part1)
    members = reference_split({1: tissues}, 0, (0.8, 0.15, 0.05))
    splits = ["train", "validation", "test"]
    nuclei = {s: collections.Counter() for s in splits}
    empty = collections.Counter()
    for split in splits:
        for _, index in members[split]:
            found = reference_labels(np.asarray(masks[index]))[2]
            nuclei[split].update(n["label"] for n in found)
            empty[split] += not found
    classes = _table_rows(text, "Config `part1`, nuclei per class")
    assert classes[""] == ["`train`", "`validation`", "`test`"]
    for label, name in enumerate(["neoplastic", "inflammatory", "connective", "dead", "epithelial"]):
        assert classes[name] == [f"{nuclei[s][label]:,}" for s in splits]
    assert classes["**all nuclei**"] == [f"{sum(nuclei[s].values()):,}" for s in splits]
    sizes = {s: len(members[s]) for s in splits}
    assert classes["patches without nuclei"] == [
        f"{empty[s]:,} of {sizes[s]:,} ({100 * empty[s] / sizes[s]:.1f}%)" for s in splits
    ]
    assert sum(empty.values()) == 2  # the void and the empty fake patch
    per_tissue = _table_rows(text, "Config `part1`, patches per tissue")
    for tissue in pim.TISSUES:
        assert per_tissue[tissue] == [str(sum(tissues[i] == tissue for _, i in members[s])) for s in splits]
    assert "about 0.25 µm per pixel" in text and "40×" in text
    assert "never with `.convert(...)`" in text


def test_every_lean_code_block_of_the_card_runs_against_the_local_repository(local_repo, tmp_path):
    blocks = python_blocks((local_repo / "README.md").read_text())
    assert len(blocks) == 3  # load it; transformers; DataLoader
    assert 'rename_column("semantic_mask", "label")' in blocks[1] and "collate_fn=collate" in blocks[2]
    # The transformers and DataLoader blocks import torch: the consumer tier runs them.
    assert [needs_consumer_tier(b) for b in blocks] == [False, True, True]  # consumer_tests/test_card.py
    run_blocks([b for b in blocks if not needs_consumer_tier(b)], {REPO_ID: str(local_repo)}, tmp_path)


def test_a_pushed_sample_says_it_is_fake(tmp_path):
    out = tmp_path / "repo"
    cache = str(tmp_path / "cache")
    assert (
        main(["push", "--repo-id", REPO_ID, "--sample", "--local-dir", str(out), "--cache-dir", cache, "--quiet"]) == 0
    )
    card = DatasetCard.load(out / "README.md")
    assert card.text.lstrip().startswith(
        "# PanNuke: images, semantic masks, instance masks and nuclei\n\n> **This repository"
    )
    assert "FAKE sample" in card.text
    assert card.data.to_dict()["size_categories"] == ["n<1K"] and "synthetic" in card.data.to_dict()["tags"]


def test_local_dir_without_repo_id_names_a_placeholder_and_says_to_replace_it(
    local_repo, kaggle_part1, cache, tmp_path
):
    out = tmp_path / "repo"
    assert main(["push", "--data-dir", kaggle_part1, "--local-dir", str(out), "--cache-dir", cache, "--quiet"]) == 0
    assert _files(out) == _files(local_repo)
    text = (out / "README.md").read_text()
    note = (
        "`OWNER/NAME` in the code of this card stands for the repository's id: replace it with your repository's "
        "id (for example `your-name/pannuke-imagemask`) when you upload this folder to the Hub."
    )
    assert text.count(note) == 1
    assert "## Load it\n\n" + note + "\n\n```python\n" in text
    assert [block.count("OWNER/NAME") for block in python_blocks(text)] == [1, 2, 1]
    # Otherwise the card with a repository id, the id replaced by the placeholder.
    named = (local_repo / "README.md").read_text().replace(REPO_ID, "OWNER/NAME")
    assert text.replace(note + "\n\n", "") == named


def test_push_without_repo_id_or_local_dir_is_a_usage_error(kaggle_part1, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "--data-dir", kaggle_part1, "--cache-dir", str(tmp_path / "cache")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "pannuke-imagemask push: error: --repo-id is required to push to the Hub "
        "(or pass --local-dir to write the repository folder)"
    )
    assert not (tmp_path / "cache").exists()


def test_all_configs_to_local_dir(three_folds, cache, tmp_path):
    out = tmp_path / "repo"
    argv = ["push", "--repo-id", REPO_ID, "--data-dir", three_folds, "--all-configs", "--local-dir", str(out)]
    assert main([*argv, "--cache-dir", cache, "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["README.md", "all", "folds", "id2label.json", "part1", "preview.png"]
    assert sorted(os.listdir(out / "folds")) == [
        "fold1-00000-of-00001.parquet",
        "fold2-00000-of-00001.parquet",
        "fold3-00000-of-00001.parquet",
    ]
    data = DatasetCard.load(out / "README.md").data.to_dict()
    assert [c["config_name"] for c in data["configs"]] == ["part1", "all", "folds"]
    assert [c.get("default", False) for c in data["configs"]] == [True, False, False]
    loaded = datasets.load_dataset(str(out), "folds", cache_dir=str(tmp_path / "load"))
    _assert_same_rows(loaded, pim.build("folds", data_dir=three_folds, cache_dir=cache))
    # Nothing from the project's code goes to the Hub: datasets >= 4 refuses a repo with a script.
    assert not [f for f in _files(out) if f.endswith(".py")]


def test_small_max_shard_size_cuts_shards_like_push_to_hub(kaggle_part1, cache, tmp_path):
    out = tmp_path / "repo"
    argv = [
        "push",
        "--repo-id",
        REPO_ID,
        "--data-dir",
        kaggle_part1,
        "--local-dir",
        str(out),
        "--max-shard-size",
        "1MB",
    ]
    assert main([*argv, "--cache-dir", cache, "--quiet"]) == 0
    train = sorted(f for f in os.listdir(out / "part1") if f.startswith("train-"))
    built = pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    expected = int(built["train"].data.nbytes / 1_000_000) + 1
    assert expected > 1
    assert train == [f"train-{i:05d}-of-{expected:05d}.parquet" for i in range(expected)]
    loaded = datasets.load_dataset(str(out), "part1", cache_dir=str(tmp_path / "load"))
    assert loaded["train"]["id"] == built["train"]["id"]


def test_local_dir_is_not_overwritten_without_force(local_repo, kaggle_part1, cache, capsys):
    before = {f: (local_repo / f).read_bytes() for f in _files(local_repo)}
    argv = ["push", "--repo-id", REPO_ID, "--data-dir", kaggle_part1, "--local-dir", str(local_repo)]
    assert main([*argv, "--cache-dir", cache]) == 1
    assert capsys.readouterr().err == (
        f"pannuke-imagemask push: error: {local_repo} exists and is not empty; pass --force to update it\n"
    )
    assert {f: (local_repo / f).read_bytes() for f in _files(local_repo)} == before


def test_missing_token_fails_in_one_line_before_building(tmp_path, monkeypatch, capsys, kaggle_part1):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr("convert.push.get_token", lambda: None)
    cache = tmp_path / "cache"
    assert main(["push", "--repo-id", REPO_ID, "--data-dir", kaggle_part1, "--cache-dir", str(cache)]) == 1
    assert capsys.readouterr().err == (
        "pannuke-imagemask push: error: no Hugging Face token: set HF_TOKEN or run `hf auth login`, or use --local-dir\n"
    )
    assert not cache.exists()


# --- the real push_to_hub code path, against a folder ----------------------------------------------


class FolderHubApi:
    """A stand-in for huggingface_hub.HfApi that applies each commit to a local folder laid out as the repo.

    It implements only the calls DatasetDict.push_to_hub and `convert push` make. The repository
    revision is a counter of commits, so push_to_hub's parent_commit checks see a real history.
    """

    root = None
    commits: ClassVar[list] = []
    staged: ClassVar[dict] = {}

    def __init__(self, *args, **kwargs):
        pass

    @classmethod
    def revision(cls):
        return f"{len(cls.commits):040d}"

    def repo_info(self, repo_id, repo_type=None, revision=None, **kwargs):
        return SimpleNamespace(id=repo_id, sha=self.revision())

    def create_repo(self, repo_id, **kwargs):
        os.makedirs(self.root, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def preupload_lfs_files(self, repo_id, additions, **kwargs):
        # The Hub receives LFS content here; push_to_hub deletes its temporary files right after.
        staging = os.path.join(os.path.dirname(self.root), "lfs-staging")
        os.makedirs(staging, exist_ok=True)
        for addition in additions:
            staged = os.path.join(staging, addition.path_in_repo.replace("/", "__"))
            shutil.copyfile(addition.path_or_fileobj, staged)
            FolderHubApi.staged[addition.path_in_repo] = staged

    def create_commit(self, repo_id, operations, commit_message=None, parent_commit=None, **kwargs):
        assert parent_commit in (None, self.revision())
        for op in operations:
            target = os.path.join(self.root, op.path_in_repo)
            if isinstance(op, CommitOperationAdd):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                source = FolderHubApi.staged.pop(op.path_in_repo, op.path_or_fileobj)
                if isinstance(source, bytes):
                    with open(target, "wb") as f:
                        f.write(source)
                else:
                    shutil.copyfile(source, target)
            elif isinstance(op, CommitOperationDelete):
                os.remove(target)
        FolderHubApi.commits.append((commit_message, [op.path_in_repo for op in operations]))
        return SimpleNamespace(oid=self.revision(), commit_url="folder://" + self.root)

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, commit_message=None, **kwargs):
        return self.create_commit(repo_id, [CommitOperationAdd(path_in_repo, path_or_fileobj)], commit_message)

    def hf_hub_download(self, repo_id, filename, **kwargs):
        path = os.path.join(self.root, filename)
        if not os.path.exists(path):
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} not in the folder repo")
        return path


def folder_hub_file_system(root, repo_id):
    """A stand-in for HfFileSystem: 'datasets/<repo_id>@<revision>/...' paths resolve into the folder."""
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    class FolderHubFileSystem(DirFileSystem):
        def __init__(self, *args, **kwargs):
            links = os.path.join(os.path.dirname(root), "resolved", "datasets", os.path.dirname(repo_id))
            os.makedirs(links, exist_ok=True)
            link = os.path.join(links, f"{os.path.basename(repo_id)}@{FolderHubApi.revision()}")
            if not os.path.lexists(link):
                os.symlink(root, link)
            super().__init__(path=os.path.join(os.path.dirname(root), "resolved"), fs=LocalFileSystem())

    return FolderHubFileSystem


def test_push_to_hub_code_path_writes_the_same_repository(local_repo, kaggle_part1, cache, tmp_path, monkeypatch):
    hub_root = str(tmp_path / "hub" / "repo")
    monkeypatch.setattr(FolderHubApi, "root", hub_root)
    monkeypatch.setattr(FolderHubApi, "commits", [])
    monkeypatch.setattr(FolderHubApi, "staged", {})
    for module in ("datasets.dataset_dict", "datasets.arrow_dataset", "convert.push"):
        monkeypatch.setattr(f"{module}.HfApi", FolderHubApi)
    monkeypatch.setattr("datasets.dataset_dict.HfFileSystem", folder_hub_file_system(hub_root, REPO_ID))
    monkeypatch.setattr("convert.push.get_token", lambda: "hf_test_token_not_real")

    argv = ["push", "--repo-id", REPO_ID, "--data-dir", kaggle_part1, "--cache-dir", cache, "--private", "--quiet"]
    assert main(argv) == 0
    assert _files(hub_root) == _files(local_repo)
    assert [message for message, _ in FolderHubApi.commits] == [
        "Upload config part1 (pannuke-imagemask 1.2.0)",
        "Dataset card, id2label.json and preview.png (pannuke-imagemask 1.2.0)",
    ]
    hub_card = DatasetCard.load(os.path.join(hub_root, "README.md")).data.to_dict()
    local_card = DatasetCard.load(local_repo / "README.md").data.to_dict()
    assert hub_card["configs"] == local_card["configs"]
    assert [s["num_examples"] for s in hub_card["dataset_info"][0]["splits"]] == [19, 4, 1]
    loaded = datasets.load_dataset(hub_root, "part1", cache_dir=str(tmp_path / "load"))
    _assert_same_rows(loaded, pim.build("part1", data_dir=kaggle_part1, cache_dir=cache))


@pytest.mark.skipif(
    not (os.environ.get("HF_TOKEN") and os.environ.get("PANNUKE_TEST_REAL_HUB") == "1"),
    reason="talks to the real Hub: set HF_TOKEN and PANNUKE_TEST_REAL_HUB=1 (and PANNUKE_TEST_REPO=owner/name)",
)
def test_real_hub_round_trip(tmp_path):  # pragma: no cover - opt-in, needs network and a token
    from huggingface_hub import HfApi

    repo_id = os.environ.get("PANNUKE_TEST_REPO", f"{HfApi().whoami()['name']}/pannuke-imagemask-test")
    cache = str(tmp_path / "cache")
    try:
        assert main(["push", "--repo-id", repo_id, "--sample", "--private", "--cache-dir", cache, "--quiet"]) == 0
        loaded = datasets.load_dataset(repo_id, "part1", cache_dir=str(tmp_path / "load"))
        from convert.common import sample_dir

        _assert_same_rows(loaded, pim.build("part1", data_dir=sample_dir((1,), cache), cache_dir=cache))
    finally:
        HfApi().delete_repo(repo_id, repo_type="dataset", missing_ok=True)


# --- dataset_infos.json ---------------------------------------------------------------------------


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


def test_check_data_dir_compares_a_users_split_with_the_recorded_one(kaggle_part1, capsys):
    out = os.path.join(ROOT, "dataset_infos.json")
    assert main(["infos", "--check-data-dir", kaggle_part1, "--out", out]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "part1: DIFFERENT {'train': 19, 'validation': 4, 'test': 1}, expected {'train': 2125, 'validation': 398, 'test': 133}",
        "all: skipped (needs folds 1, 2, 3)",
        "folds: skipped (needs folds 1, 2, 3)",
    ]


def test_local_dir_without_room_is_refused_before_writing(kaggle_part1, cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "repo"
    monkeypatch.setattr(
        "convert.common.shutil.disk_usage", lambda path: SimpleNamespace(total=10**9, used=0, free=1000)
    )
    argv = ["push", "--repo-id", REPO_ID, "--data-dir", kaggle_part1, "--local-dir", str(out), "--cache-dir", cache]
    assert main([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf"pannuke-imagemask push: error: {re.escape(str(out))}: not enough free space: needs about [0-9.]+ MB, "
        r"1.0 KB available\n",
        err,
    ), err
    assert sorted(os.listdir(tmp_path)) == []
