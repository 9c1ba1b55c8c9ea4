"""Speed and memory of `evaluate`: against the per-nucleus oracle, PanNuke's official script, and per layout.

    python benchmarks/bench_evaluate.py                                  # 400 fake patches: oracle, command
    python benchmarks/bench_evaluate.py --official ../PanNuke-metrics   # + the official script side by side
    python benchmarks/bench_evaluate.py --readers                        # + one row per prediction layout

Writes (or reuses, in --workdir) a fake fold in the real format and a perturbed prediction masks.npy.

- The command on all patches (one split holding them all) at 1 and 2 processes, in this process, against
  the oracle of the tests (one boolean mask per nucleus, as the official script) on the first patches;
  then at 1 process with --report (the page's charts and default gallery): what the report adds.
- --official DIR (a checkout of github.com/TissueImageAnalytics/PanNuke-metrics, its run.py unchanged):
  that script and `python -m convert evaluate` (also with --metrics all and --bootstrap 1000) as separate
  processes on the prediction in the official layout (float64, 6 channels), start-up included, run in turns
  --repeats times (the fastest of each counts), on a copy of the fold and prediction without the nuclei
  wholly covered by a later channel (the official script stops with an IndexError on those; every fake
  patch has one). Its mPQ and bPQ must equal the command's. docopt, which it imports only to read its
  three options, is stood in for, so it needs numpy, pandas and scipy only.
- --readers: the same prediction written in each layout a framework writes (HoVer-Net .npy, .mat and
  json/, COCO results, YOLO labels, cellpose and semantic PNGs, StarDist label TIFFs, HoVer-NeXt's output
  folders as zarr 2 writes them and as zarr 3 does, a CoNIC labels.npy, CellViT cells.json, QuPath
  GeoJSON) and scored, in this process, against the masks.npy row: what each reader costs. Before timing,
  the GeoJSON is checked to read back exactly the .npy layout's maps, and the contour layouts (hovernet-json,
  cellvit: one OpenCV outline per nucleus, holes and second pieces lost) to cover nearly the same pixels.

Memory is the peak anonymous RSS (RssAnon) summed over the process tree.
"""

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path[:0] = [ROOT, os.path.join(HERE, "..", "tests"), HERE]

import cv2
import numpy as np
import pq_oracle
import scipy.io
import tifffile
from bench import PeakMemory
from PIL import Image
from pycocotools import mask as mask_utils

import pannuke_imagemask as pim
from convert.__main__ import main as cli_main
from convert.formats.coco import image_id
from convert.formats.geojson import CLASSIFICATIONS
from convert.polygons import geojson_geometry, trace
from convert.predictions import open_prediction
from convert.results import SCORE_COLUMNS
from convert.sample import fold_paths, write_fold

# Runs the official run.py as its own __main__, with docopt's one call answered from our argv.
OFFICIAL_RUNNER = """
import os, runpy, sys, types
official, true_path, pred_path, save_path = sys.argv[1:5]
options = {"--true_path": true_path, "--pred_path": pred_path, "--save_path": save_path}
sys.modules["docopt"] = types.SimpleNamespace(docopt=lambda doc, version=None: options)
sys.path.insert(0, official)
runpy.run_path(os.path.join(official, "run.py"), run_name="__main__")
"""


def perturbed(truth, rng):
    """A plausible prediction: every nucleus shifted a little, some dropped, ids renumbered sparsely."""
    dy, dx = rng.integers(-3, 4, size=2)
    pred = np.roll(truth[..., :5], (int(dy), int(dx)), axis=(0, 1)).astype(np.uint16)
    for c in range(5):
        ids = np.unique(pred[..., c])[1:]
        dropped = ids[rng.random(len(ids)) < 0.1]
        pred[..., c][np.isin(pred[..., c], dropped)] = 0
    return pred


def write_array(path, shape, dtype, rows):
    """A .npy of shape written row by row from the iterable rows, renamed into place when complete."""
    out = np.lib.format.open_memmap(path + ".incomplete", mode="w+", dtype=dtype, shape=shape)
    for index, row in enumerate(rows):
        out[index] = row
    out.flush()
    del out
    os.replace(path + ".incomplete", path)


