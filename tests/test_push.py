"""python -m convert push: the Hub repository folder, its card, and its commit to a stand-in of the Hub."""

import collections
import filecmp
import fnmatch
import inspect
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
from blocks import needs_consumer_tier, python_blocks, run_blocks
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi
from pannuke_fixtures import HUB_REPO_ID as REPO_ID
from pannuke_fixtures import raw_fold
from PIL import Image
from reference import PALETTE, palette_of, reference_labels, reference_split

import pannuke_imagemask as pim
from convert import __version__
from convert.__main__ import main


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


def test_configs_are_chosen_with_config_only(kaggle_part1, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "--data-dir", kaggle_part1, "--local-dir", str(tmp_path / "repo"), "--all-configs"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == "pannuke-imagemask push: error: unrecognized arguments: --all-configs"
    )


def _assert_card_data_files_are_the_shards(folder):
    """Each data_files pattern of the card matches shards of its split only, and every shard is matched once."""
    shards = [f for f in _files(folder) if f.endswith(".parquet")]
    matched = []
    for config in DatasetCard.load(os.path.join(folder, "README.md")).data.to_dict()["configs"]:
        for entry in config["data_files"]:
            found = [f for f in shards if fnmatch.fnmatchcase(f, entry["path"])]
            assert found and all(
                re.fullmatch(rf"{entry['split']}-\d{{5}}-of-\d{{5}}\.parquet", f.split("/")[1]) for f in found
            )
            matched += found
    assert sorted(matched) == shards


def test_every_config_to_local_dir(three_folds, cache, tmp_path):
    out = tmp_path / "repo"
    configs = ["--config", "part1", "all", "--config", "folds"]  # one --config or several
    argv = ["push", "--repo-id", REPO_ID, "--data-dir", three_folds, *configs, "--local-dir", str(out)]
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
    _assert_card_data_files_are_the_shards(out)
    loaded = datasets.load_dataset(str(out), "folds", cache_dir=str(tmp_path / "load"))
    _assert_same_rows(loaded, pim.build("folds", data_dir=three_folds, cache_dir=cache))
    # Nothing from the project's code goes to the Hub: datasets >= 4 refuses a repo with a script.
    assert not [f for f in _files(out) if f.endswith(".py")]


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


# --- the Hub: a stand-in for the public HfApi calls push makes ---------------------------------------

TOKEN = "hf_test_token_not_real"


