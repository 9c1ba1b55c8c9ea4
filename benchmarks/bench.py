"""Speed and memory of the builder (and the export) against a bare loop, measured in one run.

    python benchmarks/bench.py                  # a fake Part 1: 2,656 patches, 12.5 GB of float64
    python benchmarks/bench.py --patches 300    # quicker

Writes a fake fold in the real format (kept for later runs), then times, against a fixed yardstick (the
bare per-patch loop of release 1.0: memory-mapped read, its checks and conversions, Pillow PNG at zlib
level 1, no `datasets`): the bare loop of today's code, the builder at num_proc 1 and 2, a cold export
(a fresh `python -m convert export` process, builder cache empty) at 1 and 2 processes against the
yardstick's export loop, the export with the cache warm, every other --format, and the PNG encoders alone.
Memory is the peak anonymous RSS (RssAnon) summed over the process tree: mapped file pages are page
cache, not the tool's memory.
"""

import argparse
import json
import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import io
import subprocess

import numpy as np
from PIL import Image

import pannuke_imagemask as pim
from convert.__main__ import main as cli_main
from convert.formats.imagemask import render_mask
from convert.sample import fold_paths, write_fold

FORMATS = (
    "coco",
    "yolo",
    "hovernet",
    "pannuke",
    "cellvit",
    "nnunet",
    "cellpose",
    "geojson",
    "hovernet-mat",
)  # timed against the imagemask export at --num-proc 1


def _rss_anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def tree_rss_anon_kb(pid):
    """RssAnon of a process and all its descendants, in kB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += _rss_anon_kb(current)
        stack.extend(_children(current))
    return total


class PeakMemory:
    """Samples the process tree's anonymous RSS in a thread; .peak is the maximum in bytes."""

    def __init__(self, interval=0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_anon_kb(os.getpid()) * 1024)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_anon_kb(os.getpid()) * 1024)


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# --- the yardstick: release 1.0's per-patch code, frozen here so that later changes are measured against it --


def _yardstick_image(image):
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("non-finite")
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        raise ValueError("range")
    return np.rint(values).astype(np.uint8)


def _yardstick_ids(mask):
    values = np.asarray(mask)
    if not np.isfinite(values).all() or (values != np.floor(values)).any():
        raise ValueError("values")
    low, high = values.min(), values.max()
    if low < 0 or high > 65535:
        raise ValueError("range")
    return values[..., :5].astype(np.uint16)


def _yardstick_labels(ids):
    nonzero = ids != 0
    foreground = nonzero.any(axis=-1)
    winner = 4 - np.argmax(nonzero[..., ::-1], axis=-1)
    semantic = np.where(foreground, winner + 1, 0).astype(np.uint8)
    source = np.take_along_axis(ids, winner[..., None], axis=-1)[..., 0]
    keys = winner[foreground].astype(np.int64) * 65536 + source[foreground]
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    instance = np.zeros(ids.shape[:2], dtype=np.uint16)
    instance[foreground] = inverse + 1
    count = len(unique_keys)
    ys, xs = np.nonzero(foreground)
    area = np.bincount(inverse, minlength=count)
    x0, y0 = np.full(count, 256), np.full(count, 256)
    x1, y1 = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    np.minimum.at(x0, inverse, xs)
    np.minimum.at(y0, inverse, ys)
    np.maximum.at(x1, inverse, xs)
    np.maximum.at(y1, inverse, ys)
    labels = unique_keys // 65536
    nuclei = [
        {"id": k + 1, "label": int(labels[k]), "area": int(area[k]), "bbox": [int(x0[k]), int(y0[k]), 0, 0]}
        for k in range(count)
    ]
    return semantic, instance, nuclei


def _pillow_png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def yardstick_loop(paths, n):
    """Release 1.0's bare builder loop: read, check, convert, three Pillow PNGs."""
    images, masks = pim.open_fold(paths)
    total = 0
    for index in range(n):
        image, ids = _yardstick_image(images[index]), _yardstick_ids(masks[index])
        semantic, instance, _ = _yardstick_labels(ids)
        total += len(_pillow_png(image)) + len(_pillow_png(semantic)) + len(_pillow_png(instance))
    return total


def yardstick_export_loop(paths, n, out):
    """Release 1.0's bare export loop: read, check, convert, image + colour mask as Pillow PNGs, write."""
    images, masks = pim.open_fold(paths)
    os.makedirs(out, exist_ok=True)
    for index in range(n):
        image, ids = _yardstick_image(images[index]), _yardstick_ids(masks[index])
        semantic, instance, _ = _yardstick_labels(ids)
        with open(os.path.join(out, f"{index:05d}.png"), "wb") as f:
            f.write(_pillow_png(image))
        with open(os.path.join(out, f"{index:05d}_mask.png"), "wb") as f:
            f.write(_pillow_png(render_mask(semantic, instance, "color")))
    return dir_bytes(out)