def write_prediction(path, masks, seed=0):
    rng = np.random.default_rng(seed)
    rows = (perturbed(masks[index], rng) for index in range(len(masks)))
    write_array(path, (len(masks), pim.PATCH_SIZE, pim.PATCH_SIZE, 5), np.uint16, rows)


def on_top(channels):
    """(instance map, type of each id 1..n) of class channels collapsed, later on top; covered nuclei gone."""
    instance = np.zeros(channels.shape[:2], dtype=np.int32)
    types = []
    top = np.full(channels.shape[:2], -1)
    for c in range(5):
        top[channels[..., c] != 0] = c
    for c in range(5):
        visible = np.where(top == c, channels[..., c], 0)
        for value in np.unique(visible)[1:]:
            types.append(c + 1)
            instance[visible == value] = len(types)
    return instance, np.array(types, dtype=np.int64)


def visible_only(channels):
    """The channels without the nuclei wholly covered by a later channel: what the official script can score."""
    out = np.array(channels)
    top = np.full(out.shape[:2], -1)
    for c in range(5):
        top[out[..., c] != 0] = c
    for c in range(5):
        values = out[..., c]
        covered = np.setdiff1d(np.unique(values), np.unique(values[top == c]))
        values[np.isin(values, covered[covered != 0])] = 0
    return out


def official_layout(channels):
    """(H, W, 6) float64 as PanNuke's own masks.npy: the 5 class channels, then channel 5 (1 where no nucleus)."""
    out = np.zeros((*channels.shape[:2], 6))
    out[..., :5] = channels
    out[..., 5] = ~channels.any(axis=-1)
    return out


def read_all(*paths):
    """Read files once so that every timed run reads them from the page cache, none from disk."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def command(data_dir, pred, num_proc, *extra):
    return ["evaluate", "--pred", pred, "--data-dir", data_dir, "--split-ratios", "0", "0", "1"] + [
        "--num-proc",
        str(num_proc),
        "--quiet",
        *extra,
    ]


def run_cli(argv):
    """Wall-clock and CPU seconds (this process: --num-proc 1 scores in it) and peak memory of one run."""
    with PeakMemory() as memory:
        start, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # the report table; the benchmark prints its own
            code = cli_main(argv)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if code != 0:
        raise RuntimeError(f"evaluate failed with exit code {code}")
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_anon": memory.peak}


def run_process(argv):
    """Wall-clock seconds, peak memory and stdout of a separate process: start-up included."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"seconds": seconds, "peak_rss_anon": memory.peak, "stdout": done.stdout}


