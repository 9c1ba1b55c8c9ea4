"""The fixtures of the lean suite: the fake folds and what is made of them (tests/pannuke_fixtures.py)."""

pytest_plugins = ("pannuke_fixtures",)
