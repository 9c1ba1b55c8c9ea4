"""The consumer tier: each framework's own code reads our exports of fake folds.

Run from the repository root, in a venv with the `consumers` extra (`.ci/run` builds one):

    pip install -e ".[consumers]" && python -m pytest -p no:cacheprovider consumer_tests

Nothing here may reach the network: models are built from configs or model YAMLs, never checkpoints.
The fixtures of tests/conftest.py (fake folds in the real format) are shared, not copied.
"""

import importlib.util
import os

import pytest

_spec = importlib.util.spec_from_file_location(
    "pannuke_test_fixtures", os.path.join(os.path.dirname(__file__), "..", "tests", "conftest.py")
)
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

_quiet_hf = _fixtures._quiet_hf
kaggle_part1 = _fixtures.kaggle_part1
three_folds = _fixtures.three_folds
hub_cache = _fixtures.hub_cache
local_repo = _fixtures.local_repo
HUB_REPO_ID = _fixtures.HUB_REPO_ID
PART1_PATCHES = _fixtures.PART1_PATCHES
THREE_FOLD_PATCHES = _fixtures.THREE_FOLD_PATCHES
raw_fold = _fixtures.raw_fold


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No framework may download anything: the Hub and Ultralytics are told so, and their config dirs are private."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-cache-consumers"))
