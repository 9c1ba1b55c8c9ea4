"""The code blocks and links of the documentation: found here, run by tests/ (lean) and consumer_tests/."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A block importing one of these needs the consumer tier's venv (the `consumers` extra), not the test extra.
CONSUMER_IMPORTS = ("torch", "torchvision", "transformers", "ultralytics", "nnunetv2", "cellpose", "accelerate")
_CONSUMER_IMPORT = re.compile(rf"^\s*(import|from)\s+({'|'.join(CONSUMER_IMPORTS)})\b", re.MULTILINE)


def python_blocks(text):
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def needs_consumer_tier(block):
    """Whether the block imports a training framework (run by consumer_tests/, counted by tests/)."""
    return _CONSUMER_IMPORT.search(block) is not None


def doc_files():
    """README.md and docs/*.md, sorted, relative to the repository root."""
    docs = os.path.join(ROOT, "docs")
    names = sorted(f"docs/{name}" for name in os.listdir(docs) if name.endswith(".md")) if os.path.isdir(docs) else []
    return ["README.md", *names]


def run_blocks(blocks, replacements, tmp_path):
    """Run each code block in a fresh interpreter (in tmp_path), with the Hub replaced by local folders."""
    # hf_hub_download's stand-in: a local folder laid out like the Hub repository. my_model: the user's model
    # in the evaluate example of docs/evaluate.md; here one that predicts no nucleus.
    preamble = (
        "import os, huggingface_hub, numpy\n"
        "huggingface_hub.hf_hub_download = lambda repo_id, filename, **kw: os.path.join(repo_id, filename)\n"
        "my_model = lambda image: numpy.zeros((256, 256, 5), numpy.int32)\n"
    )
    env = dict(
        os.environ, PYTHONPATH=ROOT, HF_DATASETS_CACHE=str(tmp_path / "hf"), HF_DATASETS_DISABLE_PROGRESS_BARS="1"
    )
    for block in blocks:
        for old, new in replacements.items():
            block = block.replace(old, new)
        result = subprocess.run(
            [sys.executable, "-c", preamble + block],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{block}\n{result.stderr[-3000:]}"


def export_named_trees(blocks, data_dir, cache_dir, cwd):
    """Export, into cwd, each tree a block reads by the docs' naming, `pannuke-<format>` (from data_dir)."""
    from convert.__main__ import main
    from convert.formats import FORMAT_NAMES

    for name in sorted({m for block in blocks for m in re.findall(r"\bpannuke-([a-z]+)\b", block)}):
        if name in FORMAT_NAMES and not os.path.exists(os.path.join(cwd, f"pannuke-{name}")):
            argv = ["export", "--format", name, "--data-dir", data_dir, "--cache-dir", cache_dir, "--quiet"]
            assert main([*argv, "--out", os.path.join(cwd, f"pannuke-{name}")]) == 0
