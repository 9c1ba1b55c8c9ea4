"""Cellpose 4 reads `export --format cellpose` with its own loader, training filter and training loop.

No weights are downloaded: CellposeModel always loads a checkpoint (cpsam_v2 by default), so the training
run builds cellpose's own network class, CPSAM, from SAM's registry without a checkpoint (random weights),
its encoder cut to its first block so that a CPU step takes seconds, and hands it to train.train_seg.
"""

import os
import shutil

import numpy as np
import pytest
import torch
from cellpose import cli, io, train, vit
from pannuke_fixtures import PART1_PATCHES, raw_fold
from reference import reference_image, reference_labels, reference_split

from convert.__main__ import main
from convert.sample import fake_tissues

# The command docs/formats.md gives, minus the options that only load or save a model.
TRAIN_COMMAND = ["--train", "--dir", "DIR/train", "--test_dir", "DIR/valid", "--mask_filter", "_masks",
                 "--min_train_masks", "0", "--n_epochs", "100", "--verbose"]  # fmt: skip
# Evaluation: without --no_npy cellpose writes <id>_seg.npy beside each image (verify would name them).
EVAL_COMMAND = ["--dir", "DIR/test", "--pretrained_model", "DIR/train/models/NAME", "--no_npy", "--save_png",
                "--savedir", "PRED"]  # fmt: skip


@pytest.fixture(scope="module")
def members():
    """{split folder: sorted patch indices} by the reference split (default seed and ratios)."""
    split = reference_split({1: fake_tissues(PART1_PATCHES, 1)}, 0, (0.8, 0.15, 0.05))
    return {folder: sorted(i for _, i in split[name]) for folder, name in
            (("train", "train"), ("valid", "validation"), ("test", "test"))}  # fmt: skip


@pytest.fixture(scope="module")
def reference(kaggle_part1):
    images, masks, _ = raw_fold(kaggle_part1)
    return {i: (reference_image(images[i]), *reference_labels(np.asarray(masks[i]))[1:]) for i in range(PART1_PATCHES)}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, kaggle_part1, cache):
    out = tmp_path_factory.mktemp("cellpose") / "export"
    argv = ["export", "--out", str(out), "--data-dir", kaggle_part1, "--cache-dir", cache, "--quiet"]
    assert main([*argv, "--format", "cellpose"]) == 0
    return out


def _load(args):
    """io.load_train_test_data called as cellpose's CLI calls it (__main__._train_cellposemodel_cli)."""
    image_filter = args.img_filter if len(args.img_filter) > 0 else None
    test_dir = None if len(args.test_dir) == 0 else args.test_dir
    return io.load_train_test_data(args.dir, test_dir, image_filter, args.mask_filter, args.look_one_level_down)


def _parse(tree):
    return cli.get_arg_parser().parse_args([a.replace("DIR", str(tree)) for a in TRAIN_COMMAND])


def test_the_documented_command_parses_with_cellposes_own_parser(tree):
    args = _parse(tree)
    assert (args.train, args.dir, args.test_dir) == (True, str(tree / "train"), str(tree / "valid"))
    assert (args.mask_filter, args.min_train_masks, args.img_filter) == ("_masks", 0, [])
    assert args.look_one_level_down is False
    assert cli.get_arg_parser().parse_args([]).min_train_masks == 5  # the default drops patches: hence the option
    args = cli.get_arg_parser().parse_args(EVAL_COMMAND)
    assert (args.train, args.dir, args.no_npy, args.save_png, args.savedir) == (False, "DIR/test", True, True, "PRED")


