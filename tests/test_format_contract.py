"""What every format promises, for every format name the package has (a new format module is tested here too).

The estimate bounds what is written; two processes write the very bytes one writes; an option the format
does not take is a usage error; verify names a missing, an extra and a changed file, and a damaged file of
any kind in one line (never a traceback). What is particular to a format: tests/test_format_<name>.py.
"""

import io
import json
import os

import numpy as np
import pytest
from pannuke_fixtures import REPORTS, copy_tree, run_export
from PIL import Image

import pannuke_imagemask as pim
from convert import export as export_module
from convert.__main__ import main
from convert.formats import FORMAT_NAMES, get_format

# A value other than the default of each option some formats take, and how the command line spells it.
OPTIONS = {
    "size": ("--size", "128"),
    "mask_style": ("--mask-style", "instance"),
    "image_format": ("--image-format", "jpg"),
}


def _variants(name):
    """The option sets each format is exported with here: none, then each option it takes on its own."""
    return [()] + [OPTIONS[key] for key in ("size", "mask_style", "image_format") if key in get_format(name).takes]


def _files(tree):
    """{relative path: bytes} of every file of a tree."""
    found = {}
    for dirpath, _, names in os.walk(tree):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                found[os.path.relpath(os.path.join(dirpath, name), tree)] = f.read()
    return found


def _verify(tree, cache, capsys):
    capsys.readouterr()
    code = main(["verify", str(tree), "--cache-dir", cache, "--quiet"])
    return code, capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    "name, options, config",
    [(n, o, "part1") for n in FORMAT_NAMES for o in _variants(n)] + [(n, (), "folds") for n in FORMAT_NAMES],
)
def test_the_estimate_bounds_the_bytes_written(name, options, config, export_tree, kaggle_part1, three_folds, cache):
    tree = export_tree(name, *options, config=config)
    data_dir = kaggle_part1 if config == "part1" else three_folds
    dataset_dict = pim.build(config, data_dir=data_dir, cache_dir=cache)
    manifest = json.loads((tree / "export.json").read_text())
    estimated = sum(get_format(name).estimate(dataset_dict, {key: manifest[key] for key in OPTIONS}))
    written = sum(len(data) for path, data in _files(tree).items() if path not in REPORTS)
    assert 0 < written <= estimated


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_two_processes_write_the_bytes_one_writes(name, export_tree, kaggle_part1, cache, tmp_path, monkeypatch):
    # Tasks of 4 patches: the two workers take turns within every split, so that a file several patches
    # fill (pannuke's arrays) is written by both, each its own rows.
    monkeypatch.setattr(export_module, "TASK_PATCHES", 4)
    assert run_export(tmp_path / name, kaggle_part1, cache, "--format", name, "--num-proc", "2") == 0
    one, two = _files(export_tree(name)), _files(tmp_path / name)
    manifests = [json.loads(files.pop("export.json")) for files in (one, two)]
    for manifest in manifests:
        manifest.pop("created")
    assert (manifests[0].pop("num_proc"), manifests[1].pop("num_proc")) == (1, 2)
    assert manifests[0] == manifests[1]
    assert sorted(one) == sorted(two) and len(one) > len(REPORTS)
    assert [path for path in sorted(one) if one[path] != two[path]] == []


@pytest.mark.parametrize("name, key", [(n, k) for n in FORMAT_NAMES for k in OPTIONS if k not in get_format(n).takes])
def test_an_option_the_format_does_not_take_is_a_usage_error(name, key, tmp_path, capsys):
    flag, value = OPTIONS[key]
    with pytest.raises(SystemExit) as caught:
        main(["export", "--out", str(tmp_path / "o"), "--sample", "--format", name, flag, value])
    assert caught.value.code == 2
    takers = ", ".join(n for n in FORMAT_NAMES if key in get_format(n).takes)
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(f"error: {flag} applies to --format {takers} only, not {name}")
    )
    assert not (tmp_path / "o").exists()


def _png_pixel(path):
    """One pixel of a PNG changed by one level (or channel value), the file re-encoded by Pillow."""
    with Image.open(path) as image:
        pixels = np.array(image)
    pixels[100, 100] = pixels[100, 100] + 1 if pixels[100, 100].max() < 200 else pixels[100, 100] - 1
    Image.fromarray(pixels).save(path)