def run_oracle(masks, pred, n):
    """The oracle reads the same memory-mapped arrays, patch by patch."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        scores = [pq_oracle.patch_scores(np.asarray(masks[i]), np.asarray(pred[i])) for i in range(n)]
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_anon": memory.peak, "scores": scores}


# ---------------------------------------------------------------------------------------------
# The official script, side by side.
# ---------------------------------------------------------------------------------------------


def official_inputs(workdir, paths, pred_path, n):
    """A copy of fold and prediction the official script can score, and its true_path / pred_path folders."""
    root = os.path.join(workdir, f"official64-{n}")  # 64: the prediction in the official float64 layout
    data_dir = os.path.join(root, "data")
    clean = fold_paths(data_dir, 1, "kaggle")
    true_dir, pred_dir = os.path.join(root, "true"), os.path.join(root, "pred")
    if not os.path.exists(os.path.join(pred_dir, "masks.npy")):
        shutil.rmtree(root, ignore_errors=True)
        for key in ("images", "types"):  # the truth's other files, unchanged
            os.makedirs(os.path.dirname(clean[key]), exist_ok=True)
            os.symlink(os.path.abspath(paths[key]), clean[key])
        os.makedirs(os.path.dirname(clean["masks"]), exist_ok=True)
        masks = np.lib.format.open_memmap(paths["masks"], mode="r")
        write_array(clean["masks"], masks.shape, masks.dtype, (visible_only(m) for m in masks))
        pred = np.lib.format.open_memmap(pred_path, mode="r")
        os.makedirs(pred_dir)
        rows = (official_layout(visible_only(p)) for p in pred)
        write_array(os.path.join(pred_dir, "masks.npy"), (*pred.shape[:3], 6), np.float64, rows)
        os.makedirs(true_dir)
        os.symlink(os.path.abspath(clean["masks"]), os.path.join(true_dir, "masks.npy"))
        os.symlink(os.path.abspath(paths["types"]), os.path.join(true_dir, "types.npy"))
    read_all(clean["masks"], os.path.join(pred_dir, "masks.npy"))
    return {"data_dir": data_dir, "true": true_dir, "pred": pred_dir, "save": os.path.join(root, "save")}


def official_rows(official, inputs, repeats):
    """The fastest of `repeats` turns of: the official script, evaluate --num-proc 1 and 2, and at one process
    evaluate --metrics all and evaluate --bootstrap 1000."""
    runs = {"official": [], "process_1": [], "process_2": [], "all_1": [], "bootstrap_1": []}
    extra = {"all_1": ["--metrics", "all"], "bootstrap_1": ["--bootstrap", "1000"]}
    result_path = os.path.join(os.path.dirname(inputs["save"]), "evaluate.json")
    os.makedirs(inputs["save"], exist_ok=True)
    official_argv = [sys.executable, "-c", OFFICIAL_RUNNER, official, inputs["true"], inputs["pred"], inputs["save"]]
    for _ in range(repeats):
        runs["official"].append(run_process(official_argv))
        for num_proc in (1, 2):
            argv = command(inputs["data_dir"], os.path.join(inputs["pred"], "masks.npy"), num_proc, "--json")
            runs[f"process_{num_proc}"].append(run_process([sys.executable, "-m", "convert", *argv, result_path]))
        for key, options in extra.items():
            argv = command(inputs["data_dir"], os.path.join(inputs["pred"], "masks.npy"), 1, *options)
            runs[key].append(run_process([sys.executable, "-m", "convert", *argv]))
    out = runs["official"][-1]["stdout"]
    official_numbers = {key: float(re.search(rf"Average {key}:(\S+)", out).group(1)) for key in ("mPQ", "bPQ")}
    with open(result_path) as f:
        ours = json.load(f)
    difference = max(abs(ours[key] - value) for key, value in official_numbers.items())
    if difference > 1e-12:
        raise RuntimeError(f"evaluate differs from the official script by {difference}: {official_numbers}")
    best = {key: min(r, key=lambda run: run["seconds"]) for key, r in runs.items()}
    for run in best.values():
        run.pop("stdout", None)
    return {
        **best,
        "all_seconds": {key: [run["seconds"] for run in r] for key, r in runs.items()},
        "official_numbers": official_numbers,
        "max_difference_to_official": difference,
    }


# ---------------------------------------------------------------------------------------------
# The same prediction in each layout a framework writes.
# ---------------------------------------------------------------------------------------------


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _polygon(mask):
    """The nucleus' outer contour as Ultralytics' masks2segments takes it: the longest, CHAIN_APPROX_SIMPLE."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return max(contours, key=len).reshape(-1, 2) if contours else np.zeros((0, 2))


def write_hovernext(folder, instance, classes, zarr_format):
    """HoVer-NeXt's output folder of one image (src/post_process.py `post_process_main`): `zarr.save` of the
    (1, H, W) int32 map as pinst_pp.zip (zarr 2: a ZipStore, Blosc lz4; zarr 3: a folder) and class_inst.json."""
    import zarr
    from numcodecs import Blosc

    os.makedirs(folder)
    path, array = os.path.join(folder, "pinst_pp.zip"), instance.astype(np.int32)[np.newaxis]
    if zarr_format == 2:
        store = zarr.storage.ZipStore(path, mode="w")
        zarr.save_array(store, array, zarr_format=2, compressor=Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE))
        store.close()
    else:
        zarr.save(path, array)
    with open(os.path.join(folder, "class_inst.json"), "w") as f:
        json.dump(classes, f)


