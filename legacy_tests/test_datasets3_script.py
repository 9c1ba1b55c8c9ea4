"""Under datasets 3.x: load_dataset(pannuke_imagemask.py, trust_remote_code=True) gives what build() gives.

Run by .ci/run in a second environment with datasets==3.6.0, after legacy_tests/make_expected.py has
written a fake fold and the main environment's results to $PANNUKE_LEGACY_DIR.
"""

import hashlib
import os

import datasets
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.environ.get("PANNUKE_LEGACY_DIR")


def test_script_loads_under_datasets_3(expected, tmp_path):
    assert datasets.__version__.startswith("3.")
    # dataset_infos.json beside the script holds the official split sizes; the fake fold has 24
    # patches, so the size check that protects real users is switched off here, and only here.
    loaded = datasets.load_dataset(
        os.path.join(ROOT, "pannuke_imagemask.py"),
        "part1",
        data_dir=os.path.join(FIXTURE, "data"),
        cache_dir=str(tmp_path / "cache"),
        trust_remote_code=True,
        verification_mode="no_checks",
    )
    assert list(loaded) == list(expected["splits"])
    assert loaded["train"].features == datasets.Features.from_dict(expected["features"])
    for split, rows in expected["splits"].items():
        ds = loaded[split]
        assert ds["id"] == [r["id"] for r in rows]
        assert ds["nuclei"] == [r["nuclei"] for r in rows]
        assert ds["tissue"] == [r["tissue"] for r in rows]
        _assert_same_pixels(ds, rows)


def _digest(image):
    palette = bytes(image.palette.getdata()[1]) if image.mode == "P" else b""
    return hashlib.sha256(image.mode.encode() + palette + np.array(image).tobytes()).hexdigest()


def _assert_same_pixels(ds, rows):
    for row, want in zip(ds, rows):
        assert row["semantic_mask"].mode == "P"
        assert [_digest(row[c]) for c in ("image", "semantic_mask", "instance_mask")] == want["pixels"], row["id"]


def test_hub_repository_loads_under_datasets_3(expected, tmp_path):
    loaded = datasets.load_dataset(os.path.join(FIXTURE, "repo"), "part1", cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == list(expected["splits"])
    for split, rows in expected["splits"].items():
        assert loaded[split]["id"] == [r["id"] for r in rows]
        assert loaded[split]["nuclei"] == [r["nuclei"] for r in rows]
        _assert_same_pixels(loaded[split], rows)


def test_dataset_infos_json_guards_the_official_split_sizes(expected, tmp_path):
    # With the default checks, datasets 3 compares the split sizes with dataset_infos.json: on real
    # data this proves the split; on the 24-patch fake fold it must refuse.
    with pytest.raises(datasets.exceptions.NonMatchingSplitsSizesError) as caught:
        datasets.load_dataset(
            os.path.join(ROOT, "pannuke_imagemask.py"),
            "part1",
            data_dir=os.path.join(FIXTURE, "data"),
            cache_dir=str(tmp_path / "cache"),
            trust_remote_code=True,
        )
    message = str(caught.value)
    assert "num_examples=2125" in message and "num_examples=19" in message
