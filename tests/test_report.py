"""evaluate --report: the page's numbers, gallery, outlines and files, without a browser (browser_tests/ has one)."""

import csv
import os

import numpy as np
import pytest
from pannuke_fixtures import raw_fold
from report_pages import (
    CLASSES,
    confusion_stand_in,
    expected_gallery,
    expected_numbers,
    flawed,
    page_value,
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
def stand_in(flawed_fold1):
    with confusion_stand_in(flawed_fold1["masks"], flawed_fold1["preds"]) as confusion:
        yield confusion


def _argv(three_folds, pred, out, *extra):
    return report_argv(three_folds, pred, out, PATCHES, *extra)


@pytest.fixture(scope="module")
def reported(three_folds, flawed_fold1, stand_in, tmp_path_factory):
    return run_report(three_folds, flawed_fold1, tmp_path_factory.mktemp("reported"), PATCHES)


def test_every_number_of_the_json_is_on_the_page_exactly(reported, stand_in):
    page = read_page(reported["dir"] / "index.html")
    expected = expected_numbers(reported["json"])
    assert reported["json"]["detection"]["confusion"] == stand_in
    assert len(expected) == 3 + 6 + 10 + 2 * 2 + 36 + 10  # fold 1's fake patches are of two tissues
    for key, value in expected.items():
        assert same(page.values[key], value), key
    for tissue, t in reported["json"]["per_tissue"].items():
        assert page.values.get(("", f"per_tissue.{tissue}.patches")) == (str(t["patches"]) if t["patches"] else None)
    assert sorted(page.values) == sorted(
        [*expected, ("", "per_tissue.Breast.patches"), ("", "per_tissue.Skin.patches")]
    )


def test_the_page_says_where_it_fails_at_a_glance(reported, stand_in):
    result = reported["json"]
    text = (reported["dir"] / "index.html").read_text()
    glance = text[text.index('<ul class="glance">') :].split("</ul>")[0]
    weakest = min(CLASSES, key=lambda c: result["per_class"][c])
    tissue = min(
        (t for t, v in result["per_tissue"].items() if v["patches"]), key=lambda t: result["per_tissue"][t]["mPQ"]
    )
    paired = np.array(stand_in["paired"])[1:, 1:]
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
    missed = max(stand_in["missed"].values())
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


def test_collapse_is_the_builders_instance_map(flawed_fold1):
    masks = flawed_fold1["masks"]
    for index in range(len(masks)):
        ids = pim.mask_to_ids(masks[index])
        semantic, instance, _ = pim.ids_to_labels(ids)
        got, types = report.collapse(ids.astype(np.int64))
        assert np.array_equal(got, instance)  # same numbers: (channel, id) order
        assert np.array_equal(types[got], semantic)


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
    return [t for t in true_ids if t not in {t for t, _ in pairs}], [
        p for p in pred_ids if p not in {p for _, p in pairs}
    ]


def test_missed_and_spurious_are_the_nuclei_without_a_partner_of_iou_above_one_half(flawed_fold1):
    total = [0, 0]
    for mask, pred in zip(flawed_fold1["masks"][:8], flawed_fold1["preds"][:8]):
        true_map, _ = report.collapse(pim.mask_to_ids(mask).astype(np.int64))
        pred_map, _ = report.collapse(pred)
        missed, spurious = report.unmatched(true_map, pred_map)
        by_hand = _unmatched_by_hand(true_map, pred_map)
        assert (missed.tolist(), spurious.tolist()) == by_hand
        total[0] += len(missed)
        total[1] += len(spurious)
    assert total[0] > 8 and total[1] > 8


def test_an_iou_of_exactly_one_half_is_missed_and_spurious():
    true_map = np.zeros((4, 4), dtype=np.int32)
    pred_map = np.zeros((4, 4), dtype=np.int32)
    true_map[0, :2] = 1  # two pixels
    pred_map[0, 1] = 1  # one of them: IoU 1/2
    true_map[2:, 2:] = 2
    pred_map[2:, 2:] = 7  # IoU 1
    missed, spurious = report.unmatched(true_map, pred_map)
    assert missed.tolist() == [1] and spurious.tolist() == [1]


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


def test_two_predictions_are_shown_side_by_side(three_folds, flawed_fold1, stand_in, tmp_path):
    """write_report with two runs of one split: a column per prediction, both predictions beside each patch."""
    runs = {}
    for label, pred in (("A", flawed_fold1["path"]), ("B", flawed_fold1["path"])):
        args = ev._get_parser().parse_args(["--pred", pred, "--data-dir", three_folds, "--config", "folds"])
        args.split = "fold1"
        config = ev.config_named("folds")
        opened = ev.open_split(args, config, three_folds, "fold1", pred)
        args.quiet = True
        runs[label] = {**ev.score_split(args, config, opened), "opened": opened}
    report.write_report(tmp_path / "report", runs, side_by_side=True, patches=1)
    page = read_page(tmp_path / "report" / "index.html")
    for label in ("A", "B"):
        assert same(page.values[(label, "mPQ")], runs[label]["result"]["mPQ"])
        assert page_value(page.values[(label, "confusion.none.none")]) == stand_in["paired"][0][0]
    text = (tmp_path / "report" / "index.html").read_text()
    assert text.count('<section id="run">') == 1 and "--panels:5" in text
    assert len(page.images) == 2 + 2 + 6 * 5  # charts, two confusion charts, six lists of 1 patch x 5 panels
