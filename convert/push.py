"""Publish PanNuke to the Hugging Face Hub as Parquet plus a dataset card, or write that repository to --local-dir.

Both write the same folder: each config's Parquet shards in a folder of its own (part1/, all/, folds/),
named and cut as datasets' push_to_hub names and cuts them, the card README.md (every config the
repository holds, `part1` first and default), id2label.json and preview.png. --local-dir moves that
folder into place; otherwise one commit adds its files to the Hub repository and deletes the stale files
of the configs pushed, so the other configs' files stay. The loading script is never uploaded: datasets
>= 4 refuses repositories that hold one.
"""

import argparse
import collections
import json
import logging
import os
import shutil
import string
import sys
import tempfile
from importlib import resources

import datasets
import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi, get_token

import pannuke_imagemask as pim

from . import __version__
from .common import (
    CONFIGS,
    NotEnoughSpaceError,
    add_source_arguments,
    build_from_args,
    check_free_space,
    command_parser,
    disk_bytes,
    nuclei_per_class,
    refuse_non_empty,
    run_cli,
    staging_dir,
)
from .pictures import write_samples

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = "500MB"
ID2LABEL = "id2label.json"
PREVIEW = "preview.png"
CARD_FIELDS = {
    "license": "cc-by-nc-sa-4.0",
    "task_categories": ["image-segmentation"],
    "task_ids": ["instance-segmentation", "semantic-segmentation"],
    "tags": ["histopathology", "pathology", "nuclei", "medical", "biology", "H&E", "pannuke"],
    "pretty_name": "PanNuke (image, semantic mask, instance mask, nuclei)",
    "size_categories": ["1K<n<10K"],
}


def config_entry(config, dataset_dict):
    """The card's `configs` item for a config: data files where write_shards puts them."""
    return {
        "config_name": config,
        "data_files": [{"split": split, "path": f"{config}/{split}-*"} for split in dataset_dict],
    }


def info_entry(config, dataset_dict):
    """The card's `dataset_info` item: features and split sizes."""
    first = next(iter(dataset_dict.values()))
    splits = datasets.SplitDict()
    for split, dataset in dataset_dict.items():
        splits.add(datasets.SplitInfo(name=split, num_bytes=dataset.data.nbytes, num_examples=dataset.num_rows))
    info = datasets.DatasetInfo(features=first.features, splits=splits)
    return {"config_name": config, **info._to_yaml_dict()}


def _by_name(entries):
    if isinstance(entries, dict):
        entries = [entries]
    return {entry.get("config_name", "default"): entry for entry in entries or []}


def card_metadata(built, existing=None):
    """YAML metadata: fixed fields, then configs and dataset_info merged with an existing card's."""
    existing = existing or {}
    configs = _by_name(existing.get("configs"))
    infos = _by_name(existing.get("dataset_info"))
    for config, dataset_dict in built.items():
        configs[config] = config_entry(config, dataset_dict)
        infos[config] = info_entry(config, dataset_dict)
    order = [c for c in CONFIGS if c in configs] + sorted(set(configs) - set(CONFIGS))
    default = order[0]
    config_list = []
    for name in order:
        entry = {key: value for key, value in configs[name].items() if key != "default"}
        if name == default:
            entry["default"] = True
        config_list.append(entry)
    return {**CARD_FIELDS, "configs": config_list, "dataset_info": [infos[name] for name in order if name in infos]}


def id2label():
    """transformers' id2label: the semantic_mask values and their names."""
    return {"0": "background", **{str(k + 1): name for k, name in enumerate(pim.NUCLEUS_CLASSES)}}