class FolderHub:
    """huggingface_hub.HfApi as `convert push` calls it, on a local folder laid out as the Hub repository.

    It receives only the public calls push makes (create_repo, repo_info, list_repo_files, hf_hub_download,
    create_commit), each checked against HfApi's own signature. As on the Hub: a new repository holds
    .gitattributes, each commit makes a revision, a commit whose parent is not the head is refused, a commit
    applies all its operations or none, and deleting a file the repository does not hold is an error.
    """

    def __init__(self, root, downloads):
        self.root, self.downloads = str(root), str(downloads)
        self.commits = []  # (message, [("add" | "delete", path), ...])
        self.private = None

    def __call__(self, token=None, **kwargs):  # convert.push calls HfApi(token=...)
        assert token == TOKEN
        return self

    @staticmethod
    def _check(name, *args, **kwargs):
        inspect.signature(getattr(HfApi, name)).bind(None, *args, **kwargs)  # a TypeError if HfApi takes no such call
        assert kwargs.get("repo_type") == "dataset"

    @property
    def head(self):
        return f"{len(self.commits):040x}"

    def create_repo(self, repo_id, **kwargs):
        self._check("create_repo", repo_id, **kwargs)
        if os.path.isdir(self.root):
            assert kwargs.get("exist_ok")
            return
        os.makedirs(self.root)
        (Path(self.root) / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
        self.private = bool(kwargs.get("private"))
        self.commits.append(("initial commit", [("add", ".gitattributes")]))

    def repo_info(self, repo_id, **kwargs):
        self._check("repo_info", repo_id, **kwargs)
        return SimpleNamespace(id=repo_id, sha=self.head, private=self.private)

    def list_repo_files(self, repo_id, **kwargs):
        self._check("list_repo_files", repo_id, **kwargs)
        assert kwargs.get("revision") == self.head
        return _files(self.root)

    def hf_hub_download(self, repo_id, filename, **kwargs):
        self._check("hf_hub_download", repo_id, filename, **kwargs)
        assert kwargs.get("revision") == self.head
        copy = os.path.join(self.downloads, kwargs["revision"], filename)  # a cached copy, as the client gives
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        shutil.copyfile(os.path.join(self.root, filename), copy)
        return copy

    def create_commit(self, repo_id, operations, **kwargs):
        self._check("create_commit", repo_id, operations, **kwargs)
        if kwargs.get("parent_commit") not in (None, self.head):
            raise ValueError(f"parent commit {kwargs['parent_commit']} is not the head {self.head}")
        done = []
        for op in operations:  # checked first: nothing is applied unless everything can be
            if isinstance(op, CommitOperationAdd):
                assert isinstance(op.path_or_fileobj, str) and os.path.isfile(op.path_or_fileobj)
                done.append(("add", op.path_in_repo))
            else:
                assert isinstance(op, CommitOperationDelete)
                if not os.path.isfile(os.path.join(self.root, op.path_in_repo)):
                    raise FileNotFoundError(f"{op.path_in_repo}: not in the repository")
                done.append(("delete", op.path_in_repo))
        for op in operations:
            target = os.path.join(self.root, op.path_in_repo)
            if isinstance(op, CommitOperationAdd):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(op.path_or_fileobj, target)
            else:
                os.remove(target)
                if not os.listdir(os.path.dirname(target)):  # git has no empty folders
                    os.rmdir(os.path.dirname(target))
        self.commits.append((kwargs["commit_message"], done))
        return SimpleNamespace(oid=self.head, commit_url=f"file://{self.root}")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A FolderHub at tmp_path/hub that convert.push talks to, with a token."""
    folder_hub = FolderHub(tmp_path / "hub", tmp_path / "hub-downloads")
    monkeypatch.setattr("convert.push.HfApi", folder_hub)
    monkeypatch.setattr("convert.push.get_token", lambda: TOKEN)
    return folder_hub


def _hub_push(cache, data_dir, *extra):
    return main(["push", "--repo-id", REPO_ID, "--data-dir", data_dir, "--cache-dir", cache, "--quiet", *extra])


def _same_trees(hub_root, local):
    """The files of the Hub repository, which must be those of the local folder with the same bytes.

    Only the .gitattributes the Hub adds to every repository is the Hub's own.
    """
    names = [name for name in _files(hub_root) if name != ".gitattributes"]
    assert names == _files(local)
    differ = [n for n in names if not filecmp.cmp(os.path.join(hub_root, n), os.path.join(local, n), shallow=False)]
    assert differ == []
    return names


def test_push_commits_exactly_the_local_dir_folder(hub, local_repo, kaggle_part1, cache, tmp_path):
    assert _hub_push(cache, kaggle_part1, "--private") == 0
    names = _same_trees(hub.root, local_repo)  # byte for byte, the card too
    assert hub.commits == [
        ("initial commit", [("add", ".gitattributes")]),
        (f"Upload part1 (pannuke-imagemask {__version__})", [("add", name) for name in names]),
    ]
    assert hub.private is True
    loaded = datasets.load_dataset(hub.root, "part1", cache_dir=str(tmp_path / "load"))
    _assert_same_rows(loaded, pim.build("part1", data_dir=kaggle_part1, cache_dir=cache))


def _shards(dataset_dict, config, max_bytes):
    """The shard files push_to_hub's rule gives: Arrow bytes / max shard size, plus one, per split."""
    names = []
    for split, dataset in dataset_dict.items():
        count = int(dataset.data.nbytes / max_bytes) + 1
        names += [f"{config}/{split}-{k:05d}-of-{count:05d}.parquet" for k in range(count)]
    return names


def test_pushing_a_config_keeps_the_other_configs_files_and_deletes_its_stale_shards(hub, three_folds, cache, tmp_path):
    local = tmp_path / "local"
    trees = []
    for step in (["--config", "folds", "part1", "--max-shard-size", "1MB"], ["--config", "part1"]):
        assert _hub_push(cache, three_folds, *step) == 0  # each to the Hub and to --local-dir:
        assert _hub_push(cache, three_folds, *step, "--local-dir", str(local), "--force") == 0
        trees.append(_same_trees(hub.root, local))  # the same files, byte for byte
    built = {config: pim.build(config, data_dir=three_folds, cache_dir=cache) for config in ("folds", "part1")}
    folds, cut = _shards(built["folds"], "folds", 10**6), _shards(built["part1"], "part1", 10**6)
    part1 = _shards(built["part1"], "part1", 500 * 10**6)
    assert len(folds) > 3 and len(cut) > 3 and len(part1) == 3
    top = ["README.md", "id2label.json", "preview.png"]
    assert trees == [sorted([*top, *folds, *cut]), sorted([*top, *folds, *part1])]
    # The part1 push touched no file of folds, and deleted the part1 shards that it no longer writes.
    assert [op for op in hub.commits[2][1] if op[1].startswith("folds/")] == []
    assert [op for op in hub.commits[2][1] if op[0] == "delete"] == [
        ("delete", p) for p in sorted(set(cut) - set(part1))
    ]
    assert os.path.isfile(os.path.join(hub.root, ".gitattributes"))
    card = DatasetCard.load(os.path.join(hub.root, "README.md")).data.to_dict()
    assert [(c["config_name"], c.get("default", False)) for c in card["configs"]] == [("part1", True), ("folds", False)]
    _assert_card_data_files_are_the_shards(hub.root)
    loaded = datasets.load_dataset(hub.root, "folds", cache_dir=str(tmp_path / "load"))  # kept, in several shards
    _assert_same_rows(loaded, built["folds"])


def test_a_hub_push_without_room_to_stage_touches_nothing(hub, kaggle_part1, cache, monkeypatch, capsys):
    monkeypatch.setattr(
        "convert.common.shutil.disk_usage", lambda path: SimpleNamespace(total=10**9, used=0, free=1000)
    )
    assert _hub_push(cache, kaggle_part1) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf"pannuke-imagemask push: error: {re.escape(tempfile.gettempdir())}/pannuke-imagemask-push\.\w+: not enough "
        r"free space: needs about [0-9.]+ MB, 1.0 KB available; push stages the repository folder there first: set "
        r"TMPDIR to a folder with room\n",
        err,
    ), err
    assert hub.commits == [] and not os.path.exists(hub.root)


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
