"""evaluate --report DIR: one HTML page that shows where a prediction fails, by class, tissue, type and patch.

The page is plain HTML and CSS with PNG pictures (charts by matplotlib, outlines by OpenCV contours), no
script and nothing from the network: it opens from file:// and reads on a phone. write_report is the entry
point; evaluate calls it once the runs are scored. Every number on the page carries its exact value in a
data-value attribute, so that a test (browser_tests/) can compare the page with --json.
"""

import html
import math
import os

import numpy as np

import pannuke_imagemask as pim

from . import metrics, panoptic, results
from .common import refuse_non_empty, staging_dir
from .export import replace_tree
from .pictures import COLORS, _pyplot
from .scoring import truth_ids

PAGE = "index.html"
DEFAULT_PATCHES = 3  # gallery patches per list (the worst by bPQ, and per class)
SCALE = 2  # outline panels are drawn at twice the patch's size, so that a 1-pixel nucleus edge stays visible
HATCH = 4  # pixels between the stripes of a missed nucleus (at SCALE)
CHART_DPI = 100
# Outline panels are palette PNGs: background, the five class colours, their dim fills, white marks, and grey
# for the nuclei of a prediction without classes (outline, fill).
BACKGROUND, MARK, UNTYPED, UNTYPED_FILL = 0, 11, 12, 13
OUTLINE = np.array([UNTYPED, 1, 2, 3, 4, 5], dtype=np.uint8)  # by HoVer-Net type 0..5
FILL = np.array([UNTYPED_FILL, 6, 7, 8, 9, 10], dtype=np.uint8)
DIM = 0.35  # a nucleus' inside: its class colour at this brightness, its outline at full
HEADLINE = [  # (key path in the result, label, family and path of its interval and comparison)
    (("mPQ",), "mPQ", "pannuke", ("mPQ",)),
    (("bPQ",), "bPQ", "pannuke", ("bPQ",)),
    (("detection", "f1"), "detection F1", "hovernet", ("f1",)),
    (("detection", "precision"), "precision", "hovernet", ("precision",)),
    (("detection", "recall"), "recall", "hovernet", ("recall",)),
    (("detection", "type_accuracy"), "type accuracy", "hovernet", ("type_accuracy",)),
]
TYPE_LABELS = ["none", *pim.NUCLEUS_CLASSES]  # HoVer-Net's type ids 0..5
SHORT = {"none": "none", "neoplastic": "neo", "inflammatory": "infl", "connective": "conn", "dead": "dead",
         "epithelial": "epi"}  # fmt: skip

CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0 auto;max-width:1100px;
padding:0 12px 40px}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:2px solid #ddd}
h3{font-size:1.05em;margin:1.2em 0 .4em}
img{max-width:100%;height:auto;display:block}
.note{color:#555;font-size:.9em;max-width:60em}
.glance{margin:6px 0 10px;padding-left:1.2em}
.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:6px 10px}
.box{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;margin:4px 0 12px}
th,td{padding:2px 6px;border-bottom:1px solid #e3e3e3;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:2px solid #bbb}
td small{color:#666;display:block}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:6px 10px;min-width:9em}
.card b{display:block;font-size:1.5em}
.card span{font-size:.85em;color:#555}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:.9em}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.row>*{flex:1 1 300px;min-width:0}
.patch{margin:10px 0 18px;border-top:1px solid #eee;padding-top:6px}
.panels{display:grid;grid-template-columns:repeat(var(--panels),minmax(0,1fr));gap:4px;max-width:calc(var(--panels)*260px)}
.panels figcaption{font-size:.8em;color:#555;text-align:center}
.panels figure{margin:0}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.9em;align-items:center;margin:6px 0}
.legend svg{vertical-align:middle}
@media (max-width:480px){body{font-size:14px;padding:0 6px 30px}table{font-size:12px}th,td{padding:2px 3px}}
"""


# ---------------------------------------------------------------------------------------------
# Numbers: shown rounded, carried exactly.
# ---------------------------------------------------------------------------------------------


def _finite(value):
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _shown(value):
    return f"{value:.4f}" if _finite(value) else "n/a"


def _data(value):
    """The exact value for data-value: repr of the float, as json writes it; "null" for NaN (json's null)."""
    return repr(float(value)) if _finite(value) else "null"


def _interval(result, family, path):
    """(low, high) of the number at path of a family's numbers, where --bootstrap computed intervals."""
    found = results.value_at(result, ("intervals", "values", family, *path))
    return tuple(found) if found is not None else None


def second_block(result):
    """(label, family, path) of each number of --metrics' second block that the result has (results.SECOND_BLOCK)."""
    rows = []
    for label, family, paths in results.SECOND_BLOCK:
        if family in result["metrics"]:
            first, *others = label.split(" / ")
            prefix, name = first.rsplit(" ", 1)
            rows += [(f"{prefix} {n}", family, path) for n, path in zip([name, *others], paths)]
    return rows


def _confusion_of(result):
    """{"labels", "paired" 6 x 6, "missed", "spurious"}: the counts of HoVer-Net's pairing, as --json holds them."""
    return result["metrics"]["hovernet"]["confusion"]


def _cell(value, key, run=None, tag="td", interval=None):
    """A table cell of one number, with its exact value, its key and its run in data attributes."""
    attrs = f' data-key="{html.escape(key)}" data-value="{_data(value)}"'
    if run is not None:
        attrs += f' data-run="{html.escape(run)}"'
    text = _shown(value)
    if interval is not None:
        attrs += f' data-low="{_data(interval[0])}" data-high="{_data(interval[1])}"'
        text += f"<small>[{_shown(interval[0])}, {_shown(interval[1])}]</small>"
    return f"<{tag}{attrs}>{text}</{tag}>"


def _count(value, key, run):
    """A table cell of one count (an integer, exact as it is shown)."""
    attrs = f' data-run="{html.escape(run)}"'
    return f'<td data-key="{html.escape(key)}"{attrs} data-value="{int(value)}">{int(value)}</td>'


def _table(head, rows, cls=""):
    """A table in a box that scrolls on its own if it must; head and rows are lists of ready cells."""
    thead = "<tr>" + "".join(head) + "</tr>"
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<div class="box"><table class="{cls}"><thead>{thead}</thead><tbody>{body}</tbody></table></div>'


def _th(text):
    return f"<th>{html.escape(text)}</th>"


def _img(name, alt, size):
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}" width="{size[0]}" height="{size[1]}">'


# ---------------------------------------------------------------------------------------------
# Charts (matplotlib): per class, per tissue, the type confusion.
# ---------------------------------------------------------------------------------------------


def _save(figure, folder, name):
    figure.savefig(os.path.join(folder, name), dpi=CHART_DPI)
    size = figure.get_size_inches() * CHART_DPI
    _pyplot().close(figure)
    return name, tuple(int(v) for v in np.rint(size))


def _class_chart(folder, name, runs):
    """Grouped bars: PQ and F1 of each class, for each run."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 3.0))
    x = np.arange(len(pim.NUCLEUS_CLASSES))
    bars = [(label, key, title) for label in runs for key, title in (("per_class", "PQ"), ("f1_per_class", "F1"))]
    width = 0.8 / len(bars)
    for k, (label, key, title) in enumerate(bars):
        values = [runs[label]["result"][key][c] for c in pim.NUCLEUS_CLASSES]
        heights = [v if _finite(v) else 0 for v in values]
        hatch = "//" if title == "F1" else None
        axis.bar(x + (k - (len(bars) - 1) / 2) * width, heights, width, hatch=hatch,
                 label=title if len(runs) == 1 else f"{title} {label}")  # fmt: skip
    axis.set_xticks(x, [SHORT[c] for c in pim.NUCLEUS_CLASSES])
    axis.set_ylim(0, 1)
    axis.set_ylabel("score")
    axis.legend(fontsize=8, ncols=2)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, folder, name)


def _tissue_order(result):
    """Tissues with patches, worst first by mPQ (by bPQ where there is no mPQ), then by name."""
    key = "mPQ" if _finite(result["mPQ"]) else "bPQ"
    present = [t for t, v in result["per_tissue"].items() if v["patches"]]
    score = {t: result["per_tissue"][t][key] for t in present}
    return sorted(present, key=lambda t: (not _finite(score[t]), score[t] if _finite(score[t]) else 0, t)), key


def _tissue_chart(folder, name, runs, order):
    """Horizontal bars of mPQ and bPQ per tissue, in the page's order (worst at the top)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 1.0 + 0.32 * len(order) * max(1, len(runs) / 1.5)))
    bars = [(label, key) for label in runs for key in ("mPQ", "bPQ")]
    height = 0.8 / len(bars)
    y = np.arange(len(order))
    for k, (label, key) in enumerate(bars):
        values = [runs[label]["result"]["per_tissue"][t][key] for t in order]
        widths = [v if _finite(v) else 0 for v in values]
        axis.barh(y + (k - (len(bars) - 1) / 2) * height, widths, height, hatch="//" if key == "bPQ" else None,
                  label=key if len(runs) == 1 else f"{key} {label}")  # fmt: skip
    first = runs[next(iter(runs))]["result"]["per_tissue"]
    axis.set_yticks(y, [f"{t} ({first[t]['patches']})" for t in order], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _save(figure, folder, name)


def _confusion_chart(folder, name, paired):
    """The 6 x 6 paired-type matrix as row shares in grey, each cell with its count."""
    plt = _pyplot()
    counts = np.asarray(paired, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    figure, axis = plt.subplots(figsize=(4.6, 4.0))
    axis.imshow(shares, cmap="Greys", vmin=0, vmax=1)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if shares[i, j] > 0.5 else "black"
            axis.text(j, i, f"{counts[i, j]}\n{100 * shares[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                      color=colour)  # fmt: skip
    labels = [SHORT[t] for t in TYPE_LABELS]
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.set_xlabel("predicted type")
    axis.set_ylabel("true type")
    figure.tight_layout()
    return _save(figure, folder, name)


# ---------------------------------------------------------------------------------------------
# The gallery: which patches, and their outlines (OpenCV).
# ---------------------------------------------------------------------------------------------


def gallery_lists(scores, count):
    """{"bPQ": positions, "neoplastic": positions, ...}: the count lowest of each, NaN left out, ties by position.

    scores is a run's (N, 7) per-patch scores (PQ of classes 0..4, mPQ, bPQ).
    """
    scores = np.asarray(scores, dtype=np.float64)
    columns = {"bPQ": scores[:, -1], **{name: scores[:, j] for j, name in enumerate(pim.NUCLEUS_CLASSES)}}
    lists = {}
    for name, column in columns.items():
        scored = np.flatnonzero(~np.isnan(column))
        lists[name] = scored[np.argsort(column[scored], kind="stable")][:count].tolist()
    return lists


def patch_pictures(run, position):
    """(image, PatchMaps, missed true numbers, spurious predicted numbers) of the split's row at position.

    The maps are those that were scored: the patch matched again as scoring matched it (panoptic.match of
    the checked truth and the Prediction reader's channels), as metrics.patch_maps draws its binary maps
    (the later channel on top; the truth's is the builder's instance_mask). Missed and spurious: the nuclei
    of those maps without a partner of IoU > 0.5 (panoptic.matched), as bPQ pairs them.
    """
    fold, index = run["rows"][position]
    files = run["files"][fold]
    images, masks = pim.open_fold(files)
    truth = truth_ids(masks[index], where=f"{files['masks']}: patch {index}")
    image = pim.image_to_uint8(images[index], where=f"{files['images']}: patch {index}")
    matching = panoptic.match(truth, run["prediction"].read(position).channels)
    maps = metrics.patch_maps(matching, run["prediction"].classified)
    true_matched, pred_matched, _ = panoptic.matched(matching.binary_pairs)
    missed = np.setdiff1d(np.unique(maps.true_instance[maps.true_instance > 0]), true_matched)
    spurious = np.setdiff1d(np.unique(maps.pred_instance[maps.pred_instance > 0]), pred_matched)
    return image, maps, missed, spurious


def number_types(instance, semantic):
    """The class (1..5) of each number 0..max of an instance map, from its semantic map (0 where absent)."""
    types = np.zeros(int(instance.max(initial=0)) + 1, dtype=np.int64)
    types[instance] = semantic
    types[0] = 0
    return types


def _palette():
    dim = (COLORS[1:].astype(np.float64) * DIM).astype(np.uint8)
    grey = [[160, 160, 160], [56, 56, 56]]  # a nucleus without a class: outline, fill
    return np.concatenate([COLORS[:1], COLORS[1:], dim, [[255, 255, 255]], grey]).astype(np.uint8)


def outline_panel(instance, types, marked, mark):
    """A palette image (H*SCALE, W*SCALE) of an instance map: each nucleus filled dim and outlined in its class
    colour (types: HoVer-Net's 1..5 per number, 0 grey: no class; OpenCV contours); the marked numbers striped
    and crossed (mark "cross": missed) or filled white ("fill": spurious), so that they read apart without colour.
    """
    import cv2
    from scipy.ndimage import find_objects

    big = np.kron(instance, np.ones((SCALE, SCALE), dtype=instance.dtype))
    canvas = np.zeros(big.shape, dtype=np.uint8)
    inside = big > 0
    canvas[inside] = FILL[types[big[inside]]]
    marked_pixels = np.isin(big, marked) & inside
    if mark == "cross":
        rows, cols = np.indices(big.shape)
        marked_pixels &= (rows + cols) % HATCH < HATCH // 2
    canvas[marked_pixels] = MARK
    marked = set(np.asarray(marked).tolist())
    for number, box in enumerate(find_objects(big), start=1):
        if box is None:
            continue
        mask = (big[box] == number).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if mark == "cross" and number in marked:  # both diagonals of its box, inside the nucleus
            cross = np.zeros_like(mask)
            bottom, right = mask.shape[0] - 1, mask.shape[1] - 1
            cv2.line(cross, (0, 0), (right, bottom), 1, thickness=SCALE)
            cv2.line(cross, (0, bottom), (right, 0), 1, thickness=SCALE)
            canvas[box][(cross > 0) & (mask > 0)] = MARK
        # Drawn 2 pixels wide, kept inside the nucleus: a neighbour's outline never covers this one's.
        ring = cv2.drawContours(np.zeros_like(mask), contours, -1, 1, thickness=2 * SCALE - 1)
        canvas[box][(ring > 0) & (mask > 0)] = OUTLINE[types[number]]
    return canvas


def _save_palette(folder, name, canvas):
    from PIL import Image

    image = Image.fromarray(canvas, mode="P")
    image.putpalette(_palette().ravel().tolist())
    image.save(os.path.join(folder, name))
    return name


def _save_rgb(folder, name, rgb):
    from PIL import Image

    Image.fromarray(rgb).save(os.path.join(folder, name), optimize=True)
    return name


def _legend(key):
    swatches = "".join(
        f'<span><svg width="14" height="14" aria-hidden="true"><rect x="1" y="1" width="12" height="12" '
        f'fill="rgb{tuple(int(v * DIM) for v in COLORS[k + 1])}" stroke="rgb{tuple(COLORS[k + 1].tolist())}" '
        f'stroke-width="2"/></svg> {name}</span>'
        for k, name in enumerate(pim.NUCLEUS_CLASSES)
    )
    hatch = (
        f'<svg width="16" height="16" aria-hidden="true"><defs><pattern id="hatch{key}" width="4" height="4" '
        'patternUnits="userSpaceOnUse" patternTransform="rotate(-45)"><rect width="2" height="4" fill="white"/>'
        f'</pattern></defs><rect width="16" height="16" fill="#333"/><rect width="16" height="16" fill="url(#hatch{key})"/>'
        '<path d="M1 1L15 15M1 15L15 1" stroke="white" stroke-width="2"/></svg>'
    )
    fill = '<svg width="16" height="16" aria-hidden="true"><rect width="16" height="16" fill="#333"/>' + (
        '<rect x="2" y="2" width="12" height="12" fill="white"/></svg>'
    )
    return (
        f'<div class="legend">{swatches}<span>{hatch} missed (striped, crossed)</span>'
        f"<span>{fill} spurious (solid white)</span></div>"
    )


# ---------------------------------------------------------------------------------------------
# The page's sections.
# ---------------------------------------------------------------------------------------------


def _info(label, result):
    pred = result["pred"]
    items = [
        ("split", f"{result['split']} of config {result['config']}, {result['patches']} patches"),
        ("prediction", pred["path"]),
        ("layout", pred["layout"] + ("" if pred["classified"] else " (no classes)")),
    ]
    if "min_score" in pred:
        items.append(("instances", f"min score {pred['min_score']:g}, max overlap {pred['max_overlap']:g}"))
    if result.get("split_seed") is not None:
        items.append(("split seed, ratios", f"{result['split_seed']}, {result['split_ratios']}"))
    source = result["source"]
    items.append(("source", "built-in sample (FAKE patches)" if source["sample"] else str(source["data_dir"])))
    items.append(("F1 radius", f"{result['detection']['radius']:g} px"))
    items.append(("version", result["version"]))
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
    title = f"<h3>{html.escape(label)}</h3>" if label else ""
    return f'{title}<dl data-run="{html.escape(label)}">{rows}</dl>'


def _lowest(values):
    """The key of the lowest finite value of a dict (first in order on ties), or None."""
    finite = [(value, k, key) for k, (key, value) in enumerate(values.items()) if _finite(value)]
    return min(finite)[2] if finite else None


def _glance(run):
    """Where the run fails, in sentences: the weakest class, tissue and patch, the commonest confusion."""
    result = run["result"]
    items = []
    name = _lowest(result["per_class"])
    if name:
        items.append(f"weakest class: {name} (PQ {_shown(result['per_class'][name])}, "
                     f"F1 {_shown(result['f1_per_class'][name])})")  # fmt: skip
    order, key = _tissue_order(result)
    if order and _finite(result["per_tissue"][order[0]][key]):
        tissue = result["per_tissue"][order[0]]
        items.append(f"weakest tissue: {order[0]} ({key} {_shown(tissue[key])} over {tissue['patches']} patches)")
    confusion = _confusion_of(result)
    if result["pred"]["classified"]:
        paired = np.rint(confusion["paired"]).astype(np.int64)[1:, 1:]  # the classes, not HoVer-Net's type 0
        wrong = paired - np.diag(np.diag(paired))
        if wrong.any():
            i, j = np.unravel_index(np.argmax(wrong), wrong.shape)
            items.append(f"commonest confusion: true {pim.NUCLEUS_CLASSES[i]} predicted {pim.NUCLEUS_CLASSES[j]}, "
                         f"{wrong[i, j]} of {paired[i].sum()} paired")  # fmt: skip
        for kind, says in (("missed", "true nuclei unpaired"), ("spurious", "predicted nuclei unpaired")):
            counts = confusion[kind]
            if any(counts.values()):
                most = max(counts, key=lambda c: (counts[c], -pim.NUCLEUS_CLASSES.index(c)))
                items.append(f"most {kind}: {most} ({int(counts[most])} {says})")
    bpq = np.asarray(run["scores"], dtype=np.float64)[:, -1]
    if (~np.isnan(bpq)).any():
        worst = int(np.nanargmin(bpq))
        items.append(f"worst patch: {pim.patch_id(*run['rows'][worst])} (bPQ {_shown(bpq[worst])})")
    return "".join(f"<li>{html.escape(item)}</li>" for item in items)


def _headline(runs, comparison):
    """The big numbers, at a glance, and the table of the headline (and --metrics' second block) per run; with
    a comparison, each number's difference, its interval and p-value."""
    label0 = next(iter(runs))
    first = runs[label0]["result"]
    cards = "".join(
        f'<div class="card">{_cell(results.value_at(first, path), "card." + ".".join(path), label0, "b")}'
        f"<span>{name}{'' if len(runs) == 1 else ' of ' + html.escape(label0)}</span></div>"
        for path, name, _, _ in HEADLINE[:3]
    )
    glance = "".join(
        ("" if len(runs) == 1 else f"<p><b>{html.escape(label)}</b></p>") + f'<ul class="glance">{_glance(run)}</ul>'
        for label, run in runs.items()
    )
    numbers = [(path, name, family, inner) for path, name, family, inner in HEADLINE]
    numbers += [(("metrics", family, *inner), name, family, inner) for name, family, inner in second_block(first)]
    head = [_th("")] + [_th(label) for label in runs]
    if comparison is not None:
        head += [_th("difference"), _th("p")]
    rows = []
    for path, name, family, inner in numbers:
        row = [_th(name)]
        for label, run in runs.items():
            interval = _interval(run["result"], family, inner)
            row.append(_cell(results.value_at(run["result"], path), ".".join(path), label, interval=interval))
        if comparison is not None:
            found = results.value_at(comparison["values"], (family, *inner))
            row.append(_cell(found["difference"], ".".join(path), "difference", interval=found["interval"]))
            row.append(_cell(found["p_value"], ".".join(path), "p"))
        rows.append(row)
    note = ""
    if "intervals" in first:
        info = first["intervals"]
        note = (
            f"In brackets: {info['level']:.0%} {info['method']} intervals, {info['replicates']} bootstrap "
            f"replicates of the patches within each tissue, seed {info['seed']}."
        )
    if comparison is not None:
        note += (
            f" Difference: {' minus '.join(runs)}, its {comparison['level']:.0%} paired bootstrap interval "
            f"({comparison['replicates']} replicates, seed {comparison['seed']}); p: {comparison['test']} "
            f"({comparison['permutations']} permutations)."
        )
    note = f'<p class="note">{html.escape(note.strip())}</p>' if note else ""
    return (
        f'<div class="row"><div><div class="cards">{cards}</div>{glance}</div>'
        f"<div>{_table(head, rows, 'headline')}{note}</div></div>"
    )


def _classes(folder, prefix, runs):
    chart, size = _class_chart(folder, f"{prefix}classes.png", runs)
    tables = []
    for label, run in runs.items():
        result = run["result"]
        head = [_th(label or "class"), _th("PQ"), _th("DQ"), _th("SQ"), _th("F1")]
        rows = []
        for name in pim.NUCLEUS_CLASSES:
            pannuke = result["metrics"]["pannuke"]["per_class"][name]
            rows.append(
                [
                    _th(name),
                    _cell(result["per_class"][name], f"per_class.{name}", label,
                          interval=_interval(result, "pannuke", ("per_class", name, "PQ"))),
                    _cell(pannuke["DQ"], f"metrics.pannuke.per_class.{name}.DQ", label,
                          interval=_interval(result, "pannuke", ("per_class", name, "DQ"))),
                    _cell(pannuke["SQ"], f"metrics.pannuke.per_class.{name}.SQ", label,
                          interval=_interval(result, "pannuke", ("per_class", name, "SQ"))),
                    _cell(result["f1_per_class"][name], f"f1_per_class.{name}", label,
                          interval=_interval(result, "hovernet", ("per_class", name))),
                ]
            )  # fmt: skip
        tables.append(f"<div>{_table(head, rows, 'classes')}</div>")
    note = (
        '<p class="note">PQ, DQ, SQ: PanNuke\'s, the mean over the patches where the class is present (the '
        "official script). F1: HoVer-Net's per class, over the split's summed counts.</p>"
    )
    return (
        "<h3>Per class</h3>" + note
        + f'<div class="row"><div>{_img(chart, "PQ and F1 per class", size)}</div>{"".join(tables)}</div>'
    )  # fmt: skip


def _tissues(folder, prefix, runs):
    first = runs[next(iter(runs))]["result"]
    order, key = _tissue_order(first)
    empty = [t for t, v in first["per_tissue"].items() if not v["patches"]]
    head = [_th("tissue"), _th("patches")] + [_th(f"{k} {label}".strip()) for label in runs for k in ("mPQ", "bPQ")]
    rows = [
        [_th(tissue), _count(first["per_tissue"][tissue]["patches"], f"per_tissue.{tissue}.patches", next(iter(runs)))]
        + [
            _cell(run["result"]["per_tissue"][tissue][k], f"per_tissue.{tissue}.{k}", label)
            for label, run in runs.items()
            for k in ("mPQ", "bPQ")
        ]
        for tissue in order
    ]
    chart = ""
    if order:
        name, size = _tissue_chart(folder, f"{prefix}tissues.png", runs, order)
        chart = f"<div>{_img(name, 'mPQ and bPQ per tissue', size)}</div>"
    note = f"Sorted by {key}, worst first; each tissue's patch count in brackets."
    if empty:
        note += f" No patches of: {', '.join(empty)}."
    return (
        f'<h3>Per tissue</h3><p class="note">{html.escape(note)}</p>'
        f'<div class="row">{chart}<div>{_table(head, rows, "tissues")}</div></div>'
    )


def _confusion(folder, prefix, label, run, titled):
    confusion = _confusion_of(run["result"])
    title = f"<h3>Type confusion{' of ' + html.escape(label) if titled else ''}</h3>"
    if not run["result"]["pred"]["classified"]:
        return title + '<p class="note">The prediction has no classes: no type confusion.</p>'
    paired = np.rint(confusion["paired"]).astype(np.int64)
    chart, size = _confusion_chart(folder, f"{prefix}confusion.png", paired)
    totals = paired.sum(axis=1)
    head = [_th("true \\ predicted")] + [f'<th><abbr title="{t}">{SHORT[t]}</abbr></th>' for t in TYPE_LABELS]
    rows = []
    for i, true in enumerate(TYPE_LABELS):
        row = [f'<th><abbr title="{true}">{SHORT[true]}</abbr></th>']
        for j, pred in enumerate(TYPE_LABELS):
            share = paired[i, j] / totals[i] if totals[i] else math.nan
            row.append(
                f'<td data-key="confusion.{true}.{pred}" data-run="{html.escape(label)}" data-value="{paired[i, j]}">'
                f"{paired[i, j]}<small>{'' if math.isnan(share) else f'{100 * share:.0f}%'}</small></td>"
            )
        rows.append(row)
    errors_head = [_th("class"), _th("missed"), _th("spurious")]
    errors = [
        [_th(name)]
        + [_count(confusion[kind][name], f"confusion.{kind}.{name}", label) for kind in ("missed", "spurious")]
        for name in pim.NUCLEUS_CLASSES
    ]
    note = (
        "Over HoVer-Net's pairs of true and predicted nuclei (the detection F1's pairing, centroids within "
        "the radius): rows are the true type, columns the predicted type, each cell its count and its share "
        "of the row. Missed: true nuclei left unpaired, by true type; spurious: predicted nuclei left "
        "unpaired, by predicted type. Type none is HoVer-Net's dummy point of an empty side, or an untyped "
        "prediction."
    )
    return (
        title + f'<p class="note">{note}</p>'
        + f'<div class="row"><div>{_img(chart, "type confusion matrix", size)}</div>'
        + f'<div>{_table(head, rows, "confusion")}{_table(errors_head, errors, "unpaired")}</div></div>'
    )  # fmt: skip


def _patch_numbers(run, position):
    """The caption of a gallery patch: its scores as --per-patch gives them."""
    scores = run["scores"][position]
    counts = dict(zip(results.DETECTION_COLUMNS, run["counts"][position].tolist()))
    parts = [f"bPQ {_shown(scores[-1])}", f"mPQ {_shown(scores[-2])}"]
    parts += [f"PQ {SHORT[n]} {_shown(scores[j])}" for j, n in enumerate(pim.NUCLEUS_CLASSES) if _finite(scores[j])]
    parts.append(f"F1 pairs {counts['det_tp']}, unpaired pred {counts['det_fp']}, true {counts['det_fn']}")
    return "; ".join(parts)


def _gallery(folder, prefix, runs, count, drawn):
    """Per run, the worst patches by bPQ and by each class's PQ; each patch drawn once per run (drawn: cache)."""
    labels = list(runs)
    first = runs[labels[0]]
    lists = gallery_lists(first["scores"], count)
    chosen = f"; chosen by {html.escape(labels[0])}'s scores" if len(labels) > 1 else ""
    note = (
        "Image, then the truth (the builder's instance map) and the prediction (the map that was scored), each "
        "nucleus outlined in its class colour (OpenCV contours of the instance maps; overlaps resolved as the "
        "binary maps of bPQ: the later channel on top). Missed: a true nucleus with no predicted nucleus of "
        f"IoU &gt; {panoptic.MATCH_IOU} on the binary maps, as bPQ pairs them; spurious: a predicted nucleus with "
        "no such true one; a prediction without classes is outlined in grey. The lists: the patches with the lowest bPQ, and for each class those with its lowest PQ "
        f"(patches without that class left out){chosen}."
    )
    anchor = html.escape(prefix.rstrip("_") or "run")
    parts = [f'<h3 id="{anchor}-gallery">Gallery</h3>', f'<p class="note">{note}</p>', _legend(prefix)]
    panels = 1 + 2 * len(labels)
    for name, positions in lists.items():
        title = "lowest bPQ" if name == "bPQ" else f"lowest PQ {name}"
        parts.append(f'<h3>{html.escape(title)}</h3><div data-list="{html.escape(name)}">')
        if not positions and not first["prediction"].classified:
            parts.append('<p class="note">The prediction has no classes: no PQ per class.</p>')
        elif not positions:
            parts.append('<p class="note">No patch of the split has this class in its truth.</p>')
        for position in positions:
            parts.append(_patch_figure(folder, prefix, runs, position, name, panels, drawn))
        parts.append("</div>")
    return "".join(parts)


def _patch_figure(folder, prefix, runs, position, list_name, panels, drawn):
    first = runs[next(iter(runs))]
    fold, index = first["rows"][position]
    patch = pim.patch_id(fold, index)
    key = (prefix, position)
    if key not in drawn:
        names, found = [], []
        for k, run in enumerate(runs.values()):
            image, maps, missed, spurious = patch_pictures(run, position)
            if not names:
                names.append(_save_rgb(folder, f"{prefix}{patch}.png", image))
            true_types = number_types(maps.true_instance, maps.true_semantic)
            pred_types = number_types(maps.pred_instance, maps.pred_semantic)
            if not run["prediction"].classified:
                pred_types[:] = 0  # no classes: grey
            truth = outline_panel(maps.true_instance, true_types, missed, "cross")
            pred = outline_panel(maps.pred_instance, pred_types, spurious, "fill")
            names.append(_save_palette(folder, f"{prefix}{patch}_truth{k}.png", truth))
            names.append(_save_palette(folder, f"{prefix}{patch}_pred{k}.png", pred))
            found.append((len(missed), len(spurious)))
        drawn[key] = names, found
    names, found = drawn[key]
    size = image_size = (pim.PATCH_SIZE, pim.PATCH_SIZE)
    cells = [f"<figure>{_img(names[0], f'{patch} image', image_size)}<figcaption>image</figcaption></figure>"]
    captions = []
    for k, (label, run) in enumerate(runs.items()):
        missed, spurious = found[k]
        suffix = f" {label}" if len(runs) > 1 else ""
        cells.append(
            f"<figure>{_img(names[1 + 2 * k], f'{patch} truth', size)}"
            f"<figcaption>truth: {missed} missed{html.escape(suffix)}</figcaption></figure>"
        )
        cells.append(
            f"<figure>{_img(names[2 + 2 * k], f'{patch} prediction', size)}"
            f"<figcaption>prediction{html.escape(suffix)}: {spurious} spurious</figcaption></figure>"
        )
        captions.append(("" if len(runs) == 1 else f"{label}: ") + _patch_numbers(run, position))
    value = first["scores"][position][-1 if list_name == "bPQ" else pim.NUCLEUS_CLASSES.index(list_name)]
    tissue = first["tissues"][position]
    numbers = "<br>".join(html.escape(c) for c in captions)
    return (
        f'<div class="patch" data-id="{patch}" data-position="{position}" data-value="{_data(value)}">'
        f"<b>{patch}</b> ({html.escape(tissue)})<br><small>{numbers}</small>"
        f'<div class="panels" style="--panels:{panels}">{"".join(cells)}</div></div>'
    )


def _protocol_table(summary, runs):
    """Each split's headline, per-class and per-tissue numbers beside their mean and std."""
    head = [_th("")] + [_th(label) for label in runs] + [_th("mean"), _th("std")]
    keys = [(path, name) for path, name, _, _ in HEADLINE]
    first = runs[next(iter(runs))]["result"]
    keys += [(("metrics", family, *inner), name) for name, family, inner in second_block(first)]
    keys += [(("per_class", n), f"PQ {n}") for n in pim.NUCLEUS_CLASSES]
    keys += [(("f1_per_class", n), f"F1 {n}") for n in pim.NUCLEUS_CLASSES]
    rows = []
    for path, name in keys:
        key = "protocol." + ".".join(path)
        row = [_th(name)] + [_cell(results.value_at(run["result"], path), key, label) for label, run in runs.items()]
        row += [_cell(results.value_at(summary[s], path), key, s) for s in ("mean", "std")]
        rows.append(row)
    tissues = [t for t in pim.TISSUES if _finite(summary["mean"]["per_tissue"][t]["mPQ"])
               or _finite(summary["mean"]["per_tissue"][t]["bPQ"])]  # fmt: skip
    for tissue in tissues:
        for k in ("mPQ", "bPQ"):
            path = ("per_tissue", tissue, k)
            row = [_th(f"{k} {tissue}")]
            key = "protocol." + ".".join(path)
            row += [_cell(results.value_at(run["result"], path), key, label) for label, run in runs.items()]
            row += [_cell(results.value_at(summary[s], path), key, s) for s in ("mean", "std")]
            rows.append(row)
    note = (
        "The three splits' numbers, their mean and their population standard deviation (ddof 0); "
        "a number one split does not have has no mean or std (n/a). Tissues without patches in every split are left out."
    )
    return f'<h2 id="protocol">Mean ± std over the splits</h2><p class="note">{note}</p>' + _table(
        head, rows, "protocol"
    )


def _section(folder, prefix, title, runs, count, drawn, comparison=None):
    anchor = html.escape(prefix.rstrip("_") or "run")
    parts = [f'<section id="{anchor}"><h2>{html.escape(title)}</h2>']
    parts += [_info(label if len(runs) > 1 else "", run["result"]) for label, run in runs.items()]
    parts.append(_headline(runs, comparison))
    parts.append(_classes(folder, prefix, runs))
    parts.append(_tissues(folder, prefix, runs))
    parts.append('<div class="row">')
    parts += [f"<div>{_confusion(folder, f'{prefix}{k}_', label, run, len(runs) > 1)}</div>"
              for k, (label, run) in enumerate(runs.items())]  # fmt: skip
    parts.append("</div>")
    parts.append(_gallery(folder, prefix, runs, count, drawn))
    parts.append("</section>")
    return "".join(parts)


def render(folder, runs, *, summary=None, comparison=None, patches=DEFAULT_PATCHES):
    """The page's HTML, its pictures written into folder.

    runs: {label: run}, each as evaluate's score_split gives it (its result, per-patch state, rows, files and
    Prediction, read again for the gallery). With comparison (--compare's "comparison" of --json), the runs
    are two predictions of one split, shown side by side in one section with each number's difference;
    otherwise one section per run (the protocol's splits), and summary (results.protocol_summary's
    {"mean", "std"}) after them.
    """
    drawn = {}
    # Each run with its per-patch table, as --per-patch writes it: the gallery's choice and captions.
    runs = {label: {**run, **dict(zip(("scores", "counts"), results.patch_table(run["families"], run["state"])))}
            for label, run in runs.items()}  # fmt: skip
    first = runs[next(iter(runs))]["result"]
    if comparison is not None:
        sections = [_section(folder, "", f"Split {first['split']}", runs, patches, drawn, comparison)]
    else:
        sections = [
            _section(folder, f"{label}_" if label else "", label or f"Split {first['split']}", {label: run},
                     patches, drawn)
            for label, run in runs.items()
        ]  # fmt: skip
    if summary is not None:
        sections.append(_protocol_table(summary, runs))
    nav = ""
    if len(sections) > 1:
        links = [f'<a href="#{html.escape(label)}">{html.escape(label)}</a>' for label in runs]
        nav = "<p>" + " · ".join(links + (['<a href="#protocol">mean ± std</a>'] if summary else [])) + "</p>"
    warn = ""
    if first["source"]["sample"]:
        warn = '<p class="warn">Scored on the built-in sample: FAKE patches, not PanNuke data.</p>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>evaluate report: {html.escape(first['split'])}</title><style>{CSS}</style></head><body>"
        f"<h1>Where the prediction fails</h1>{warn}{nav}"
        + "".join(sections)
        + f'<p class="note">pannuke-imagemask {html.escape(first["version"])} evaluate --report.</p></body></html>\n'
    )


def write_report(out_dir, runs, *, summary=None, comparison=None, patches=DEFAULT_PATCHES, force=False):
    """Write out_dir/index.html and its PNGs (see render), beside out_dir first and renamed into place whole.

    An existing non-empty out_dir is refused unless force; it is replaced only once the new one is complete.
    """
    out = os.path.abspath(out_dir)
    refuse_non_empty(out, force, "replace")
    with staging_dir(out) as tmp:
        page = render(tmp, runs, summary=summary, comparison=comparison, patches=patches)
        with open(os.path.join(tmp, PAGE), "w", encoding="utf-8") as f:
            f.write(page)
        refuse_non_empty(out, force, "replace")  # someone may have written there while we worked
        replace_tree(tmp, out)
    return out