def outline(instance, value):
    """(contour (n, 2) x, y of pixel centres, centroid [x, y]) of one nucleus as HoVer-Net's post_proc `process`
    finds them (the first contour of RETR_TREE on its box, the box's moments), or None under 3 points."""
    rows, cols = np.nonzero(instance == value)
    top, left = rows.min(), cols.min()
    crop = (instance[top : rows.max() + 1, left : cols.max() + 1] == value).astype(np.uint8)
    contour = cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0][0].reshape(-1, 2)
    if len(contour) < 3:
        return None
    moments = cv2.moments(crop)
    centroid = [moments["m10"] / moments["m00"] + left, moments["m01"] / moments["m00"] + top]
    bbox = [[int(top), int(left)], [int(rows.max()) + 1, int(cols.max()) + 1]]
    return (contour + (left, top)).tolist(), centroid, bbox


def write_contour_files(paths, stem, instance, types):
    """HoVer-Net's json/<id>.json (infer/base.py `__save_json`) and CellViT's pip <id>/cells.json of one patch;
    CellViT writes no file for a patch without cells."""
    nuc, cells = {}, []
    for value, kind in enumerate(types.tolist(), start=1):
        found = outline(instance, value)
        if found is None:  # post_proc skips contours of fewer than 3 points
            continue
        contour, centroid, bbox = found
        nuc[str(value)] = {"bbox": bbox, "centroid": centroid, "contour": contour, "type_prob": 0.9, "type": kind}
        cell = {"bbox": bbox, "centroid": np.rint(centroid).tolist(), "contour": contour, "type": kind}
        cells.append({**cell, "type_prob": 0.8, "patch_coordinates": [0, 0], "cell_status": 0, "edge_position": False})
    with open(os.path.join(paths["hovernet-json"], "json", f"{stem}.json"), "w") as f:
        json.dump({"mag": None, "nuc": nuc}, f)
    if cells:
        os.makedirs(os.path.join(paths["cellvit"], stem))
        type_map = {str(k + 1): name.capitalize() for k, name in enumerate(pim.NUCLEUS_CLASSES)}
        metadata = {"base_magnification": 40, "base_mpp": 0.25, "target_patch_mpp": 0.25}
        with open(os.path.join(paths["cellvit"], stem, "cells.json"), "w") as f:
            json.dump({"wsi_metadata": metadata, "type_map": type_map, "cells": cells}, f)


def write_geojson(path, instance, types):
    """A QuPath FeatureCollection of one patch: one detection a nucleus, its exact pixel-edge outline."""
    polygons = trace(instance)
    features = [
        {
            "type": "Feature",
            "geometry": geojson_geometry(polygons[value]),
            "properties": {"objectType": "detection", "classification": CLASSIFICATIONS[kind - 1]},
        }
        for value, kind in enumerate(types.tolist(), start=1)
        if value in polygons
    ]
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f, separators=(",", ":"))


def check_polygon_layouts(layouts, n):
    """{contour layout: share of the nucleus pixels it covers}, after raising unless geojson reads back exactly
    the hovernet layout's maps (exact outlines) and the contour layouts cover nearly the same nucleus pixels (an
    OpenCV outline holds neither holes nor second pieces)."""
    patches = [(pim.patch_id(1, index), image_id(1, index)) for index in range(n)]
    size = (pim.PATCH_SIZE, pim.PATCH_SIZE)
    exact = open_prediction(layouts["hovernet"], "hovernet", patches, size)
    readers = {
        name: open_prediction(layouts[name], name, patches, size) for name in ("geojson", "hovernet-json", "cellvit")
    }
    same, total = {name: 0 for name in readers}, 0
    for position in range(n):
        want = exact.read(position)
        got = readers["geojson"].read(position)
        for field in ("channels", "centroids", "types"):
            if not np.array_equal(getattr(got, field), getattr(want, field)):
                raise RuntimeError(f"geojson: patch {position}: {field} differ from the .npy layout's")
        nuclei = want.channels.any(axis=-1)
        total += int(nuclei.sum())
        for name, reader in readers.items():
            same[name] += int((reader.read(position).channels.any(axis=-1) & nuclei).sum())
    for name in ("hovernet-json", "cellvit"):
        if same[name] < 0.95 * total:
            raise RuntimeError(f"{name}: the contours cover {same[name] / total:.1%} of the nucleus pixels")
    return {name: same[name] / total for name in ("hovernet-json", "cellvit")}


