"""evaluate --report's page as Chromium shows it: images load, no console error, the numbers of --json, the
gallery of --per-patch, nothing wider than a 390 px phone, and a screenshot that is not blank."""

import numpy as np
import pytest
from pannuke_fixtures import raw_fold
from PIL import Image
from report_pages import expected_gallery, expected_numbers, flawed, report_argv, run_report, same, write_flawed

from convert.__main__ import main
from convert.results import SECOND_BLOCK

PATCHES = 3  # the command's default
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}


@pytest.fixture(scope="module")
def reported(three_folds, tmp_path_factory):
    """The command's report of a flawed prediction with --bootstrap (intervals on the page) and --metrics all."""
    prediction = write_flawed(three_folds, tmp_path_factory.mktemp("flawed"))
    folder = tmp_path_factory.mktemp("reported")
    return run_report(three_folds, prediction, folder, PATCHES, "--bootstrap", "100", "--metrics", "all")


def _interval(result, key):
    """The --json interval of a page key, where --bootstrap computed one (the key's number's family and path)."""
    paths = {"mPQ": ("pannuke", "mPQ"), "bPQ": ("pannuke", "bPQ")}
    if key.startswith("detection."):
        paths[key] = ("hovernet", key.split(".")[1])
    if key.startswith("per_class."):
        paths[key] = ("pannuke", "per_class", key.split(".")[1], "PQ")
    if key.startswith("f1_per_class."):
        paths[key] = ("hovernet", "per_class", key.split(".")[1])
    if key.startswith("metrics.") and key.count(".") >= 2:
        paths[key] = tuple(key.split(".")[1:])
    found = result["intervals"]["values"]
    for part in paths.get(key, ("-",)):
        if part not in found:
            return None
        found = found[part]
    return found


def _open(browser, reported, metrics):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    browser.get((reported["dir"] / "index.html").as_uri())
    browser.get_log("browser")  # what earlier pages logged is not this one's
    browser.refresh()
    assert browser.execute_script("return document.readyState") == "complete"


def test_every_image_loads_and_nothing_is_logged_as_an_error(browser, reported):
    _open(browser, reported, DESKTOP)
    images = browser.execute_script(
        "return Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert len(images) > 20
    assert [src for src, complete, width in images if not (complete and width > 0)] == []
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


def test_the_numbers_shown_are_those_of_the_json(browser, reported):
    _open(browser, reported, DESKTOP)
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('[data-key][data-value]'), e => "
        "[e.dataset.run || '', e.dataset.key, e.dataset.value, e.innerText])"
    )
    values = {(run, key): (value, text) for run, key, value, text in shown}
    expected = expected_numbers(reported["json"])
    assert set(expected) <= set(values)
    intervals = 0
    for key, number in expected.items():
        value, text = values[key]
        assert same(value, number), key
        interval = _interval(reported["json"], key[1])
        if interval is not None:  # shown in brackets under the number, and in data-low / data-high
            assert text.split()[1:] == [f"[{interval[0]:.4f},", f"{interval[1]:.4f}]"], key
            intervals += 1
        count = key[1].startswith("confusion.")  # counts, shown whole (--json holds them as floats)
        rounded = "n/a" if number is None else (str(int(number)) if count else f"{number:.4f}")
        assert text.split()[0] == rounded, key  # what a reader sees is the number rounded
    # The headline, PQ, DQ, SQ and F1 per class, and every number of --metrics all's second block.
    second = sum(len(paths) for _, family, paths in SECOND_BLOCK if family in reported["json"]["metrics"])
    assert second >= 17 and intervals == 6 + 4 * 5 + second


def test_the_gallery_shows_the_worst_patches_of_the_per_patch_scores(browser, reported):
    _open(browser, reported, DESKTOP)
    lists = browser.execute_script(
        "const out = {}; for (const list of document.querySelectorAll('[data-list]'))"
        " out[list.dataset.list] = Array.from(list.querySelectorAll('[data-id]'), e => e.dataset.id); return out"
    )
    assert lists == expected_gallery(reported["csv"], PATCHES)
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('[data-list] [data-id] img'), i => i.naturalWidth > 0 && "
        "i.getBoundingClientRect().width > 100)"
    )
    assert len(shown) == 3 * sum(len(ids) for ids in lists.values()) and all(shown)


def test_at_390_px_nothing_is_wider_than_the_page_and_the_screenshot_is_not_blank(browser, reported, tmp_path_factory):
    _open(browser, reported, PHONE)
    width = browser.execute_script("return window.innerWidth")
    assert width == PHONE["width"]
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width
    too_wide = browser.execute_script(
        "return Array.from(document.querySelectorAll('table, img, svg, figure, dl, .box'), e => "
        "[e.tagName, e.getAttribute('src') || e.className, e.getBoundingClientRect().left, "
        "e.getBoundingClientRect().right]).filter(([t, n, left, right]) => left < 0 || right > arguments[0])",
        width,
    )
    assert too_wide == []
    # The whole page, at phone width, kept with the test's temporary files (CI keeps them as an artefact).
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**PHONE, "height": min(height, 16000)})
    path = tmp_path_factory.mktemp("screenshots") / "report-390px.png"
    assert browser.save_screenshot(str(path))
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert pixels.shape[1] == PHONE["width"] and pixels.shape[0] > 2000
    assert pixels.std() > 20  # not blank: text, charts and patches


@pytest.fixture(scope="module")
def other_reports(three_folds, tmp_path_factory):
    """--compare (two predictions side by side) and --protocol (three sections and the mean ± std) pages."""
    folder = tmp_path_factory.mktemp("other")
    prediction = write_flawed(three_folds, folder)
    _, masks3, _ = raw_fold(three_folds, 3, "official")
    np.save(folder / "fold3.npy", flawed(masks3, seed=5))
    np.save(folder / "other.npy", flawed(prediction["masks"], seed=9))
    compare = report_argv(
        three_folds, prediction["path"], folder / "compare", PATCHES, "--compare", str(folder / "other.npy")
    )
    assert main(compare) == 0
    paths = {1: folder / "fold3.npy", 2: folder / "fold3.npy", 3: prediction["path"]}
    protocol = ["evaluate", "--protocol", *[f"split{k}={p}" for k, p in paths.items()], "--data-dir", three_folds]
    assert main([*protocol, "--report", str(folder / "protocol"), "--quiet"]) == 0
    return {"compare": {"dir": folder / "compare"}, "protocol": {"dir": folder / "protocol"}}


@pytest.mark.parametrize("kind", ["compare", "protocol"])
def test_compare_and_protocol_pages_load_and_fit_390_px(browser, other_reports, kind):
    report = other_reports[kind]
    _open(browser, report, DESKTOP)
    images = browser.execute_script("return Array.from(document.images, i => i.complete && i.naturalWidth > 0)")
    assert len(images) > 20 and all(images)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    _open(browser, report, PHONE)
    width = browser.execute_script("return window.innerWidth")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width == PHONE["width"]
    too_wide = browser.execute_script(
        "return Array.from(document.querySelectorAll('table, img, svg, figure, dl, .box'), e => "
        "[e.tagName, e.getAttribute('src') || e.className, e.getBoundingClientRect().left, "
        "e.getBoundingClientRect().right]).filter(([t, n, left, right]) => left < 0 || right > arguments[0])",
        width,
    )
    assert too_wide == []
