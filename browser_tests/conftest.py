"""The browser tier: evaluate --report's page in a real Chromium, driven by selenium (Debian's chromium and
chromium-driver; `.ci/run` installs them). From the repository root, in a venv with the `browser` extra:

    apt-get install chromium chromium-driver && pip install -e ".[browser]" && python -m pytest -p no:cacheprovider browser_tests

The fake folds come from tests/pannuke_fixtures.py (tests/ is on pythonpath), shared, not copied.
"""

import shutil

import pytest

pytest_plugins = ("pannuke_fixtures",)


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium that keeps its console log; offline by construction (the page loads file:// only)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver not found: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()
