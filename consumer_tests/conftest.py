"""The consumer tier: each framework's own code reads our exports of fake folds.

Run from the repository root, in a venv with the `consumers` extra (`.ci/run` builds one):

    pip install -e ".[consumers]" && pip install --no-deps -r consumer_tests/requirements-no-deps.txt
    python -m pytest -p no:cacheprovider consumer_tests

Nothing here may reach the network: models are built from configs or model YAMLs, never checkpoints.
The fixtures of tests/pannuke_fixtures.py (fake folds in the real format) are shared, not copied.
"""

import os

import pytest

# The fake folds, the run's datasets cache and export_tree: tests/pannuke_fixtures.py (tests/ is on pythonpath).
pytest_plugins = ("pannuke_fixtures",)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No framework may download anything: the Hub and Ultralytics are told so, and their config dirs are private."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def ultralytics_env(tmp_path_factory):
    """Ultralytics offline, with its settings in a private folder (it writes a settings file on import)."""
    config = tmp_path_factory.mktemp("ultralytics-config")
    saved = {k: os.environ.get(k) for k in ("YOLO_OFFLINE", "YOLO_CONFIG_DIR")}
    os.environ.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(config))
    yield config
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