def split_statistics(dataset):
    """(nuclei per class, patches per tissue, patches without nuclei) of one split, counted from its rows."""
    nuclei = [0] * len(pim.NUCLEUS_CLASSES)
    empty = 0
    for batch in dataset.select_columns(["nuclei"]).with_format("arrow").iter(batch_size=1000):
        column = batch["nuclei"].combine_chunks()
        empty += int((column.value_lengths().to_numpy(zero_copy_only=False) == 0).sum())
        labels = column.flatten().field("label").to_numpy(zero_copy_only=False)
        nuclei = [a + b for a, b in zip(nuclei, nuclei_per_class(labels))]
    tissues = collections.Counter(pim.TISSUES[t] for t in dataset["tissue"])
    return nuclei, tissues, empty


def statistics_tables(built):
    """Markdown tables, per config being pushed: nuclei per class, patches per tissue, patches without nuclei."""
    sections = []
    for config, dataset_dict in built.items():
        splits = list(dataset_dict)
        stats = {split: split_statistics(ds) for split, ds in dataset_dict.items()}
        head = "| | " + " | ".join(f"`{s}`" for s in splits) + " |\n| --- |" + " ---: |" * len(splits)
        classes = [
            f"| {name} | " + " | ".join(f"{stats[s][0][k]:,}" for s in splits) + " |"
            for k, name in enumerate(pim.NUCLEUS_CLASSES)
        ]
        classes.append("| **all nuclei** | " + " | ".join(f"{sum(stats[s][0]):,}" for s in splits) + " |")
        empty = (
            "| patches without nuclei | "
            + " | ".join(
                f"{stats[s][2]:,} of {dataset_dict[s].num_rows:,} ({100 * stats[s][2] / dataset_dict[s].num_rows:.1f}%)"
                for s in splits
            )
            + " |"
        )
        tissues = [
            f"| {tissue} | " + " | ".join(f"{stats[s][1].get(tissue, 0):,}" for s in splits) + " |"
            for tissue in pim.TISSUES
        ]
        sections.append(
            f"Config `{config}`, nuclei per class (after the overlap rule) and patches without nuclei:\n\n"
            + "\n".join([head, *classes, empty])
            + f"\n\nConfig `{config}`, patches per tissue:\n\n"
            + "\n".join([head, *tissues])
        )
    return "\n\n".join(sections)


def write_extras(folder, built):
    """id2label.json and the preview picture (the export's samples montage) at the repository root."""
    with open(os.path.join(folder, ID2LABEL), "w") as f:
        json.dump(id2label(), f, indent=2)
        f.write("\n")
    write_samples(folder, next(iter(built.values())), file_name=PREVIEW)


def _split_tables(metadata):
    lines = []
    for info in metadata["dataset_info"]:
        splits = info.get("splits", [])
        sizes = ", ".join(f"{s['name']} {s['num_examples']}" for s in splits)
        lines.append(f"| `{info['config_name']}` | {sizes} |")
    return "| config | splits (patches) |\n| --- | --- |\n" + "\n".join(lines)


SAMPLE_NOTICE = (
    "> **This repository holds the built-in FAKE sample of pannuke-imagemask: synthetic patches in the PanNuke "
    "format, not PanNuke data.** Use it to try the format, never to train or evaluate.\n\n"
)


# A --local-dir written without --repo-id: the card's code names a placeholder and says to replace it.
REPO_ID_PLACEHOLDER = "OWNER/NAME"
REPO_ID_NOTE = (
    f"`{REPO_ID_PLACEHOLDER}` in the code of this card stands for the repository's id: replace it with your "
    "repository's id (for example `your-name/pannuke-imagemask`) when you upload this folder to the Hub."
)


