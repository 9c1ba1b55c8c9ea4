"""The files of an export, each described once: where it goes, its bytes, and what verify accepts in it.

A format lists its tree as File objects (convert/formats/__init__.py); export writes each one with
`write` and verify checks each one with `problems`, so that no file can be written one way and checked
another. A kind's `problems` reads a file that may be damaged or foreign and answers in short texts
("is not a PNG file", "3 of 65536 pixels differ"), never with an exception about its content.
"""

import json
import os

import numpy as np
import yaml

import pannuke_imagemask as pim

from .images import (
    PNG_SIGNATURE,
    compare_array,
    compare_jpeg,
    compare_png,
    encode_jpeg,
    npy_chunks,
    read_image,
    read_npy,
    rgb_image,
)


def write_bytes(path, *chunks):
    """The one way files are written (a single place to fail, e.g. with ENOSPC); chunks are bytes-like."""
    with open(path, "wb") as f:
        f.writelines(chunks)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class File:
    """One file of a tree; `path` is relative to the tree, with "/" between folders."""

    def __init__(self, path):
        self.path = path

    def chunks(self):
        """The file's bytes, as bytes-like pieces written one after the other."""
        raise NotImplementedError

    def prepare(self, root):
        """Make what must exist before any patch is written (only a file that several patches fill needs it)."""

    def write(self, root):
        path = os.path.join(root, self.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_bytes(path, *self.chunks())

    def problems(self, path, cache):
        """What is wrong with the file at path, as short texts; [] when it holds what it should.

        cache: a dict shared by the checks of one verify run (for files that several patches fill)."""
        raise NotImplementedError


class Png(File):
    """A PNG; verify compares pixels and mode, so the same pixels encoded otherwise are accepted."""

    def __init__(self, path, data):
        super().__init__(path)
        self.data = data

    def chunks(self):
        return (self.data,)

    def problems(self, path, cache):
        problem = compare_png(path, self.data)
        return [problem] if problem else []


class Jpeg(File):
    """A JPEG of an RGB PIL image; verify accepts pixels within the JPEG tolerance of the image's."""

    def __init__(self, path, image):
        super().__init__(path)
        self.image = image

    def chunks(self):
        return (encode_jpeg(self.image),)

    def problems(self, path, cache):
        problem = compare_jpeg(path, np.asarray(self.image))
        return [problem] if problem else []


class Report(File):
    """A file the command writes itself beside the format's files (export.json): verify only needs it there."""

    def problems(self, path, cache):
        return []


class Picture(Report):
    """A PNG for people to look at (the export's statistics and samples): any readable PNG is accepted."""

    def problems(self, path, cache):
        try:
            read_image(_read(path), "PNG", PNG_SIGNATURE)
        except ValueError as exc:
            return [str(exc)]
        return []


class Npy(File):
    """An .npy of one array; verify compares dtype, shape and every value (and never unpickles)."""

    def __init__(self, path, array):
        super().__init__(path)
        self.array = array

    def chunks(self):
        return npy_chunks(self.array)

    def problems(self, path, cache):
        problem = compare_array(path, self.array)
        return [problem] if problem else []


class Row(File):
    """Row `position` of an .npy of `count` rows that the patches fill in place (pannuke's arrays).

    The file is made at its full size before any patch is written (`prepare`, from the first patch's
    description), so that the workers only write their rows into it, each through a memory map.
    """

    def __init__(self, path, position, value, count, name):
        super().__init__(path)
        self.position, self.value, self.count, self.name = position, value, count, name

    def prepare(self, root):
        path = os.path.join(root, self.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shape = (self.count, *self.value.shape)
        np.lib.format.open_memmap(path, mode="w+", dtype=self.value.dtype, shape=shape).flush()
        # Reserve the space now: running out is then an error here, not a SIGBUS in a worker later.
        if hasattr(os, "posix_fallocate"):
            with open(path, "r+b") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
                except OSError as exc:  # it names no file: name it, for the one-line message
                    raise OSError(exc.errno, exc.strerror, path) from None

    def write(self, root):
        array = np.lib.format.open_memmap(os.path.join(root, self.path), mode="r+")
        array[self.position] = self.value
        array.flush()
        del array

    def problems(self, path, cache):
        if path not in cache:  # the whole file is opened and checked once; a wrong one is named once
            shape = (self.count, *self.value.shape)
            try:
                array = read_npy(path, mmap=True)
            except ValueError as exc:
                cache[path] = None
                return [str(exc)]
            if array.dtype != self.value.dtype or array.shape != shape:
                cache[path] = None
                return [f"is {array.dtype} {array.shape}, expected {self.value.dtype} {shape}"]
            cache[path] = array
        if cache[path] is None:
            return []
        wrong = int((cache[path][self.position] != self.value).sum())
        return [f"row {self.position} ({self.name}): {wrong} values differ"] if wrong else []


class Text(File):
    """A UTF-8 text file, exactly; verify names the first line that differs."""

    def __init__(self, path, text):
        super().__init__(path)
        self.text = text

    def chunks(self):
        return (self.text.encode(),)

    def problems(self, path, cache):
        try:
            actual = _read(path).decode()
        except UnicodeDecodeError:
            return ["is not UTF-8 text"]
        problem = text_difference(actual, self.text)
        return [problem] if problem else []


class Lines(File):
    """A UTF-8 file of one record a line, in order (a table); verify names each missing, changed or extra line."""

    def __init__(self, path, lines):
        super().__init__(path)
        self.lines = lines  # each ending in "\n"

    def chunks(self):
        return ("".join(self.lines).encode(),)

    def problems(self, path, cache):
        try:
            actual = _read(path).decode().splitlines(keepends=True)
        except UnicodeDecodeError:
            return ["is not UTF-8 text"]
        if actual == self.lines:
            return []
        actual_set, expected_set = set(actual), set(self.lines)
        problems = [f"row missing or changed: {line.rstrip()}" for line in self.lines if line not in actual_set]
        problems += [f"unexpected row: {line.rstrip()[:300]}" for line in actual if line not in expected_set]
        if problems:
            return problems
        if len(actual) != len(self.lines):
            return [f"{len(actual)} rows, expected {len(self.lines)} (a row is repeated)"]
        return ["rows not in the expected order"]


class Json(File):
    """A JSON document; verify compares the parsed values, so that formatting does not matter."""

    def __init__(self, path, value, compact=False):
        super().__init__(path)
        self.value, self.compact = value, compact

    def chunks(self):
        if self.compact:
            return (json.dumps(self.value, separators=(",", ":")).encode(),)
        return ((json.dumps(self.value, indent=2) + "\n").encode(),)

    def problems(self, path, cache):
        try:
            actual = json.loads(_read(path).decode())  # JSON is UTF-8 (RFC 8259): no guessing of encodings
        except UnicodeDecodeError:
            return ["is not UTF-8 text"]
        except ValueError as exc:
            return [f"cannot be read as JSON ({exc})"]
        return document_differences(actual, json.loads(json.dumps(self.value)))  # tuples become lists


class Yaml(File):
    """A YAML document (as yaml.safe_dump writes it, keys in order); verify compares the parsed values."""

    def __init__(self, path, value):
        super().__init__(path)
        self.value = value

    def chunks(self):
        return (yaml.safe_dump(self.value, sort_keys=False).encode(),)

    def problems(self, path, cache):
        try:
            actual = yaml.safe_load(_read(path).decode())
        except UnicodeDecodeError:
            return ["is not UTF-8 text"]
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            return [f"cannot be read as YAML ({exc.problem or exc.context}{where})"]
        except (yaml.YAMLError, ValueError) as exc:
            return [f"cannot be read as YAML ({' '.join(str(exc).split())})"]
        return document_differences(actual, self.value)


class Checked(File):
    """Bytes written as given and checked by a function of the bytes read back (a list of problems)."""

    def __init__(self, path, chunks, check):
        super().__init__(path)
        self._chunks, self.check = chunks, check

    def chunks(self):
        return self._chunks

    def problems(self, path, cache):
        return self.check(_read(path))


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}


def kind_of(value):
    return _KINDS.get(type(value), "a number")


def document_differences(actual, expected):
    """What differs between a parsed JSON or YAML document and the expected one, entry by entry of an object."""
    if actual == expected:
        return []
    if kind_of(actual) != kind_of(expected):
        return [f"holds {kind_of(actual)}, expected {kind_of(expected)}"]
    if not isinstance(expected, dict):
        return ["differs"]
    problems = []
    for key, wanted in expected.items():
        got = actual.get(key)
        if key not in actual:
            problems.append(f"{key} missing")
        elif got == wanted:
            continue
        elif isinstance(wanted, list) and isinstance(got, list):
            detail = f"{len(got)} entries, expected {len(wanted)}"
            wrong = [k for k, (a, e) in enumerate(zip(got, wanted)) if a != e]
            if wrong:
                entry = wanted[wrong[0]]
                named = isinstance(entry, dict) and "id" in entry
                detail += f"; first differing id {entry['id']}" if named else f"; first differing entry {wrong[0]}"
            problems.append(f"{key} differ ({detail})")
        else:
            problems.append(f"{key} differs")
    return problems + [f"unexpected key {key}" for key in sorted(set(actual) - set(expected), key=str)]


def text_difference(actual, expected, shown=40):
    """None if the texts are equal, else the first line that differs (long lines from where they differ)."""
    if actual == expected:
        return None
    actual_lines, expected_lines = actual.split("\n"), expected.split("\n")
    for number, (got, want) in enumerate(zip(actual_lines, expected_lines), 1):
        if got == want:
            continue
        if max(len(got), len(want)) <= 2 * shown:
            return f"line {number} is {got!r}, expected {want!r}"
        start = len(os.path.commonprefix([got, want]))
        got, want = got[start : start + shown], want[start : start + shown]
        return f"line {number} differs from column {start + 1}: {got!r}, expected {want!r}"
    return f"has {len(actual_lines) - 1} lines, expected {len(expected_lines) - 1}"


def image_file(path, row, image_format, size=pim.PATCH_SIZE):
    """The image file of a builder row (images undecoded): its PNG itself when nothing changes, else re-encoded."""
    if image_format == "png" and size == pim.PATCH_SIZE:
        return Png(path, row["image"]["bytes"])
    image = rgb_image(row["image"]["bytes"], size)
    if image_format == "png":
        return Png(path, pim.encode_image_png(np.asarray(image)))
    return Jpeg(path, image)