def encoder_alone(paths, n, encode):
    """Seconds to encode the first n images of the fold (already converted) with one encoder: the PNG floor."""
    images, _ = pim.open_fold(paths)
    patches = [np.rint(images[index]).astype(np.uint8) for index in range(n)]
    start = time.perf_counter()
    for patch in patches:
        encode(patch)
    return time.perf_counter() - start


def cold_export(data_dir, workdir, num_proc):
    """A whole `python -m convert export` in a fresh process with an empty builder cache: start-up included."""
    cache, out = os.path.join(workdir, "cold-cache"), os.path.join(workdir, "cold-export")
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    command = [sys.executable, "-m", "convert", "export", "--data-dir", data_dir, "--out", out]
    command += ["--cache-dir", cache, "--num-proc", str(num_proc), "--quiet"]
    env = dict(os.environ, PYTHONPATH=root)
    subprocess.run(command, cwd=root, env=env, check=True)
    written = dir_bytes(out)
    shutil.rmtree(cache)
    shutil.rmtree(out)
    return written


def bare_builder_loop(paths, n):
    """What the builder does per patch, without datasets: read, check, convert, encode three PNGs."""
    images, masks = pim.open_fold(paths)
    total = 0
    for index in range(n):
        image, ids = pim.read_patch(images, masks, index, paths)
        semantic, instance, _ = pim.ids_to_labels(ids)
        total += len(pim.encode_image_png(image)) + len(pim.encode_semantic_png(semantic))
        total += len(pim.encode_png(instance))
    return total


def bare_export_loop(paths, n, out):
    """What an export does per patch, without datasets: read, convert, encode image + colour mask, write."""
    images, masks = pim.open_fold(paths)
    os.makedirs(out, exist_ok=True)
    for index in range(n):
        image, ids = pim.read_patch(images, masks, index, paths)
        semantic, instance, _ = pim.ids_to_labels(ids)
        with open(os.path.join(out, f"{index:05d}.png"), "wb") as f:
            f.write(pim.encode_image_png(image))
        with open(os.path.join(out, f"{index:05d}_mask.png"), "wb") as f:
            f.write(pim.encode_png(render_mask(semantic, instance, "color")))
    return dir_bytes(out)


