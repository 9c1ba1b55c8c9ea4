"""Never a stale cache, a download failure that says why, a build killed mid-way that recovers."""

import functools
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import PART1_PATCHES, raw_fold
from reference import reference_labels, reference_split

import pannuke_imagemask as pim
from convert.__main__ import main
from convert.sample import fake_tissues, write_fold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYS_FORWARD = (
    "use a mirror (PANNUKE_BASE_URL or the config's base_url), or download the zips by hand, unpack them and "
    "pass their folder as --data-dir (data_dir=)"
)


def _sizes(dataset_dict):
    return {split: ds.num_rows for split, ds in dataset_dict.items()}


@pytest.fixture
def counted_generation(monkeypatch):
    """How many patches the builder generated (in this process), to tell a prepare from a cache hit."""
    generated = []
    original = pim.PanNukeImageMask._generate_examples

    def counting(self, shards):
        for key, example in original(self, shards):
            generated.append(key)
            yield key, example

    monkeypatch.setattr(pim.PanNukeImageMask, "_generate_examples", counting)
    return generated


def test_a_fold_replaced_under_the_same_path_is_prepared_again(tmp_path, counted_generation):
    data, cache = tmp_path / "data", str(tmp_path / "cache")
    write_fold(str(data), 1, PART1_PATCHES, "kaggle")
    first = pim.build("part1", data_dir=str(data), cache_dir=cache)
    assert _sizes(first) == {"train": 19, "validation": 4, "test": 1}
    assert len(counted_generation) == PART1_PATCHES

    counted_generation.clear()
    again = pim.build("part1", data_dir=str(data), cache_dir=cache)  # nothing touched: the cache
    assert counted_generation == []
    assert again["train"].cache_files == first["train"].cache_files

    write_fold(str(data), 1, 30, "kaggle")  # other content, another patch count, the same paths
    replaced = pim.build("part1", data_dir=str(data), cache_dir=cache)
    assert len(counted_generation) == 30
    expected = reference_split({1: fake_tissues(30, 1)}, 0, (0.8, 0.15, 0.05))
    assert {s: set(zip(ds["fold"], ds["index"])) for s, ds in replaced.items()} == expected
    _, masks, _ = raw_fold(str(data))
    row = replaced["train"][len(replaced["train"]) - 1]
    assert row["nuclei"] == reference_labels(masks[row["index"]])[2]


def test_a_touched_file_is_prepared_again_and_the_export_follows(tmp_path, counted_generation):
    data, cache = tmp_path / "data", str(tmp_path / "cache")
    paths = write_fold(str(data), 1, PART1_PATCHES, "kaggle")
    assert main(["export", "--data-dir", str(data), "--out", str(tmp_path / "a"), "--cache-dir", cache, "--quiet"]) == 0
    assert len(counted_generation) == PART1_PATCHES
    status = os.stat(paths["types"])
    os.utime(paths["types"], ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    counted_generation.clear()
    assert main(["export", "--data-dir", str(data), "--out", str(tmp_path / "b"), "--cache-dir", cache, "--quiet"]) == 0
    assert len(counted_generation) == PART1_PATCHES


def test_the_sample_reuses_its_cache(tmp_path, counted_generation):
    cache = str(tmp_path / "cache")
    for out in ("a", "b"):
        assert main(["export", "--sample", "--out", str(tmp_path / out), "--cache-dir", cache, "--quiet"]) == 0
    assert len(counted_generation) == 36


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trusted_files(cache):
    """Files a later run could take for a finished download or dataset (locks are not)."""
    return sorted(
        os.path.relpath(os.path.join(d, f), cache)
        for d, _, files in os.walk(cache)
        for f in files
        if not f.endswith(".lock")
    )


@pytest.fixture
def empty_server(tmp_path):
    """A real HTTP server on 127.0.0.1 that has no file at all: every download is a 404."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_404_names_the_url_the_cause_and_the_ways_forward(empty_server, tmp_path, capsys, monkeypatch):
    url = empty_server + "/mirror"
    monkeypatch.setenv("PANNUKE_BASE_URL", url)
    cache = tmp_path / "cache"
    assert main(["export", "--out", str(tmp_path / "out"), "--cache-dir", str(cache), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"pannuke-imagemask export: error: {url}/fold_1.zip: download failed: HTTP 404 File not found; "
        f"{WAYS_FORWARD}\n"
    )
    assert _trusted_files(cache) == []
    assert not (tmp_path / "out").exists()


def test_a_closed_port_names_the_url_the_cause_and_the_ways_forward(tmp_path, capsys, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("PANNUKE_BASE_URL", url)
    cache = tmp_path / "cache"
    assert main(["export", "--out", str(tmp_path / "out"), "--cache-dir", str(cache), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"pannuke-imagemask export: error: {url}/fold_1.zip: download failed: connection refused; {WAYS_FORWARD}\n"
    )
    assert _trusted_files(cache) == []


@pytest.mark.parametrize(
    "cause, said",
    [
        (socket.gaierror(-2, "Name or service not known"), "host not found (Name or service not known)"),
        (TimeoutError("read timed out"), "timed out"),
        (ConnectionResetError(104, "Connection reset by peer"), "[Errno 104] Connection reset by peer"),
    ],
)
def test_other_download_failures_are_named(cause, said):
    url = "https://mirror.example/fold_1.zip"
    try:
        try:
            raise cause
        except OSError as exc:
            raise FileNotFoundError(url) from exc
    except FileNotFoundError as exc:
        error = pim.download_failure(url, exc)
    assert isinstance(error, ConnectionError)
    assert str(error) == f"{url}: download failed: {said}; {WAYS_FORWARD}"


def test_a_build_killed_mid_way_then_run_again_is_complete(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_fold(str(data), 1, 400, "kaggle")
    script = (
        "import pannuke_imagemask as pim; "
        f"pim.build('part1', data_dir={str(data)!r}, cache_dir={str(cache)!r})"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        written = [f for d, _, files in os.walk(cache) for f in files if f.endswith(".arrow") or "incomplete" in d]
        if written:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the build ended before it could be killed"
    time.sleep(0.5)  # well inside the 400-patch train split
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    rebuilt = pim.build("part1", data_dir=str(data), cache_dir=str(cache))
    expected = reference_split({1: fake_tissues(400, 1)}, 0, (0.8, 0.15, 0.05))
    assert {s: set(zip(ds["fold"], ds["index"])) for s, ds in rebuilt.items()} == expected
    _, masks, _ = raw_fold(str(data))
    for split in rebuilt.values():
        last = split[len(split) - 1]
        assert last["nuclei"] == reference_labels(masks[last["index"]])[2]