def write_layouts(root, pred_path, n):
    """{layout: its --pred} of the prediction at pred_path written in every layout (reused if present)."""
    done = os.path.join(root, "complete-3")  # -3: with the hovernet-json, cellvit and geojson layouts
    paths = {
        "masks": pred_path,
        "hovernet": os.path.join(root, "hovernet"),
        "hovernet-mat": os.path.join(root, "hovernet-mat"),
        "coco": os.path.join(root, "coco_instances_results.json"),
        "yolo": os.path.join(root, "yolo"),
        "cellpose": os.path.join(root, "cellpose"),
        "semantic": os.path.join(root, "semantic"),
        "tiff": os.path.join(root, "stardist"),
        "hovernext": os.path.join(root, "hovernext"),
        "hovernext (zarr 3)": os.path.join(root, "hovernext-zarr3"),
        "conic": os.path.join(root, "labels.npy"),
        "hovernet-json": os.path.join(root, "hovernet-json"),
        "cellvit": os.path.join(root, "cellvit"),
        "geojson": os.path.join(root, "geojson"),
    }
    if os.path.exists(done):
        return paths
    shutil.rmtree(root, ignore_errors=True)
    folders = ("hovernet", "hovernet-mat/mat", "yolo/labels", "cellpose", "semantic", "stardist", "hovernet-json/json")
    for folder in (*folders, "cellvit", "geojson"):
        os.makedirs(os.path.join(root, folder))
    pred = np.lib.format.open_memmap(pred_path, mode="r")
    conic = np.lib.format.open_memmap(paths["conic"], mode="w+", dtype=np.int32, shape=(n, *pred.shape[1:3], 2))
    results = []
    for index in range(n):
        stem = pim.patch_id(1, index)
        instance, types = on_top(np.asarray(pred[index]))
        kinds = np.concatenate([[0], types])[instance]
        np.save(os.path.join(paths["hovernet"], f"{stem}.npy"), np.stack([instance, kinds], axis=-1).astype(np.int32))
        ids = np.arange(1, len(types) + 1)
        masks = [instance == k for k in ids]
        centroids = [[np.nonzero(m)[1].mean(), np.nonzero(m)[0].mean()] for m in masks]
        mat = {
            "inst_map": instance,
            "inst_uid": ids[:, None],
            "inst_type": types[:, None],
            "inst_centroid": np.array(centroids).reshape(-1, 2),
        }
        scipy.io.savemat(os.path.join(paths["hovernet-mat"], "mat", f"{stem}.mat"), mat)
        scores = np.linspace(0.99, 0.6, num=max(len(ids), 1))
        lines = []
        for mask, kind, score in zip(masks, types.tolist(), scores.tolist()):
            results.append({"image_id": stem, "category_id": kind, "segmentation": _rle(mask), "score": score})
            polygon = _polygon(mask)
            if len(polygon) >= 3:  # Ultralytics skips shorter segments
                values = [kind - 1, *(polygon / pim.PATCH_SIZE).ravel().tolist(), score]
                lines.append(("%g " * len(values)).rstrip() % tuple(values))
        if lines:  # Ultralytics and cellpose write no file for an image without detections
            with open(os.path.join(paths["yolo"], "labels", f"{stem}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
        if len(types):
            Image.fromarray(instance.astype(np.uint16)).save(os.path.join(paths["cellpose"], f"{stem}_cp_masks.png"))
        Image.fromarray(kinds.astype(np.uint8)).save(os.path.join(paths["semantic"], f"{stem}.png"))
        # StarDist's CLI: tifffile, zlib, int32 (scripts/predict2d.py).
        tifffile.imwrite(os.path.join(paths["tiff"], f"{stem}.stardist.tif"), instance, compression="zlib")
        classes = {str(i): [int(t), [0, float(y), float(x)]] for i, t, (x, y) in zip(ids, types, centroids)}
        for key, zarr_format in (("hovernext", 2), ("hovernext (zarr 3)", 3)):
            write_hovernext(os.path.join(paths[key], stem), instance, classes, zarr_format)
        conic[index] = np.stack([instance, kinds], axis=-1)
        write_contour_files(paths, stem, instance, types)
        write_geojson(os.path.join(paths["geojson"], f"{stem}.geojson"), instance, types)
    conic.flush()
    with open(paths["coco"], "w") as f:
        json.dump(results, f)
    open(done, "w").close()
    return paths


def reader_rows(data_dir, layouts, repeats):
    """The fastest of `repeats` in-process runs of the command on each layout, --num-proc 1, in turns (each
    round runs every layout once), so that a busy spell of a shared machine falls on all of them alike."""
    runs = {name: [] for name in layouts}
    for _ in range(repeats):
        for name, path in layouts.items():
            layout = name.split(" ")[0]  # "hovernext (zarr 3)": the hovernext layout of another writer
            runs[name].append(run_cli(command(data_dir, path, 1, "--pred-format", layout)))
    return {name: min(r, key=lambda run: run["cpu_seconds"]) for name, r in runs.items()}


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=400, help="patches in the fake fold (default 400)")
    parser.add_argument("--oracle-patches", type=int, default=60, help="patches the oracle scores (default 60)")
    parser.add_argument("--official", metavar="DIR", help="a checkout of PanNuke-metrics: time its run.py too")
    parser.add_argument("--readers", action="store_true", help="also time each prediction layout")
    parser.add_argument("--repeats", type=int, default=2, help="turns of the side-by-side runs (default 2)")
    parser.add_argument("--workdir", default=os.path.join(HERE, "out"), help="scratch folder")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    n = args.patches
    data_dir = os.path.join(args.workdir, f"fold1-{n}")
    paths = fold_paths(data_dir, 1, "kaggle")
    if not os.path.exists(paths["types"]):
        os.makedirs(args.workdir, exist_ok=True)
        copies = 2 if args.official else 1
        needed = (
            n * pim.PATCH_SIZE * pim.PATCH_SIZE * ((3 + 6 * copies) * 8 + 5 * 2 * copies)
        )  # float64 fold, uint16 prediction
        free = shutil.disk_usage(args.workdir).free
        if free < needed * 1.2:
            sys.exit(f"{args.workdir}: {free / 1e9:.1f} GB free, the fold and prediction need {needed / 1e9:.1f} GB")
        start = time.perf_counter()
        write_fold(data_dir, 1, n, "kaggle")
        print(f"wrote fake fold of {n} patches in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    masks = np.lib.format.open_memmap(paths["masks"], mode="r")
    pred_path = os.path.join(args.workdir, f"evaluate-pred-{n}.npy")
    if not os.path.exists(pred_path):
        write_prediction(pred_path, masks)
    pred = np.lib.format.open_memmap(pred_path, mode="r")
    read_all(paths["masks"], pred_path)

    per_patch = os.path.join(args.workdir, "evaluate-per-patch.csv")
    k = min(args.oracle_patches, n)
    r = {"patches": n, "oracle_patches": k, "cpus": os.cpu_count(), "numpy": np.__version__}
    run_oracle(masks, pred, min(k, 4))  # warm-up: imports, allocator
    r["oracle"] = run_oracle(masks, pred, k)
    for num_proc in (1, 2):
        r[f"evaluate_{num_proc}"] = run_cli(command(data_dir, pred_path, num_proc, "--per-patch", per_patch))
    with open(per_patch, newline="") as f:
        rows = list(csv.reader(f))[1 : k + 1]
    fast = np.array([[float(v) if v else np.nan for v in row[4 : 4 + len(SCORE_COLUMNS)]] for row in rows])
    oracle = np.array(r["oracle"].pop("scores"))
    r["max_difference_to_oracle"] = float(np.nanmax(np.abs(fast - oracle), initial=0.0))
    if not np.array_equal(np.isnan(fast), np.isnan(oracle)) or r["max_difference_to_oracle"] > 1e-12:
        raise RuntimeError(f"evaluate differs from the oracle by {r['max_difference_to_oracle']}")

    # --report on top of the same scoring: its charts and the default gallery, drawn in the parent.
    report_dir = os.path.join(args.workdir, "evaluate-report")
    r["evaluate_report"] = run_cli(command(data_dir, pred_path, 1, "--report", report_dir, "--force"))
    names = os.listdir(report_dir)
    r["report_bytes"] = sum(os.path.getsize(os.path.join(report_dir, name)) for name in names)
    r["report_patches_drawn"] = len([name for name in names if name.endswith("_truth0.png")])

    def line(name, run, rate, ratio):
        return f"| {name} | {run['seconds']:.2f} | {rate:.1f} | {ratio} | {run['peak_rss_anon'] / 2**20:.0f} MiB |"

    header = [
        "| run | seconds | patches/s | ratio | peak anonymous RSS (tree) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    oracle_rate = k / r["oracle"]["seconds"]
    agreement = f"largest difference to the oracle {r['max_difference_to_oracle']:.1e}"
    lines = [f"Fake fold of {n} patches, {os.cpu_count()} CPUs, oracle on the first {k}; {agreement}:", "", *header]
    lines.append(line("oracle: one boolean mask per nucleus (tests/pq_oracle.py)", r["oracle"], oracle_rate, "1.0x"))
    for num_proc in (1, 2):
        rate = n / r[f"evaluate_{num_proc}"]["seconds"]
        name = f"evaluate --num-proc {num_proc}, in this process"
        lines.append(line(name, r[f"evaluate_{num_proc}"], rate, f"{rate / oracle_rate:.1f}x the oracle"))
    added = r["evaluate_report"]["seconds"] - r["evaluate_1"]["seconds"]
    name = (
        f"evaluate --num-proc 1 --report DIR, in this process ({r['report_patches_drawn']} patches drawn, "
        f"{r['report_bytes'] / 1e6:.1f} MB)"
    )
    lines.append(
        line(name, r["evaluate_report"], n / r["evaluate_report"]["seconds"], f"+{added:.2f} s for the report")
    )

    if args.official:
        inputs = official_inputs(args.workdir, paths, pred_path, n)
        r["official"] = official_rows(os.path.abspath(args.official), inputs, args.repeats)
        o = r["official"]
        title = (
            f"Side by side, separate processes, start-up included, fastest of {args.repeats} turns; mPQ and bPQ "
            f"equal the official script's to {o['max_difference_to_official']:.1e}:"
        )
        lines += [
            "",
            title,
            "",
            *header,
            line("official run.py (PanNuke-metrics)", o["official"], n / o["official"]["seconds"], "1.0x"),
        ]
        for num_proc in (1, 2):
            run = o[f"process_{num_proc}"]
            ratio = o["official"]["seconds"] / run["seconds"]
            lines.append(
                line(f"python -m convert evaluate --num-proc {num_proc}", run, n / run["seconds"], f"{ratio:.1f}x")
            )
        default = o["process_1"]["seconds"]
        for key, label in (("all_1", "--metrics all"), ("bootstrap_1", "--bootstrap 1000")):
            run = o[key]
            ratio = f"{o['official']['seconds'] / run['seconds']:.1f}x; {run['seconds'] / default:.2f}x the default"
            lines.append(line(f"python -m convert evaluate {label}", run, n / run["seconds"], ratio))

    if args.readers:
        layouts = write_layouts(os.path.join(args.workdir, f"layouts-{n}"), pred_path, n)
        r["contour_coverage"] = check_polygon_layouts(layouts, n)
        r["readers"] = reader_rows(data_dir, layouts, args.repeats)
        base = r["readers"]["masks"]["seconds"]
        base_cpu = r["readers"]["masks"]["cpu_seconds"]
        lines += ["", "The same prediction in each layout, --num-proc 1, in this process, in turns, least CPU time"]
        lines += [f"of {args.repeats} (CPU time: the share of the machine others take does not count). geojson reads"]
        coverage = ", ".join(f"{name} {share:.1%}" for name, share in r["contour_coverage"].items())
        lines += [
            f"back the hovernet layout's maps exactly; share of its nucleus pixels the contours cover: {coverage}.",
            "",
        ]
        columns = ["--pred-format", "CPU seconds", "CPU time vs masks", "wall seconds", "wall vs masks", "peak RSS"]
        lines += ["| " + " | ".join(columns) + " |"]
        lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, run in r["readers"].items():
            lines.append(
                f"| {name} | {run['cpu_seconds']:.2f} | {run['cpu_seconds'] / base_cpu:.2f}x | {run['seconds']:.2f} | "
                f"{run['seconds'] / base:.2f}x | {run['peak_rss_anon'] / 2**20:.0f} MiB |"
            )

    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
