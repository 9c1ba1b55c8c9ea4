"""python -m convert export and verify as commands: export.json, refusal, --force, Ctrl-C, the sample, space."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
from pannuke_fixtures import PART1_PATCHES, part1_members, run_export
from PIL import Image
from reference import reference_mask, reference_split

import pannuke_imagemask as pim
from convert import __version__, common
from convert import files as files_module
from convert.__main__ import main
from convert.formats import undecoded
from convert.sample import SAMPLE_PATCHES, fake_tissues, write_fold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASS_NAMES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]


def _expected_splits(seed=0, ratios=(0.8, 0.15, 0.05)):
    members = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, seed, ratios)
    return {"train": members["train"], "valid": members["validation"], "test": members["test"]}


def _export(out, data_dir, cache, *extra):
    return run_export(out, data_dir, cache, *extra)


def _tree_digest(root):
    digest = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def _expected_mask(style, raw_mask):
    return reference_mask(style, np.asarray(raw_mask))


@pytest.fixture(scope="session")
def color_tree(export_tree):
    return export_tree("imagemask")  # the defaults: colour masks, PNG images, 256 pixels


def test_export_json_records_every_option(color_tree, kaggle_part1):
    manifest = json.loads((color_tree / "export.json").read_text())
    created = manifest.pop("created")
    assert created.endswith("+00:00")
    assert manifest == {
        "tool": "pannuke-imagemask",
        "version": __version__,
        "builder_version": "1.1.0",
        "format": "imagemask",
        "source": {"data_dir": os.path.abspath(kaggle_part1), "sample": False},
        "config": "part1",
        "split_seed": 0,
        "split_ratios": [0.8, 0.15, 0.05],
        "mask_style": "color",
        "image_format": "png",
        "size": 256,
        "jpeg_quality": None,
        "num_proc": 1,
        "splits": {"train": 19, "valid": 4, "test": 1},
    }


def test_pictures_are_png(color_tree):
    for name in ("statistics.png", "samples.png"):
        with Image.open(color_tree / name) as picture:
            assert picture.format == "PNG" and picture.size[0] >= 600


def test_existing_output_is_refused_without_force_and_left_unchanged(color_tree, kaggle_part1, cache, capsys):
    before = _tree_digest(color_tree)
    assert _export(color_tree, kaggle_part1, cache, "--mask-style", "binary") == 1
    err = capsys.readouterr().err
    assert err == f"pannuke-imagemask export: error: {color_tree} exists and is not empty; pass --force to replace it\n"
    assert _tree_digest(color_tree) == before


def test_force_replaces_the_tree_and_leaves_no_temporary_folder(kaggle_part1, cache, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    assert _export(out, kaggle_part1, cache, "--mask-style", "binary", "--force") == 0
    assert not (out / "old.txt").exists()
    assert json.loads((out / "export.json").read_text())["mask_style"] == "binary"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_interrupted_force_export_keeps_the_previous_tree(tmp_path):
    # A fold large enough that the export is still writing when the signal arrives.
    data = tmp_path / "data"
    write_fold(str(data), 1, 160, "kaggle")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the previous tree")
    before = _tree_digest(out)
    env = dict(os.environ, PYTHONPATH=ROOT, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    command = [sys.executable, "-m", "convert", "export", "--out", str(out), "--data-dir", str(data)]
    command += ["--cache-dir", str(tmp_path / "cache"), "--force", "--quiet"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    written = []
    while time.monotonic() < deadline and process.poll() is None and len(written) < 5:
        temporary = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
        written = [f for t in temporary for f in (t / "train" / "images").glob("*.png")] if temporary else []
        time.sleep(0.01)
    assert process.poll() is None, "the export finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "pannuke-imagemask export: interrupted; no partial output was left"
    assert _tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "out"]


def test_sample_runs_with_no_data(tmp_path, caplog):
    out = tmp_path / "sample"
    assert main(["export", "--sample", "--out", str(out), "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["source"] == {"data_dir": None, "sample": True}
    assert sum(manifest["splits"].values()) == SAMPLE_PATCHES
    assert sum(len(os.listdir(out / s / "images")) for s in ("train", "valid", "test")) == SAMPLE_PATCHES
    assert "using the built-in sample: FAKE patches, not PanNuke data" in caplog.messages
    assert main(["verify", str(out), "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 0


def _bad_fold(tmp_path):
    data = tmp_path / "bad"
    paths = write_fold(str(data), 1, 4, "kaggle")
    images = np.lib.format.open_memmap(paths["images"], mode="r+")
    images[2, 5, 5, 0] = 256.0
    images.flush()
    return data, paths


def test_bad_data_dir_gives_one_line_and_no_output(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "nowhere"
    assert main(["export", "--out", str(out), "--data-dir", str(missing), "--cache-dir", str(tmp_path / "c")]) == 1
    assert capsys.readouterr().err == f"pannuke-imagemask export: error: {missing}: no such folder (--data-dir)\n"

    data, paths = _bad_fold(tmp_path)
    assert (
        main(["export", "--out", str(out), "--data-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 1
    )
    err = capsys.readouterr().err
    assert err == (
        f"pannuke-imagemask export: error: {paths['images']}: patch 2: image values outside 0..255 (min 0, max 256)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "c"]  # no output, no temporary folder


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["export", "--out", str(tmp_path / "o"), "--mask-style", "jpeg"])
    assert caught.value.code == 2
    assert "invalid choice: 'jpeg'" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err == (
        "pannuke-imagemask: error: unknown command 'frobnicate'; valid: export, verify, push, evaluate, infos\n"
    )


def test_help_documents_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["export", "--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--out", "--data-dir", "--sample", "--config", "--split-seed", "--split-ratios", "--mask-style"):
        assert option in text
    for option in ("--image-format", "--size", "--num-proc", "--cache-dir", "--force", "--quiet"):
        assert option in text
    for default in ("(default: part1)", "(default: 0)", "(default: color)", "(default: png)", "(default: 256)"):
        assert default in text
    assert "(default: 0.8 0.15 0.05)" in text and "(default: 1)" in text


def test_split_seed_and_ratios_reach_the_tree(kaggle_part1, cache, tmp_path):
    out = tmp_path / "seeded"
    assert _export(out, kaggle_part1, cache, "--split-seed", "7", "--split-ratios", "0.5", "0.25", "0.25") == 0
    for split, members in _expected_splits(7, (0.5, 0.25, 0.25)).items():
        assert sorted(os.listdir(out / split / "masks")) == sorted(f"fold1_{i:05d}.png" for _, i in members)
    manifest = json.loads((out / "export.json").read_text())
    assert (manifest["split_seed"], manifest["split_ratios"]) == (7, [0.5, 0.25, 0.25])
    assert main(["verify", str(out), "--cache-dir", cache, "--quiet"]) == 0


def test_verify_refuses_a_folder_that_is_not_an_export(tmp_path, capsys):
    assert main(["verify", str(tmp_path), "--cache-dir", str(tmp_path / "c")]) == 1
    manifest = tmp_path / "export.json"
    assert capsys.readouterr().err == (
        f"pannuke-imagemask verify: error: {manifest}: not found; is {tmp_path} a tree written by export?\n"
    )
    manifest.write_text('{"config": "part1"}')
    assert main(["verify", str(tmp_path), "--cache-dir", str(tmp_path / "c")]) == 1
    assert capsys.readouterr().err == (
        f"pannuke-imagemask verify: error: {manifest}: missing source, split_seed, split_ratios, mask_style, "
        f"image_format, size; is {tmp_path} a tree written by export?\n"
    )


@pytest.fixture
def previous_tree(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the previous tree")
    return out, _tree_digest(out)


def test_too_little_free_space_is_refused_before_writing(previous_tree, kaggle_part1, cache, monkeypatch, capsys):
    out, before = previous_tree
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(common.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    assert _export(out, kaggle_part1, cache, "--mask-style", "instance", "--force") == 1
    # Every file's size is known: the builder's image and instance PNGs (copied as they are), each in
    # whole 4 KB blocks, plus each split's metadata.jsonl (under 400 bytes a row) and 8 MB for the reports.
    dataset_dict = pim.build("part1", data_dir=kaggle_part1, cache_dir=cache)
    blocks = 0
    for dataset in dataset_dict.values():
        for row in undecoded(dataset):
            blocks += sum(-(-len(row[c]["bytes"]) // 4096) for c in ("image", "instance_mask"))
        blocks += -(-400 * dataset.num_rows // 4096)
    needed = blocks * 4096 + (8 << 20)
    assert capsys.readouterr().err == (
        f"pannuke-imagemask export: error: {out}: not enough free space: needs about {needed / 1e6:.1f} MB, "
        "5.0 KB available; with --force the old tree stays until the new one is complete, so there must be "
        "room for both\n"
    )
    assert _tree_digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_running_out_of_space_midway_leaves_the_previous_tree(previous_tree, kaggle_part1, cache, monkeypatch, capsys):
    out, before = previous_tree
    written = []
    real_write = files_module.write_bytes

    def filling_up(path, *chunks):
        if len(written) == 8:  # the 5th patch's image: fold1_00004 is the 5th patch of train
            raise OSError(errno.ENOSPC, "No space left on device", path)
        written.append(path)
        real_write(path, *chunks)

    monkeypatch.setattr(files_module, "write_bytes", filling_up)
    assert _export(out, kaggle_part1, cache, "--force", "--num-proc", "1") == 1
    fifth = part1_members()["train"][4][1]
    err = capsys.readouterr().err
    assert err == (
        f"pannuke-imagemask export: error: no space left on the device while writing fold1_{fifth:05d}.png; "
        "nothing partial was left and any previous output is unchanged\n"
    )
    assert _tree_digest(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
