"""What the datasets 3.x job shares: what legacy_tests/make_expected.py wrote in the main environment."""

import json
import os

import pytest

FIXTURE = os.environ.get("PANNUKE_LEGACY_DIR")


@pytest.fixture(scope="module")
def expected():
    if not FIXTURE:
        pytest.fail("PANNUKE_LEGACY_DIR is not set: run legacy_tests/make_expected.py DIR first (see .ci/run)")
    with open(os.path.join(FIXTURE, "expected.json")) as f:
        return json.load(f)