def _npy_value(path):
    array = np.load(path, mmap_mode="r+")
    array.reshape(array.shape[0], -1)[0, 7] += 1  # the first row's eighth value
    array.flush()


def _label_value(path):
    """inst_map[0, 0] + 1 in a CellViT label: its first array's bytes start at a fixed offset."""
    from convert.formats.cellvit import LABEL_PREFIX

    data = bytearray(path.read_bytes())
    value = int.from_bytes(data[len(LABEL_PREFIX) : len(LABEL_PREFIX) + 4], "little", signed=True)
    data[len(LABEL_PREFIX) : len(LABEL_PREFIX) + 4] = (value + 1).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(data))


def _coco_category(path):
    document = json.loads(path.read_text())
    document["annotations"][0]["category_id"] = 1 + document["annotations"][0]["category_id"] % 5
    path.write_text(json.dumps(document))


def _geojson_class(path):
    document = json.loads(path.read_text())
    document["features"][0]["properties"]["class"] = "dead"
    path.write_text(json.dumps(document))


def _mat_value(path):
    import scipy.io

    arrays = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    arrays["inst_map"][0, 0] += 1
    scipy.io.savemat(path, arrays, do_compression=True)


def _mat_other():
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"x": np.zeros(2)})
    return buffer.getvalue()


def _text_character(path):
    text = path.read_text()
    path.write_text(text[:2] + ("1" if text[2] != "1" else "2") + text[3:])


# Per format: a file of the train split's first patch (fold1_00000), how it is changed, what verify says.
CHANGED = {
    "cellpose": ("train/fold1_00000_masks.png", _png_pixel, "1 of 65536 pixels differ"),
    "cellvit": ("fold0/labels/0_0.npy", _label_value, "inst_map: 1 of 65536 values differ"),
    "coco": (
        "annotations/instances_train.json",
        _coco_category,
        "annotations differ ({n} entries, expected {n}; first differing id 1)",
    ),
    "hovernet": ("train/fold1_00000.npy", _npy_value, "1 of 327680 values differ"),
    "imagemask": ("train/masks/fold1_00000.png", _png_pixel, "1 of 65536 pixels differ"),
    "nnunet": ("labelsTr/fold1_00000.png", _png_pixel, "1 of 65536 pixels differ"),
    "pannuke": ("train/images.npy", _npy_value, "row 0 (fold1_00000): 1 values differ"),
    "yolo": ("labels/train/fold1_00000.txt", _text_character, "line 1 differs from column 3"),
    "geojson": ("train/fold1_00000.geojson", _geojson_class, "features differ ("),
    "hovernet-mat": ("train/Labels/fold1_00000.mat", _mat_value, "inst_map: 1 of 65536 values differ"),
    "conic": ("train/labels.npy", _npy_value, "row 0 (fold1_00000): 1 values differ"),
}


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_verify_names_a_missing_an_extra_and_a_changed_file(name, export_tree, cache, tmp_path, capsys):
    assert name in CHANGED, f"add a changed file of {name} to CHANGED"
    tree = copy_tree(export_tree(name), tmp_path)
    assert _verify(tree, cache, capsys) == (0, [])
    changed, change, message = CHANGED[name]
    missing = min(path for path in _files(tree) if path not in REPORTS and path != changed)
    os.remove(tree / missing)
    (tree / "notes.txt").write_text("beside export.json")
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "notes.txt").write_text("deep down")
    change(tree / changed)
    code, out = _verify(tree, cache, capsys)
    assert code == 1
    assert out[:3] == [
        f"{missing}: missing",
        "a/b/notes.txt: not part of the export",
        "notes.txt: not part of the export",
    ]
    if "{n}" in message:  # how many annotations the split has: read from the file itself
        message = message.format(n=len(json.loads((tree / changed).read_text())["annotations"]))
    (line,) = out[3:]
    assert line.startswith(f"{changed}: {message}"), line


# The release whose files of a format differ from those of every earlier one, written out.
CHANGED_IN = {"coco": "1.3.0", "imagemask": "1.3.0", "yolo": "1.2.0"}


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_a_tree_from_before_the_formats_last_change_says_to_export_again(name, export_tree, cache, tmp_path, capsys):
    assert get_format(name).changed_in == CHANGED_IN.get(name)
    tree = copy_tree(export_tree(name), tmp_path)
    manifest = json.loads((tree / "export.json").read_text())
    (tree / "export.json").write_text(json.dumps({**manifest, "version": "1.1.9"}))
    if name in CHANGED_IN:  # every file would differ: one line says why
        assert _verify(tree, cache, capsys) == (
            1, [f"export.json: written by 1.1.9; {name} files changed in {CHANGED_IN[name]}: export again"]
        )  # fmt: skip
    else:  # its files are those of every release
        assert _verify(tree, cache, capsys) == (0, [])