def render_card(repo_id, metadata, split_seed, split_ratios, sample=False, built=None):
    """The dataset card: YAML metadata, then the body from card_template.md (and a notice for the fake sample).

    Without a repo_id the code names REPO_ID_PLACEHOLDER and the card says to replace it.
    """
    template = string.Template(resources.files(__package__).joinpath("card_template.md").read_text())
    names = [entry["config_name"] for entry in metadata["configs"]]
    body = template.substitute(
        repo_id=repo_id or REPO_ID_PLACEHOLDER,
        repo_id_note="" if repo_id else f"{REPO_ID_NOTE}\n\n",
        tool_version=__version__,
        config_list=", ".join(f"`{name}`" for name in names),
        default_config=names[0],
        tissue_list=", ".join(pim.TISSUES),
        split_tables=_split_tables(metadata),
        statistics=statistics_tables(built or {}) or "(not counted in this push)",
        id2label=ID2LABEL,
        preview=PREVIEW,
        split_seed=split_seed,
        split_ratios=", ".join(str(r) for r in split_ratios),
        homepage=pim._HOMEPAGE,
        citation=pim._CITATION,
    )
    if sample:
        metadata = {**metadata, "size_categories": ["n<1K"], "tags": [*metadata["tags"], "synthetic"]}
        title, rest = body.split("\n", 1)
        body = f"{title}\n\n{SAMPLE_NOTICE}{rest.lstrip()}"
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n{body}"


def card_for(args, built, existing):
    """The card of a push: this run's configs merged into an existing card's metadata."""
    return render_card(
        args.repo_id,
        card_metadata(built, existing),
        args.split_seed,
        args.split_ratios,
        sample=args.sample,
        built=built,
    )


def write_shards(dataset_dict, config, folder, max_shard_size):
    """Parquet shards named as push_to_hub names them, cut by its rule (Arrow bytes / max shard size, plus one).

    config/split-00000-of-0000N.parquet: the card's data_files (config_entry) match them. Nothing to embed:
    the images are bytes already.
    """
    max_bytes = datasets.utils.py_utils.convert_file_size_to_int(max_shard_size)
    target = os.path.join(folder, config)
    os.makedirs(target, exist_ok=True)
    for split, dataset in dataset_dict.items():
        num_shards = int(dataset.data.nbytes / max_bytes) + 1
        for index in range(num_shards):
            shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
            shard.to_parquet(os.path.join(target, f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))


def build_configs(args, configs):
    """{config: DatasetDict} of the configs asked for, in that order."""
    return {config: build_from_args(_with_config(args, config))[0] for config in configs}


def repository_bytes(built):
    """Disk space the repository folder needs: Parquet of already-compressed PNG bytes takes about the Arrow size."""
    return disk_bytes(ds.data.nbytes for dd in built.values() for ds in dd.values())


def write_repository(folder, args, built):
    """The data of the repository folder: every config's shards, id2label.json, preview.png (the card comes last)."""
    for config, dataset_dict in built.items():
        write_shards(dataset_dict, config, folder, args.max_shard_size)
    write_extras(folder, built)


def write_card(folder, args, built, existing):
    """README.md of the repository folder: this run's configs merged into the existing card's metadata."""
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(card_for(args, built, existing))


def read_card_metadata(path):
    """The YAML metadata of a card file as a dict."""
    with open(path) as f:
        return DatasetCard(f.read()).data.to_dict()


def folder_files(folder):
    """Every file under folder as a repository path (posix), sorted."""
    return sorted(
        os.path.relpath(os.path.join(d, name), folder).replace(os.sep, "/")
        for d, _, names in os.walk(folder)
        for name in names
    )


def commit_operations(folder, repo_files, configs):
    """Add every file of the folder; delete the pushed configs' files in the repository that it no longer holds."""
    new = folder_files(folder)
    stale = sorted(path for path in set(repo_files) - set(new) if "/" in path and path.split("/", 1)[0] in configs)
    return [CommitOperationAdd(path, os.path.join(folder, path)) for path in new] + [
        CommitOperationDelete(path) for path in stale
    ]


