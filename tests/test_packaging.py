"""A non-editable install: the console script works from any folder, no generic `convert` package is installed,
and `infos` does not write into site-packages."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_install_has_a_unique_import_name_and_a_working_console_script(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    # From a copy: setuptools builds in the source folder. --no-deps: --help needs none of them.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = {"cwd": elsewhere, "capture_output": True, "text": True, "timeout": 60}

    helped = subprocess.run([str(env_dir / "bin" / "pannuke-imagemask"), "--help"], check=False, **run)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("pannuke-imagemask: export PanNuke")

    probe = "import importlib.util as u; print(u.find_spec('convert') is None, u.find_spec('pannuke_convert') is None)"
    found = subprocess.run([python, "-c", probe], check=False, **run)
    assert found.stdout.split() == ["True", "False"]
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=False, **run
    )
    installed = sorted(
        name for name in os.listdir(site.stdout.strip()) if not name.endswith(".dist-info") and name != "__pycache__"
    )
    assert installed == ["pannuke_convert", "pannuke_imagemask.py"]
    package = os.path.join(site.stdout.strip(), "pannuke_convert")
    shipped = sorted(
        os.path.relpath(os.path.join(d, f), package).replace(os.sep, "/")
        for d, _, files in os.walk(package)
        for f in files
        if "__pycache__" not in d
    )
    source = sorted(
        os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "convert")).replace(os.sep, "/")
        for d, _, files in os.walk(os.path.join(ROOT, "convert"))
        for f in files
        if "__pycache__" not in d
    )
    assert shipped == source  # every module, every format, the card template

    # infos is a maintainer's tool: installed, its default would be site-packages/dataset_infos.json.
    # The dependencies come from this interpreter's site-packages, after the install's own.
    with open(os.path.join(site.stdout.strip(), "test-dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    script = str(env_dir / "bin" / "pannuke-imagemask")
    refused = subprocess.run([script, "infos"], check=False, **run)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        f"pannuke-imagemask infos: error: no checkout to hold dataset_infos.json ({package} is an installed copy): "
        "pass --out PATH\n"
    )
    assert not os.path.exists(os.path.join(site.stdout.strip(), "dataset_infos.json"))
    written = subprocess.run([script, "infos", "--out", str(elsewhere / "infos.json"), "--quiet"], check=False, **run)
    assert written.returncode == 0, written.stderr
    with open(os.path.join(ROOT, "dataset_infos.json")) as f:
        assert (elsewhere / "infos.json").read_text() == f.read()