# --- damaged files: every kind of file of every format, the same damages where they apply -------------------

GARBAGE = b"\x00\x01garbage\xff\n"
RGB = ("RGB", (256, 256, 3))


def _png_1x1():
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_float32():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(2, np.float32))
    return buffer.getvalue()


# Per format, one file of each kind it writes (the train split's first patch), with what the kind says of it.
DAMAGED = {
    "cellpose": {"train/fold1_00000.png": ("png", *RGB), "train/fold1_00000_masks.png": ("png", "I;16", (256, 256))},
    "cellvit": {
        "fold0/images/0_0.png": ("png", *RGB),
        "fold0/labels/0_0.npy": ("label",),
        "fold0/types.csv": ("text",),
        "dataset_config.yaml": ("text",),
    },
    "coco": {"train/images/100000.png": ("png", *RGB), "annotations/instances_train.json": ("json", "an object")},
    "hovernet": {"train/fold1_00000.npy": ("npy", "int32", (256, 256, 5)), "type_info.json": ("json", "an object")},
    "imagemask": {
        "train/images/fold1_00000.png": ("png", *RGB),
        "train/masks/fold1_00000.png": ("png", *RGB),
        "train/metadata.jsonl": ("rows",),
    },
    "nnunet": {
        "imagesTr/fold1_00000_0000.png": ("png", *RGB),
        "labelsTr/fold1_00000.png": ("png", "L", (256, 256)),
        "dataset.json": ("json", "an object"),
        "splits_final.json": ("json", "a list"),
    },
    "pannuke": {
        "train/images.npy": ("npy", "float64", (19, 256, 256, 3)),
        "train/masks.npy": ("npy", "float64", (19, 256, 256, 6)),
        "train/types.npy": ("npy", "<U13", (19,)),
        "train/ids.txt": ("text",),
    },
    "yolo": {
        "images/train/fold1_00000.png": ("png", *RGB),
        "labels/train/fold1_00000.txt": ("text",),
        "data.yaml": ("yaml", "an object"),
    },
    "geojson": {"train/fold1_00000.png": ("png", *RGB), "train/fold1_00000.geojson": ("json", "an object")},
    "hovernet-mat": {"train/Images/fold1_00000.png": ("png", *RGB), "train/Labels/fold1_00000.mat": ("mat",)},
    "conic": {
        "train/images.npy": ("npy", "uint8", (19, 256, 256, 3)),
        "train/labels.npy": ("npy", "int32", (19, 256, 256, 2)),
        "train/types.npy": ("npy", "<U13", (19,)),
        "train/patch_info.csv": ("text",),
        "train/counts.csv": ("text",),
    },
}


def _first_line_only(data):
    return data.split(b"\n")[0] + b"\n"


