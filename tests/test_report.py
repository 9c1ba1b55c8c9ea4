"""evaluate --report: the page's numbers, gallery, outlines and files, without a browser (browser_tests/ has one)."""

import csv
import os

import numpy as np
import pytest
from pannuke_fixtures import raw_fold
from PIL import Image
from report_pages import (
    CLASSES,
    confusion_oracle,
    expected_gallery,
    expected_numbers,
    flawed,
    read_json,
    read_page,
    report_argv,
    run_report,
    same,
    write_flawed,
)

import pannuke_imagemask as pim
from convert import evaluate as ev
from convert import report
from convert.__main__ import main

PATCHES = 2


@pytest.fixture(scope="module")
def flawed_fold1(three_folds, tmp_path_factory):
    return write_flawed(three_folds, tmp_path_factory.mktemp("flawed"))


@pytest.fixture(scope="module")
def confusion(flawed_fold1):
    return confusion_oracle(flawed_fold1["masks"], flawed_fold1["preds"])


def _argv(three_folds, pred, out, *extra):
    return report_argv(three_folds, pred, out, PATCHES, *extra)


@pytest.fixture(scope="module")
def reported(three_folds, flawed_fold1, tmp_path_factory):
    return run_report(three_folds, flawed_fold1, tmp_path_factory.mktemp("reported"), PATCHES)


def test_every_number_of_the_json_is_on_the_page_exactly(reported, confusion):
    page = read_page(reported["dir"] / "index.html")
    expected = expected_numbers(reported["json"])
    assert reported["json"]["metrics"]["hovernet"]["confusion"] == confusion  # the test's own pairing gives the same
    assert len(expected) == 3 + 6 + 4 + 10 + 10 + 2 * 2 + 36 + 10  # fold 1's fake patches are of two tissues
    for key, value in expected.items():
        assert same(page.values[key], value), key
    for tissue, t in reported["json"]["per_tissue"].items():
        assert page.values.get(("", f"per_tissue.{tissue}.patches")) == (str(t["patches"]) if t["patches"] else None)
    assert sorted(page.values) == sorted(
        [*expected, ("", "per_tissue.Breast.patches"), ("", "per_tissue.Skin.patches")]
    )


def test_the_page_says_where_it_fails_at_a_glance(reported, confusion):
    result = reported["json"]
    text = (reported["dir"] / "index.html").read_text()
    glance = text[text.index('<ul class="glance">') :].split("</ul>")[0]
    weakest = min(CLASSES, key=lambda c: result["per_class"][c])
    tissue = min(
        (t for t, v in result["per_tissue"].items() if v["patches"]), key=lambda t: result["per_tissue"][t]["mPQ"]
    )
    paired = np.array(confusion["paired"])[1:, 1:]
    off = [(paired[i, j], i, j) for i in range(5) for j in range(5) if i != j]
    count, i, j = max(off)
    assert sorted(off)[-2][0] < count  # one commonest confusion: no tie to break
    with open(reported["csv"], newline="") as f:
        worst = min((float(r["bPQ"]), r["id"]) for r in csv.DictReader(f) if r["bPQ"])
    assert glance.count("<li>") == 6
    assert f"<li>weakest class: {weakest} (PQ {result['per_class'][weakest]:.4f}" in glance
    assert f"<li>weakest tissue: {tissue} (mPQ {result['per_tissue'][tissue]['mPQ']:.4f}" in glance
    assert (
        f"<li>commonest confusion: true {CLASSES[i]} predicted {CLASSES[j]}, {count} of {paired[i].sum()} paired"
        in glance
    )
    assert f"<li>worst patch: {worst[1]} (bPQ {worst[0]:.4f})</li>" in glance
    missed = max(confusion["missed"].values())
    assert "<li>most missed: " in glance and f" ({missed} true nuclei unpaired)</li>" in glance


def test_the_gallery_shows_the_lowest_patches_of_the_per_patch_scores(reported):
    page = read_page(reported["dir"] / "index.html")
    expected = expected_gallery(reported["csv"], PATCHES)
    assert page.lists == expected
    assert all(len(ids) == PATCHES for ids in expected.values())  # every class is present in fold 1


