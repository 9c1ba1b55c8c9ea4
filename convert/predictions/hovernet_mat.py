"""`hovernet-mat`: HoVer-Net's `run_infer.py tile` output, OUT/mat/<id>.mat (infer/tile.py `proc_callback`).

Each file (scipy.io.savemat): `inst_map` (H, W) instance ids, not necessarily contiguous; `inst_uid` (N, 1) the
ids of its nucleus list; `inst_type` (N, 1) their types (0..5, aligned with inst_uid, not with positions in
the map; absent when HoVer-Net ran without types); `inst_centroid` (N, 2) their (x, y). PQ reads inst_map
with each nucleus' type found through inst_uid; F1 reads inst_centroid and inst_type, as HoVer-Net's
compute_stats.py does. Ids of the map missing from inst_uid are nuclei HoVer-Net itself left out of its list
(contours of fewer than 3 points): they are not scored. Without inst_uid (the truth-style .mat of
compute_stats) the nuclei are the map's ids in increasing order; without inst_centroid, the mean (x, y) of
each nucleus' pixels. Without inst_type the files are class-agnostic: every nucleus in channel 0, type 0.
"""

import os

import numpy as np

from .base import NUM_TYPES, Prediction, PredictionError, check_ids, from_instances, patch_files

NAME = "hovernet-mat"
KEYS = ("inst_map", "inst_uid", "inst_type", "inst_centroid")


def _scipy_io():
    """(scipy.io, what it raises for a file that is not a .mat, is cut short or is MATLAB 7.3 (HDF5)).

    Imported when a .mat is read, not with the module: recognising another layout need not import it.
    """
    import scipy.io
    from scipy.io.matlab import MatReadError

    return scipy.io, (MatReadError, ValueError, TypeError, OSError, IndexError, EOFError, NotImplementedError)


def mat_folder(path):
    """The folder of the .mat files: OUT/mat of HoVer-Net's output folder, a split's Labels/ of CoNSeP's layout
    (our hovernet-mat export), else PATH itself."""
    for inner in (os.path.join(path, "mat"), os.path.join(path, "Labels")):
        if os.path.isdir(inner):
            return inner
    return path


def recognise(path):
    if not os.path.isdir(path):
        return False
    return mat_folder(path) != path or any(name.endswith(".mat") for name in os.listdir(path))


def _length(shape, width, where, key):
    """N of a variable of shape (N, width) (or (1, N) for a vector): 0 if it is empty."""
    if 0 in shape:
        return 0
    if len(shape) == 2 and shape[1] == width:
        return shape[0]
    if width == 1 and len(shape) == 2 and shape[0] == 1:
        return shape[1]
    raise PredictionError(f"{where}: {key} has shape {shape}, expected (N, {width})")


def check_header(path, size):
    """The variables' shapes of one .mat file, checked without reading their data; True if it has inst_type."""
    sio, errors = _scipy_io()
    try:
        shapes = {name: shape for name, shape, _ in sio.whosmat(path)}
    except errors as exc:
        raise PredictionError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from None
    if "inst_map" not in shapes:
        raise PredictionError(f"{path}: no inst_map (not a HoVer-Net prediction)")
    if tuple(shapes["inst_map"]) != tuple(size):
        raise PredictionError(f"{path}: inst_map has shape {shapes['inst_map']}, the patches are {tuple(size)}")
    lengths = {
        key: _length(shapes[key], 2 if key == "inst_centroid" else 1, path, key) for key in KEYS[1:] if key in shapes
    }
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{key} {n}" for key, n in lengths.items())
        raise PredictionError(f"{path}: the nucleus lists differ in length ({listed})")
    return "inst_type" in shapes


def _vector(values, where, key):
    return check_ids(np.asarray(values).reshape(-1), where, key)


def read_mat(path, size, classified):
    """The PatchPrediction of one .mat file."""
    sio, errors = _scipy_io()
    try:
        data = sio.loadmat(path, variable_names=KEYS)
    except errors as exc:
        raise PredictionError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from None
    if "inst_map" not in data:
        raise PredictionError(f"{path}: no inst_map (not a HoVer-Net prediction)")
    instance = check_ids(data["inst_map"], path, "inst_map")
    if instance.shape != tuple(size):
        raise PredictionError(f"{path}: inst_map has shape {instance.shape}, the patches are {tuple(size)}")
    if "inst_uid" in data:
        ids = _vector(data["inst_uid"], path, "inst_uid")
        listed = np.isin(instance, ids)
        instance = np.where(listed, instance, 0)  # left out of HoVer-Net's own nucleus list: not a nucleus
    else:
        ids = np.unique(instance)
        ids = ids[ids != 0]
    n = len(ids)
    if classified:
        if "inst_type" not in data:
            raise PredictionError(f"{path}: no inst_type, but other files of the folder have one")
        types = _vector(data["inst_type"], path, "inst_type")
        if types.size and types.max() >= NUM_TYPES:
            raise PredictionError(f"{path}: inst_type {types.max()} is not one of 0..{NUM_TYPES - 1}")
    else:
        if "inst_type" in data:
            raise PredictionError(f"{path}: an inst_type, but the other files of the folder have none")
        types = np.ones(n, dtype=np.int64)
    centroids = None
    if "inst_centroid" in data:
        centroids = np.asarray(data["inst_centroid"], dtype=np.float64).reshape(-1, 2) if n else np.zeros((0, 2))
        if not np.isfinite(centroids).all():
            raise PredictionError(f"{path}: inst_centroid has non-finite values (NaN or inf)")
        limit = np.array([size[1] - 1, size[0] - 1])
        outside = (centroids < 0) | (centroids > limit)
        if outside.any():
            row = int(np.nonzero(outside.any(axis=1))[0][0])
            x, y = centroids[row]
            raise PredictionError(
                f"{path}: inst_centroid {row} ({x:g}, {y:g}) is outside the {size[1]}x{size[0]} patch"
            )
    for key, values in (("inst_type", types), ("inst_centroid", centroids)):
        if values is not None and len(values) != n:
            raise PredictionError(f"{path}: {n} nuclei but {len(values)} rows of {key}")
    prediction = from_instances(instance, ids, types, centroids, where=path)
    if not classified:
        prediction = prediction._replace(types=np.zeros(n, dtype=np.int64))
    return prediction


class HovernetMatPrediction(Prediction):
    name = NAME

    def __init__(self, path, patches, size, folder, classified):
        super().__init__(path, patches, size)
        self.folder, self.classified = folder, classified

    def read(self, position):
        return read_mat(os.path.join(self.folder, f"{self.patch(position)}.mat"), self.size, self.classified)


def open_layout(path, patches, size, **options):
    folder = mat_folder(path)
    expected = patch_files(folder, [patch for patch, _ in patches], ".mat")
    # Whether HoVer-Net ran with types, from the headers; a file that disagrees is named when it is read (a
    # file cut short lists only the variables before the cut, so it is not judged by its header).
    typed = [check_header(os.path.join(folder, name), tuple(size)) for name in expected]
    prediction = HovernetMatPrediction(path, patches, size, folder, any(typed))
    if not prediction.classified:
        prediction.notes.append(
            "hovernet-mat: no inst_type in the .mat files (HoVer-Net run without types): class-agnostic"
        )
    return prediction