def measure(function, *args):
    """{"seconds", "peak_rss_anon", "output_bytes"} of function(*args), which returns the bytes it wrote."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        written = function(*args)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_anon": memory.peak, "output_bytes": written}


def run_export(data_dir, cache_dir, out, num_proc, export_format="imagemask"):
    shutil.rmtree(out, ignore_errors=True)
    argv = ["export", "--out", out, "--data-dir", data_dir, "--cache-dir", cache_dir, "--num-proc", str(num_proc)]
    argv += ["--format", export_format]
    code = cli_main([*argv, "--quiet"])
    if code != 0:
        raise RuntimeError(f"export failed with exit code {code}")
    return dir_bytes(out)


class TimedBuilder(pim.PanNukeImageMask):
    """The builder, noting when the first example is asked for, so start-up can be left out."""

    first_example_at = None

    def _generate_examples(self, shards):
        if TimedBuilder.first_example_at is None:
            TimedBuilder.first_example_at = time.perf_counter()
        yield from super()._generate_examples(shards)


def run_builder(data_dir, cache_dir, num_proc):
    shutil.rmtree(cache_dir, ignore_errors=True)
    TimedBuilder.first_example_at = None
    result = measure(_prepare, data_dir, cache_dir, num_proc)
    if TimedBuilder.first_example_at is not None:  # set in this process only when num_proc is 1
        result["seconds_after_startup"] = _prepare.end - TimedBuilder.first_example_at
    return result


def _prepare(data_dir, cache_dir, num_proc):
    builder = TimedBuilder(config_name="part1", data_dir=data_dir, cache_dir=cache_dir)
    builder.download_and_prepare(num_proc=num_proc)
    _prepare.end = time.perf_counter()
    return dir_bytes(cache_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--patches", type=int, default=pim.FOLD_SIZES[1], help="patches in the fake fold (default 2656)"
    )
    parser.add_argument("--workdir", default=os.path.join(os.path.dirname(__file__), "out"), help="scratch folder")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    n = args.patches
    data_dir = os.path.join(args.workdir, f"fold1-{n}")
    paths = fold_paths(data_dir, 1, "kaggle")
    if not os.path.exists(paths["types"]):
        start = time.perf_counter()
        write_fold(data_dir, 1, n, "kaggle")
        print(f"wrote fake fold of {n} patches in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    source_bytes = sum(os.path.getsize(p) for p in paths.values())
    cache_dir = os.path.join(args.workdir, "cache")
    out = os.path.join(args.workdir, "export")

    r = {"patches": n, "source_bytes": source_bytes, "cpus": os.cpu_count(), "numpy": np.__version__}
    for path in paths.values():  # every run reads the fold from page cache, none from disk
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
    yardstick_loop(paths, min(n, 32))  # warm-up: imports, allocator, first page faults
    bare_builder_loop(paths, min(n, 32))
    r["yardstick"] = measure(yardstick_loop, paths, n)
    r["bare_loop"] = measure(bare_builder_loop, paths, n)
    for num_proc in (1, 2):
        r[f"builder_{num_proc}"] = run_builder(data_dir, cache_dir, num_proc)
    r["yardstick_export"] = measure(yardstick_export_loop, paths, n, out)
    shutil.rmtree(out)
    for num_proc in (1, 2):
        r[f"cold_export_{num_proc}"] = measure(cold_export, data_dir, args.workdir, num_proc)
    floor_n = min(n, 500)
    r["encoders"] = {
        "patches": floor_n,
        "pillow_level1_ms": 1000 * encoder_alone(paths, floor_n, _pillow_png) / floor_n,
        "project_ms": 1000 * encoder_alone(paths, floor_n, pim.encode_image_png) / floor_n,
    }
    # The export rows run with the builder cache warm, against a bare export loop. The timed builder
    # above is another class, with a cache of its own, so warm the real one first (not timed).
    pim.build("part1", data_dir=data_dir, cache_dir=cache_dir)
    r["bare_export"] = measure(bare_export_loop, paths, n, out)
    for num_proc in (1, 2):
        r[f"export_{num_proc}"] = measure(run_export, data_dir, cache_dir, out, num_proc)
    for export_format in FORMATS:
        r[f"export_{export_format}"] = measure(run_export, data_dir, cache_dir, out, 1, export_format)
    shutil.rmtree(out)

    def rate(key, seconds="seconds"):
        return n / r[key][seconds]

    rows = [
        ("yardstick: 1.0's bare loop, read + convert + 3 Pillow PNGs", "yardstick", rate("yardstick"), "1.00x"),
        (
            "bare loop of today's code",
            "bare_loop",
            rate("bare_loop"),
            f"{rate('bare_loop') / rate('yardstick'):.2f}x yardstick",
        ),
        (
            "builder, num_proc=1, start-up excluded",
            "builder_1",
            rate("builder_1", "seconds_after_startup"),
            f"{rate('builder_1', 'seconds_after_startup') / rate('yardstick'):.2f}x yardstick",
        ),
        (
            "builder, num_proc=1, whole prepare",
            "builder_1",
            rate("builder_1"),
            f"{rate('builder_1') / rate('yardstick'):.2f}x yardstick",
        ),
        (
            "builder, num_proc=2, whole prepare",
            "builder_2",
            rate("builder_2"),
            f"{rate('builder_2') / rate('builder_1'):.2f}x num_proc=1",
        ),
        (
            "yardstick export loop: 1.0's read + convert + 2 Pillow PNGs + write",
            "yardstick_export",
            rate("yardstick_export"),
            "1.00x",
        ),
        (
            "cold export --num-proc 1 (new process, cache empty)",
            "cold_export_1",
            rate("cold_export_1"),
            f"{rate('cold_export_1') / rate('yardstick_export'):.2f}x yardstick export",
        ),
        (
            "cold export --num-proc 2 (new process, cache empty)",
            "cold_export_2",
            rate("cold_export_2"),
            f"{rate('cold_export_2') / rate('cold_export_1'):.2f}x --num-proc 1",
        ),
        ("bare export loop of today's code", "bare_export", rate("bare_export"), "base for warm export"),
        (
            "export --num-proc 1, cache warm",
            "export_1",
            rate("export_1"),
            f"{rate('export_1') / rate('bare_export'):.2f}x bare export",
        ),
        (
            "export --num-proc 2, cache warm",
            "export_2",
            rate("export_2"),
            f"{rate('export_2') / rate('export_1'):.2f}x --num-proc 1",
        ),
    ]
    rows += [
        (
            f"export --format {export_format} --num-proc 1, cache warm",
            f"export_{export_format}",
            rate(f"export_{export_format}"),
            f"{r[f'export_{export_format}']['seconds'] / r['export_1']['seconds']:.2f}x imagemask time",
        )
        for export_format in FORMATS
    ]
    lines = [
        f"Fake fold of {n} patches ({source_bytes / 1e9:.1f} GB float64), {os.cpu_count()} CPUs, one run:",
        "",
        "| run | patches/s | ratio | peak anonymous RSS (tree) | output |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, key, value, ratio in rows:
        lines.append(
            f"| {name} | {value:.1f} | {ratio} | {r[key]['peak_rss_anon'] / 2**20:.0f} MiB | "
            f"{r[key]['output_bytes'] / 1e6:.0f} MB |"
        )
    encoders = r["encoders"]
    floor = (
        f"PNG encoding of the RGB image alone ({encoders['patches']} patches): Pillow zlib level 1 "
        f"{encoders['pillow_level1_ms']:.2f} ms/patch, the project's encoder {encoders['project_ms']:.2f} ms/patch."
    )
    lines += ["", floor]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
