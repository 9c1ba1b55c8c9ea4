"""The dataset card's recipes that need torch: the transformers Trainer and the PyTorch DataLoader, as printed."""

import os

import numpy as np
from blocks import needs_consumer_tier, python_blocks, run_blocks
from pannuke_fixtures import HUB_REPO_ID


def test_the_cards_torch_recipes_run_as_printed(local_repo, tmp_path):
    blocks = [b for b in python_blocks((local_repo / "README.md").read_text()) if needs_consumer_tier(b)]
    assert len(blocks) == 2 and "Trainer(" in blocks[0] and "collate_fn=collate" in blocks[1]
    assert "remove_unused_columns=False" in blocks[0] and "num_train_epochs=50" in blocks[0]
    # Two Trainer steps instead of 50 epochs; then the labels the model saw are the class indices.
    check = (
        "\nimport numpy as np\n"
        "row = train[0]\n"
        "assert row['labels'].shape == (256, 256)\n"
        "assert (row['labels'].numpy() == np.asarray(ds['train'][0]['label'])).all()\n"
        "assert set(np.unique(row['labels'].numpy())) <= set(range(6))\n"
    )
    run_blocks(
        [blocks[0] + check, blocks[1]], {HUB_REPO_ID: str(local_repo), "num_train_epochs=50": "max_steps=2"}, tmp_path
    )
    assert os.path.isdir(tmp_path / "segformer-pannuke")


def test_with_format_torch_gives_the_shapes_and_types_the_card_states(local_repo, tmp_path):
    import torch
    from datasets import load_dataset

    row = load_dataset(str(local_repo), "part1", split="train", cache_dir=str(tmp_path)).with_format("torch")[0]
    assert (row["image"].shape, row["image"].dtype) == ((3, 256, 256), torch.uint8)
    assert (row["semantic_mask"].shape, row["semantic_mask"].dtype) == ((1, 256, 256), torch.uint8)
    assert (row["instance_mask"].shape, row["instance_mask"].dtype) == ((1, 256, 256), torch.uint16)
    instance = row["instance_mask"][0].to(torch.int32)  # the card's cast
    assert int(instance.max()) == len(row["nuclei"])
    assert torch.unique(instance).tolist() == list(range(len(row["nuclei"]) + 1))
    text = (local_repo / "README.md").read_text()
    assert '`row["instance_mask"][0].to(torch.int32)`' in text and "`(1, 256, 256)`" in text
    np.testing.assert_array_equal(row["semantic_mask"][0].numpy() > 0, instance.numpy() > 0)
