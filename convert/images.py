"""Pixels and arrays as the formats write and verify them: decode, encode, resize, compare, size bounds.

Plain functions of bytes and numpy arrays. A comparison reads a file that may be damaged or foreign: it
returns what is wrong with it in a few words (None when it holds what it should), never raises on its
content.
"""

import io

import numpy as np
import pyarrow.compute as pc
from PIL import Image

import pannuke_imagemask as pim

JPEG_QUALITY = 95
JPEG_TOLERANCE = 4.0  # mean |difference| per channel value; quality-95 4:4:4 JPEG of noisy fake patches: ~3.2
HEADER_BOUND = 4096  # PNG signature, IHDR, palette, IEND and zlib framing, JPEG headers: far less than this
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
NPY_MAGIC = b"\x93NUMPY"


def decode(png_bytes):
    return np.array(Image.open(io.BytesIO(png_bytes)))


def resize_mask(mask, size):
    """Nearest-neighbour resize: only label values already present can appear."""
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    return np.array(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def resize_image(image, size):
    """High-quality (Lanczos) resize of an RGB PIL image."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.LANCZOS)


def rgb_image(png_bytes, size):
    """The builder's image PNG as an RGB PIL image of side `size`."""
    return resize_image(Image.open(io.BytesIO(png_bytes)).convert("RGB"), size)


def encode_jpeg(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: keep stain colour
    return buffer.getvalue()


def png_lengths(dataset, column):
    """Byte lengths of a column's stored PNGs, read from Arrow without decoding anything."""
    table = dataset.with_format("arrow")[:] if dataset._indices is not None else dataset.data.table
    return pc.binary_length(pc.struct_field(table.column(column), "bytes")).to_numpy().tolist()


def png_bound(height, width, channels=1, sample_bytes=1):
    """An upper bound of any PNG of that shape: zlib at worst stores the raw rows (one filter byte each)."""
    raw = height * (width * channels * sample_bytes + 1)
    return raw + raw // 1000 + HEADER_BOUND


def jpeg_bound(height, width):
    """An upper bound of a quality-95 4:4:4 JPEG: never above the raw RGB bytes plus headers."""
    return height * width * 3 + HEADER_BOUND


def image_size_bounds(dataset, image_format, size=pim.PATCH_SIZE):
    """Sizes of a split's image files: known exactly for native PNG (the builder's, copied), else a bound."""
    if image_format == "png" and size == pim.PATCH_SIZE:
        return png_lengths(dataset, "image")
    bound = png_bound(size, size, 3) if image_format == "png" else jpeg_bound(size, size)
    return [bound] * dataset.num_rows


def npy_bytes(shape, dtype):
    """Size of a .npy file: a 128-byte header (format 1.0, padded to 64) and the raw array."""
    return 128 + int(np.prod(shape)) * np.dtype(dtype).itemsize


def npy_chunks(array):
    """The .npy file of an array as (header, data): written as they are, without a joined copy."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return header.getvalue(), memoryview(array.reshape(-1).view(np.uint8))


def read_npy(path, mmap=False):
    """The array of an .npy file, or ValueError saying why it is not one (never unpickles)."""
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ValueError("is not a .npy file")
    try:
        pim.read_npy_header(path)  # the magic, the header, no objects, the length
    except pim.PanNukeFormatError as exc:
        raise ValueError(str(exc).removeprefix(f"{path}: ")) from None
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def compare_array(path, expected):
    """None if the .npy at path holds exactly expected (dtype, shape, values), else what differs."""
    try:
        actual = read_npy(path)
    except ValueError as exc:
        return str(exc)
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return f"is {actual.dtype} {actual.shape}, expected {expected.dtype} {expected.shape}"
    wrong = int((actual != expected).sum())
    return None if wrong == 0 else f"{wrong} of {expected.size} values differ"


def read_image(data, kind, signature):
    """(mode, pixels) of an image file's bytes, or ValueError saying what it is instead."""
    if not data.startswith(signature):
        raise ValueError(f"is not a {kind} file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.mode, np.array(image)
    except Exception:  # noqa: BLE001  (Pillow's decoders raise many types on damaged data; all mean the same)
        raise ValueError(f"is a damaged or truncated {kind}") from None


def compare_png(actual_path, expected_bytes):
    """None if the file's pixels (and mode) equal those of the PNG expected_bytes, else what differs."""
    with open(actual_path, "rb") as f:
        actual = f.read()
    if actual == expected_bytes:
        return None
    try:
        mode, pixels = read_image(actual, "PNG", PNG_SIGNATURE)
    except ValueError as exc:
        return str(exc)
    expected_mode, expected = read_image(expected_bytes, "PNG", PNG_SIGNATURE)
    if mode != expected_mode or pixels.shape != expected.shape:
        return f"is {mode} {pixels.shape}, expected {expected_mode} {expected.shape}"
    wrong = int(np.any(pixels != expected, axis=-1).sum() if pixels.ndim == 3 else (pixels != expected).sum())
    return None if wrong == 0 else f"{wrong} of {pixels.shape[0] * pixels.shape[1]} pixels differ"


def compare_jpeg(actual_path, expected_rgb):
    """None if the JPEG file is within JPEG_TOLERANCE of the expected RGB pixels, else what differs."""
    with open(actual_path, "rb") as f:
        data = f.read()
    try:
        mode, pixels = read_image(data, "JPEG", JPEG_SIGNATURE)
    except ValueError as exc:
        return str(exc)
    if mode != "RGB" or pixels.shape != expected_rgb.shape:
        return f"is {mode} {pixels.shape}, expected RGB {expected_rgb.shape}"
    error = float(np.abs(pixels.astype(np.int16) - expected_rgb).mean())
    return None if error <= JPEG_TOLERANCE else f"mean difference {error:.2f} exceeds JPEG tolerance {JPEG_TOLERANCE}"