def test_loader_reads_every_image_and_mask_as_the_reference(tree, members, reference):
    images, labels, names, test_images, test_labels, test_names = _load(_parse(tree))
    for folder, loaded in (("train", (images, labels, names)), ("valid", (test_images, test_labels, test_names))):
        assert loaded[2] == [str(tree / folder / f"fold1_{i:05d}.png") for i in members[folder]]
        for image, label, index in zip(*loaded[:2], members[folder]):
            assert image.dtype == np.uint8 and label.dtype == np.uint16
            np.testing.assert_array_equal(image, reference[index][0])
            np.testing.assert_array_equal(label, reference[index][1])
    # The test split, read the same way (e.g. as --dir of an evaluation run).
    images, labels, names = io.load_images_labels(str(tree / "test"), mask_filter="_masks")
    assert names == [str(tree / "test" / f"fold1_{i:05d}.png") for i in members["test"]]
    for image, label, index in zip(images, labels, members["test"]):
        np.testing.assert_array_equal(image, reference[index][0])
        np.testing.assert_array_equal(label, reference[index][1])


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory):
    """A copy of the export after a real train.train_seg run, as the CLI runs it (save_path = --dir)."""
    copy = tmp_path_factory.mktemp("trained") / "export"
    shutil.copytree(tree, copy)
    before = {os.path.relpath(os.path.join(d, f), copy) for d, _, files in os.walk(copy) for f in files}
    args = _parse(copy)
    images, labels, names, test_images, test_labels, test_names = _load(args)
    torch.manual_seed(0)
    net = vit.CPSAM(dtype=torch.float32)  # sam_model_registry["vit_l"](None): no checkpoint is read
    net.encoder.blocks = net.encoder.blocks[:1]
    model_path, train_losses, test_losses = train.train_seg(
        net, images, labels, train_files=names, test_data=test_images, test_labels=test_labels,
        test_files=test_names, min_train_masks=args.min_train_masks, n_epochs=1, nimg_per_epoch=2,
        nimg_test_per_epoch=1, save_path=os.path.realpath(args.dir), model_name="tiny",
    )  # fmt: skip
    after = {os.path.relpath(os.path.join(d, f), copy) for d, _, files in os.walk(copy) for f in files}
    return copy, before, after, str(model_path), train_losses, test_losses


def test_training_runs_and_leaves_flows_beside_the_images_and_the_model(trained, members, reference):
    copy, before, after, model_path, train_losses, test_losses = trained
    assert model_path == os.path.join(os.path.realpath(copy / "train"), "models", "tiny")
    assert np.isfinite(train_losses).all() and np.isfinite(test_losses).all()
    flows = {f"{folder}/fold1_{i:05d}_flows.tif" for folder in ("train", "valid") for i in members[folder]}
    assert after - before == flows | {"train/models/tiny"}
    for folder in ("train", "valid"):
        for index in members[folder]:
            flow = io.imread(str(copy / folder / f"fold1_{index:05d}_flows.tif"))
            instance = reference[index][1]
            assert flow.shape == (4, 256, 256)
            # Channel 0: our instance map as cellpose renumbered it (same partition), 1: the foreground.
            pairs = {(int(a), int(b)) for a, b in zip(instance.ravel(), flow[0].ravel())}
            assert len(pairs) == len(np.unique(instance)) == len(np.unique(flow[0]))
            np.testing.assert_array_equal(flow[1], (instance > 0).astype(np.float32))


def test_verify_passes_after_training_and_names_a_foreign_file(trained, cache, capsys):
    copy = trained[0]
    assert main(["verify", str(copy), "--cache-dir", cache, "--quiet"]) == 0
    capsys.readouterr()
    (copy / "valid" / "notes.txt").write_text("mine")
    try:
        assert main(["verify", str(copy), "--cache-dir", cache, "--quiet"]) == 1
        assert capsys.readouterr().out.splitlines() == ["valid/notes.txt: not part of the export"]
    finally:
        (copy / "valid" / "notes.txt").unlink()


@pytest.mark.parametrize("min_train_masks, dropped", [(5, [1]), (0, [])])
def test_min_train_masks_0_keeps_the_patches_without_nuclei(trained, members, reference, min_train_masks, dropped):
    # Patch 1 is the train split's one patch without nuclei; every other train patch has at least 12.
    assert [i for i in members["train"] if len(reference[i][2]) < 5] == [1] and not reference[1][2]
    copy = trained[0]
    images, labels, names = io.load_images_labels(str(copy / "train"), mask_filter="_masks")  # now the flows
    # The filter train_seg applies (its _process_train_test), as the CLI passes --min_train_masks.
    out = train._process_train_test(
        train_data=images, train_labels=labels, train_files=names, min_train_masks=min_train_masks,
        device=torch.device("cpu"),
    )  # fmt: skip
    kept = [str(copy / "train" / f"fold1_{i:05d}.png") for i in members["train"] if i not in dropped]
    assert out[2] == kept and len(out[0]) == len(kept)