def test_the_folder_holds_the_page_and_the_pictures_it_shows_only(reported):
    page = read_page(reported["dir"] / "index.html")
    files = sorted(os.listdir(reported["dir"]))
    assert sorted({*page.images, "index.html"}) == files
    assert all(name.endswith(".png") for name in page.images)
    text = (reported["dir"] / "index.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and 'name="viewport"' in text
    assert "<script" not in text and "http://" not in text and "https://" not in text  # no script, no network
    drawn = {patch for ids in page.lists.values() for patch in ids}
    assert {f"{patch}.png" for patch in drawn} <= set(files)  # each patch drawn once, however many lists show it
    assert len([f for f in files if f.startswith("fold")]) == 3 * len(drawn)


def test_the_page_states_the_split_the_prediction_and_the_version(reported, flawed_fold1):
    text = (reported["dir"] / "index.html").read_text()
    for shown in ("fold1 of config folds, 24 patches", flawed_fold1["path"], "<dd>masks</dd>", ev.__version__):
        assert shown in text


def test_gallery_lists_by_hand():
    nan = np.nan
    scores = np.array(
        [
            [0.5, nan, 0.1, nan, nan, 0.3, 0.9],
            [0.2, nan, 0.1, nan, nan, 0.15, 0.2],
            [0.2, nan, nan, nan, nan, 0.2, nan],
            [0.9, nan, 0.0, nan, nan, 0.45, 0.2],
        ]
    )
    lists = report.gallery_lists(scores, 2)
    assert lists == {"bPQ": [1, 3], "neoplastic": [1, 2], "inflammatory": [], "connective": [3, 0],
                     "dead": [], "epithelial": []}  # fmt: skip


def _partition(labels):
    """A label map's nuclei as a set of frozensets of flat pixel positions: equal partitions, whatever the numbers."""
    flat = np.asarray(labels).ravel()
    return {frozenset(np.flatnonzero(flat == v).tolist()) for v in np.unique(flat) if v}


def _on_top_by_hand(channels):
    """(H, W) map of (H, W, 5) channels, the later channel winning, each (channel, id) its own number."""
    out = np.zeros(channels.shape[:2], dtype=np.int64)
    for c in range(5):
        present = channels[..., c] != 0
        out[present] = channels[..., c][present] + (c + 1) * 10**6
    return out


def _unmatched_by_hand(true_map, pred_map):
    """Per nucleus masks: true and predicted numbers without a partner of IoU > 0.5."""
    true_ids = [t for t in np.unique(true_map) if t]
    pred_ids = [p for p in np.unique(pred_map) if p]
    pairs = set()
    for t in true_ids:
        for p in pred_ids:
            a, b = true_map == t, pred_map == p
            if (a & b).sum() / (a | b).sum() > 0.5:
                pairs.add((t, p))
    paired_true, paired_pred = {t for t, _ in pairs}, {p for _, p in pairs}
    return [t for t in true_ids if t not in paired_true], [p for p in pred_ids if p not in paired_pred]


def test_the_gallery_draws_the_scored_maps_and_their_unpaired_nuclei(three_folds, flawed_fold1):
    """The truth is the builder's instance_mask, the prediction its channels with the later on top; missed and
    spurious are the nuclei without a partner of IoU > 0.5 there, found by hand with one mask per nucleus."""
    rows = [(1, index) for index in range(len(flawed_fold1["masks"]))]
    files = pim.find_folds([three_folds], (1,))
    prediction = ev.open_prediction(flawed_fold1["path"], None, [(pim.patch_id(*r), 0) for r in rows], (256, 256))
    run = {"rows": rows, "files": files, "prediction": prediction}
    total = [0, 0]
    for position in range(8):
        mask, pred = flawed_fold1["masks"][position], flawed_fold1["preds"][position]
        image, maps, missed, spurious = report.patch_pictures(run, position)
        semantic, instance, _ = pim.ids_to_labels(pim.mask_to_ids(mask))
        assert np.array_equal(image, pim.image_to_uint8(raw_fold(three_folds, 1)[0][position]))
        assert _partition(maps.true_instance) == _partition(instance)
        assert np.array_equal(maps.true_semantic, semantic)
        assert _partition(maps.pred_instance) == _partition(_on_top_by_hand(pred))
        by_hand = _unmatched_by_hand(maps.true_instance, maps.pred_instance)
        assert (missed.tolist(), spurious.tolist()) == by_hand
        total[0] += len(missed)
        total[1] += len(spurious)
    assert total[0] > 8 and total[1] > 8


def _inner(mask, depth=1):
    """The mask without the pixels within depth 4-steps of its outside (the image border counts as outside)."""
    for _ in range(depth):
        padded = np.pad(mask, 1)
        mask = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def _edge(mask):
    return mask & ~_inner(mask)


def test_outlines_follow_each_nucleus_edge_in_its_class_colour_and_marks_tell_missed_from_spurious():
    instance = np.zeros((32, 32), dtype=np.int32)
    instance[2:10, 2:10] = 1  # type 2, missed
    instance[20:28, 5:12] = 2  # type 5
    instance[12:18, 20:30] = 3  # type 1, spurious
    types = np.array([0, 2, 5, 1])
    s = report.SCALE
    big = np.kron(instance, np.ones((s, s), dtype=np.int32))
    crossed = report.outline_panel(instance, types, np.array([1]), "cross")
    filled = report.outline_panel(instance, types, np.array([3]), "fill")
    assert crossed.shape == (32 * s, 32 * s)
    for panel in (crossed, filled):
        for number in (1, 2, 3):
            nucleus = big == number
            assert (panel[_edge(nucleus)] == types[number]).all()  # the whole edge in the class colour
        assert (panel[big == 0] == report.BACKGROUND).all()  # nothing drawn outside the nuclei
    inside = _inner(big == 2, 2 * s)
    assert (crossed[inside] == 5 + 5).all() and (filled[inside] == 5 + 5).all()  # dim fill of type 5
    missed_inside = _inner(big == 1, 2 * s)
    assert (crossed[missed_inside] == report.MARK).mean() > 0.4  # stripes and a cross
    assert (crossed[missed_inside] == 5 + 2).any()  # not filled: striped
    spurious_inside = _inner(big == 3, 2 * s)
    assert (filled[spurious_inside] == report.MARK).all()  # solid
    assert not (crossed[spurious_inside] == report.MARK).any() and not (filled[missed_inside] == report.MARK).any()


def test_an_existing_report_needs_force_and_is_refused_before_scoring(three_folds, flawed_fold1, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    argv = _argv(three_folds, flawed_fold1["path"], out, "--json", str(tmp_path / "r.json"))
    assert main(argv) == 1
    assert capsys.readouterr().err.strip().endswith("exists and is not empty; pass --force to replace it")
    assert os.listdir(out) == ["mine.txt"] and not (tmp_path / "r.json").exists()
    assert main([*argv, "--force"]) == 0
    assert "index.html" in os.listdir(out) and "mine.txt" not in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["r.json", "report"]  # nothing else beside it


def test_a_failure_while_drawing_leaves_nothing(three_folds, flawed_fold1, tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(report, "_save_palette", broken)
    argv = _argv(three_folds, flawed_fold1["path"], tmp_path / "report", "--json", str(tmp_path / "r.json"))
    assert main(argv) == 1
    assert "disk gone" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no report, no staging folder, no --json


def test_a_bad_report_patches_is_one_line(three_folds, flawed_fold1, tmp_path, capsys):
    assert main(_argv(three_folds, flawed_fold1["path"], tmp_path / "r")[:-3] + ["--report-patches", "-1"]) == 1
    assert "--report-patches must be 0 or more, got -1" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_the_protocol_has_a_section_per_split_and_the_mean_and_std(three_folds, flawed_fold1, tmp_path):
    _, masks3, _ = raw_fold(three_folds, 3, "official")
    np.save(tmp_path / "s3.npy", flawed(masks3, seed=5))
    paths = {1: str(tmp_path / "s3.npy"), 2: str(tmp_path / "s3.npy"), 3: flawed_fold1["path"]}
    argv = ["evaluate", "--protocol", *[f"split{k}={p}" for k, p in paths.items()], "--data-dir", three_folds]
    argv += ["--report", str(tmp_path / "report"), "--report-patches", "1", "--json", str(tmp_path / "p.json")]
    assert main([*argv, "--per-patch", str(tmp_path / "p.csv"), "--quiet"]) == 0
    result = read_json(tmp_path / "p.json")
    page = read_page(tmp_path / "report" / "index.html")
    for label, split in result["splits"].items():
        numbers = {k: v for k, v in expected_numbers(split, label, label).items() if not k[1].startswith("confusion")}
        for key, value in numbers.items():
            assert same(page.values[key], value), key
    columns = {**result["splits"], "mean": result["mean"], "std": result["std"]}
    for column, numbers in columns.items():
        assert same(page.values[(column, "protocol.mPQ")], numbers["mPQ"])
        assert same(page.values[(column, "protocol.bPQ")], numbers["bPQ"])
        for key in ("f1", "precision", "recall", "type_accuracy"):
            assert same(page.values[(column, f"protocol.detection.{key}")], numbers["detection"][key])
        for name in CLASSES:
            assert same(page.values[(column, f"protocol.per_class.{name}")], numbers["per_class"][name])
            assert same(page.values[(column, f"protocol.f1_per_class.{name}")], numbers["f1_per_class"][name])
        for tissue in ("Breast", "Skin"):
            for key in ("mPQ", "bPQ"):
                value = numbers["per_tissue"][tissue][key]
                assert same(page.values[(column, f"protocol.per_tissue.{tissue}.{key}")], value)
    text = (tmp_path / "report" / "index.html").read_text()
    assert all(f'<section id="split{k}">' in text for k in (1, 2, 3)) and 'id="protocol"' in text
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for label in ("split1", "split3"):
        split = [r for r in rows if r["split"] == label]
        worst = min((float(r["bPQ"]), k, r["id"]) for k, r in enumerate(split) if r["bPQ"])
        assert f'data-list="bPQ"><div class="patch" data-id="{worst[2]}"' in text.split(f'<section id="{label}">')[1]


def test_two_predictions_are_shown_side_by_side(three_folds, flawed_fold1, tmp_path):
    """--compare: one section, a column per prediction, each number's difference and p, both beside each patch."""
    _, masks, _ = raw_fold(three_folds, 1, "kaggle")
    np.save(tmp_path / "other.npy", flawed(masks, seed=9))
    argv = report_argv(three_folds, flawed_fold1["path"], tmp_path / "report", 1, "--json", str(tmp_path / "c.json"))
    assert main([*argv, "--compare", str(tmp_path / "other.npy"), "--bootstrap", "50"]) == 0
    result = read_json(tmp_path / "c.json")
    page = read_page(tmp_path / "report" / "index.html")
    for label in ("pred", "compare"):
        for key, value in expected_numbers(result[label], label, "pred").items():
            assert same(page.values[key], value), key
    for path, family, inner in ((("mPQ",), "pannuke", ("mPQ",)), (("detection", "f1"), "hovernet", ("f1",))):
        row = result["comparison"]["values"][family][inner[0]]
        assert same(page.values[("difference", ".".join(path))], row["difference"])
        assert same(page.values[("p", ".".join(path))], row["p_value"])
    text = (tmp_path / "report" / "index.html").read_text()
    assert text.count("<section ") == 1 and "--panels:5" in text
    assert len(page.images) == 2 + 2 + 6 * 5  # class and tissue charts, two confusions, 6 lists x 5 panels


def test_a_prediction_without_classes_has_grey_outlines_and_no_class_numbers(three_folds, flawed_fold1, tmp_path):
    folder = tmp_path / "cellpose"
    folder.mkdir()
    for index, pred in enumerate(flawed_fold1["preds"]):
        instance = _on_top_by_hand(pred)
        _, numbered = np.unique(instance, return_inverse=True)  # 0 stays 0, nuclei 1..n
        if numbered.max():
            Image.fromarray(numbered.reshape(instance.shape).astype(np.uint16)).save(
                folder / f"{pim.patch_id(1, index)}_cp_masks.png"
            )
    argv = report_argv(three_folds, str(folder), tmp_path / "report", 1, "--json", str(tmp_path / "r.json"))
    assert main([*argv, "--per-patch", str(tmp_path / "r.csv")]) == 0
    result = read_json(tmp_path / "r.json")
    page = read_page(tmp_path / "report" / "index.html")
    for key, value in expected_numbers(result).items():
        assert same(page.values[key], value), key
    assert page.values[("", "mPQ")] == "null" and not any(k[1].startswith("confusion.") for k in page.values)
    assert page.lists == expected_gallery(tmp_path / "r.csv", 1)
    assert page.lists["bPQ"] and all(page.lists[c] == [] for c in CLASSES)
    text = (tmp_path / "report" / "index.html").read_text()
    assert "The prediction has no classes: no type confusion." in text
    assert text.count("The prediction has no classes: no PQ per class.") == 5
    patch = page.lists["bPQ"][0]
    predicted = np.asarray(Image.open(tmp_path / "report" / f"{patch}_pred0.png"))
    drawn = set(np.unique(predicted).tolist())
    assert {report.UNTYPED, report.UNTYPED_FILL} <= drawn and not drawn & {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