def _damage(kind, damage, data):
    """(the damaged bytes, [what verify must say of them]), for a file of that kind and original bytes."""
    kind, *detail = kind
    if damage == "empty":
        new = b""
    elif damage == "garbage":
        new = GARBAGE
    elif damage == "truncated":
        new = _first_line_only(data) if kind in ("text", "rows", "yaml") else data[: len(data) // 2]
    else:  # another file of the same family: a tiny PNG, a float32 .npy, the other JSON/YAML container
        new = {"png": _png_1x1(), "jpeg": _png_1x1(), "npy": _npy_float32(), "label": _npy_float32()}.get(kind)
        new = _mat_other() if kind == "mat" else new
        if new is None:
            new = b"{}" if detail == ["a list"] else b"[]" if kind == "json" else b"- a\n"
    if kind in ("png", "jpeg"):
        name = kind.upper()
        message = {
            "truncated": f"is a damaged or truncated {name}",
            "other": f"is RGB (1, 1, 3), expected {detail[0]} {detail[1]}" if kind == "png" else "is not a JPEG file",
        }.get(damage, f"is not a {name} file")
    elif kind == "npy":
        dtype, shape = detail
        message = {
            "truncated": f"truncated: {len(new)} bytes, header {shape} {dtype} needs {len(data)}",
            "other": f"is float32 (2,), expected {dtype} {shape}",
        }.get(damage, "is not a .npy file")
    elif kind == "label":
        message = (
            f"truncated: {len(new)} bytes, a label file has {len(data)}"
            if damage in ("empty", "truncated")
            else "is not the .npy of a pickled dict (header differs)"
        )
    elif kind == "mat":
        message = (
            "holds x, expected inst_centroid, inst_map, inst_type, type_map"
            if damage == "other"
            else "is not a readable .mat file"
        )
    elif damage == "garbage":
        message = "is not UTF-8 text"
    elif kind == "rows":  # a table, one row a line: each row not found is named, then each foreign one
        rows = data.decode().splitlines()
        kept = {"empty": 0, "truncated": 1, "other": 0}[damage]
        return new, [f"row missing or changed: {row}" for row in rows[kept:]] + (
            ["unexpected row: - a"] if damage == "other" else []
        )
    elif kind == "text":
        lines = data.decode().split("\n")
        wanted = lines[1] if damage == "truncated" else lines[0]
        got = {"empty": "", "truncated": "", "other": "- a"}[damage]
        number = 2 if damage == "truncated" else 1
        if len(wanted) <= 80:
            message = f"line {number} is {got!r}, expected {wanted!r}"
        else:
            message = f"line {number} differs from column 1: {got!r}, expected {wanted[:40]!r}"
    elif damage == "other":
        message = f"holds {'an object' if detail == ['a list'] else 'a list'}, expected {detail[0]}"
    elif kind == "json":
        try:
            json.loads(new.decode())
        except ValueError as exc:
            message = f"cannot be read as JSON ({exc})"
    elif damage == "empty":  # YAML: an empty document is null
        message = "holds null, expected an object"
    else:  # YAML: the first line alone is a mapping of one key (data.yaml: train, then val, test, names)
        return new, ["val missing", "test missing", "names missing"]
    return new, [message]


def test_every_format_lists_each_kind_of_file_it_writes():
    assert sorted(DAMAGED) == sorted(FORMAT_NAMES)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "other"])
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_a_damaged_file_of_any_kind_is_one_line(name, damage, export_tree, cache, tmp_path, capsys):
    tree = copy_tree(export_tree(name), tmp_path)
    expected = []
    for path, kind in DAMAGED[name].items():
        new, messages = _damage(kind, damage, (tree / path).read_bytes())
        (tree / path).write_bytes(new)
        expected += [f"{path}: {message}" for message in messages]
    code, out = _verify(tree, cache, capsys)
    assert code == 1
    assert sorted(out) == sorted(expected)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "other"])
def test_a_damaged_jpeg_is_one_line(damage, export_tree, cache, tmp_path, capsys):
    tree = copy_tree(export_tree("imagemask", "--image-format", "jpg"), tmp_path)
    path = "train/images/fold1_00000.jpg"
    new, messages = _damage(("jpeg",), damage, (tree / path).read_bytes())
    (tree / path).write_bytes(new)
    assert _verify(tree, cache, capsys) == (1, [f"{path}: {message}" for message in messages])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[]", "holds a list, expected an object; is {tree} a tree written by export?"),
        (GARBAGE, "is not UTF-8 text"),
        (b'{"config": ', "not valid JSON (Expecting value: line 1 column 12 (char 11))"),
    ],
)
def test_a_damaged_export_json_is_one_line(content, message, export_tree, cache, tmp_path, capsys):
    tree = copy_tree(export_tree("cellpose"), tmp_path)
    (tree / "export.json").write_bytes(content)
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == f"pannuke-imagemask verify: error: {tree / 'export.json'}: {message.format(tree=tree)}\n"


@pytest.mark.parametrize("key, value", [("config", "part9"), ("split_ratios", "0.8"), ("format", "tiff")])
def test_export_json_values_export_never_writes_are_one_line(key, value, export_tree, cache, tmp_path, capsys):
    tree = copy_tree(export_tree("cellpose"), tmp_path)
    manifest = json.loads((tree / "export.json").read_text())
    (tree / "export.json").write_text(json.dumps({**manifest, key: value}))
    assert main(["verify", str(tree), "--cache-dir", cache, "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f'pannuke-imagemask verify: error: {tree / "export.json"}: {key} "{value}" not as export writes it\n'
    )