def push_local(args, configs):
    local_dir = os.path.abspath(args.local_dir)
    refuse_non_empty(local_dir, args.force, "update")
    built = build_configs(args, configs)
    check_free_space(local_dir, repository_bytes(built))
    with staging_dir(local_dir) as tmp:
        write_repository(tmp, args, built)
        card_path = os.path.join(local_dir, "README.md")
        write_card(tmp, args, built, read_card_metadata(card_path) if os.path.exists(card_path) else None)
        os.makedirs(local_dir, exist_ok=True)
        for name in sorted(os.listdir(tmp)):  # config folders and the card replace theirs; others stay
            destination = os.path.join(local_dir, name)
            if os.path.isdir(destination):
                shutil.rmtree(destination)
            os.replace(os.path.join(tmp, name), destination)
    logger.info("wrote %s (%s) to %s", args.repo_id or REPO_ID_PLACEHOLDER, ", ".join(configs), local_dir)
    return 0


def push_hub(args, configs, token):
    """The --local-dir folder, written to a temporary folder, then committed to the Hub in one commit."""
    api = HfApi(token=token)
    built = build_configs(args, configs)
    with tempfile.TemporaryDirectory(prefix="pannuke-imagemask-push.") as tmp:
        try:
            check_free_space(tmp, repository_bytes(built))
        except NotEnoughSpaceError as exc:
            hint = "push stages the repository folder there first: set TMPDIR to a folder with room"
            raise NotEnoughSpaceError(exc.errno, f"{exc.strerror}; {hint}") from None
        write_repository(tmp, args, built)
        # The card merges with the repository's: read it at a revision, commit on top of that revision only
        # (parent_commit), so that a concurrent push of another config is refused, not silently undone.
        api.create_repo(args.repo_id, repo_type="dataset", private=args.private, exist_ok=True)
        revision = api.repo_info(args.repo_id, repo_type="dataset").sha
        repo_files = api.list_repo_files(args.repo_id, repo_type="dataset", revision=revision)
        existing = None
        if "README.md" in repo_files:
            card = api.hf_hub_download(args.repo_id, "README.md", repo_type="dataset", revision=revision)
            existing = read_card_metadata(card)
        write_card(tmp, args, built, existing)
        api.create_commit(
            repo_id=args.repo_id,
            repo_type="dataset",
            operations=commit_operations(tmp, repo_files, configs),
            commit_message=f"Upload {', '.join(configs)} (pannuke-imagemask {__version__})",
            parent_commit=revision,
        )
    logger.info("pushed %s (%s)", args.repo_id, ", ".join(configs))
    return 0


def _with_config(args, config):
    return argparse.Namespace(**{**vars(args), "config": config})


def _get_parser():
    parser = command_parser("push", __doc__)
    parser.add_argument(
        "--repo-id",
        help=f"OWNER/NAME of the dataset repository; required to push, optional with --local-dir (the card then "
        f"says {REPO_ID_PLACEHOLDER} and how to replace it)",
    )
    add_source_arguments(parser, several_configs=True)
    parser.add_argument(
        "--private", action="store_true", help="create the repository as private (an existing one keeps its visibility)"
    )
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest Parquet shard")
    parser.add_argument("--local-dir", help="write the repository folder here instead of pushing (no network)")
    parser.add_argument("--force", action="store_true", help="update a non-empty --local-dir")
    return parser


def push(args):
    configs = list(dict.fromkeys(args.config or ["part1"]))
    if args.repo_id is not None and "/" not in args.repo_id:
        raise ValueError(f"--repo-id must be OWNER/NAME, got {args.repo_id!r}")
    datasets.utils.py_utils.convert_file_size_to_int(args.max_shard_size)  # a bad size fails before any work
    if args.local_dir:
        return push_local(args, configs)
    token = get_token()
    if not token:
        raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, or use --local-dir")
    return push_hub(args, configs, token)


def main(argv=None):
    parser = _get_parser()
    args = parser.parse_args(argv)
    if not args.repo_id and not args.local_dir:
        parser.error("--repo-id is required to push to the Hub (or pass --local-dir to write the repository folder)")
    return run_cli("push", push, args)


if __name__ == "__main__":
    sys.exit(main())
