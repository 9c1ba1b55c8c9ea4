"""convert/polygons.py: pixel-edge outlines that fill back exactly, and OpenCV contours filled as OpenCV draws them.

The outlines are checked against shapely's union of the nucleus' pixel squares (another route to the same
geometry) and by filling them back; the centre-inside rule against shapely's point-in-polygon; the contour
fill against the 8-connected piece HoVer-Net's post_proc outlines, found by scipy.
"""

import cv2
import numpy as np
import pytest
import shapely
from pannuke_fixtures import PART1_PATCHES, THREE_FOLD_PATCHES, raw_fold
from reference import reference_labels
from scipy import ndimage
from shapely.geometry import shape

from convert.polygons import (
    contour_piece,
    fill,
    fill_contour,
    geojson_geometry,
    paint_contours,
    rasterise,
    ring_area,
    trace,
)


def squares(mask):
    """shapely's union of the closed pixel squares of a bool mask: the nucleus' exact region."""
    rows, cols = np.nonzero(mask)
    return shapely.union_all(shapely.box(cols, rows, cols + 1, rows + 1))


def check_traced(instance):
    """Every id of the map: outline = union of its squares, valid, exteriors positive, holes negative, fills back."""
    traced = trace(instance)
    ids = sorted(set(np.unique(instance).tolist()) - {0})
    assert sorted(traced) == ids
    for value in ids:
        mask = instance == value
        polygons = traced[value]
        geometry = shape(geojson_geometry(polygons))
        assert geometry.is_valid, shapely.is_valid_reason(geometry)
        assert geometry.equals(squares(mask))
        assert geometry.area == mask.sum()
        for polygon in polygons:
            assert ring_area(polygon[0]) > 0 and all(ring_area(hole) < 0 for hole in polygon[1:])
            for ring in polygon:  # only corners, each once
                assert len({tuple(p) for p in ring.tolist()}) == len(ring)
                step = np.diff(np.vstack([ring, ring[:1]]), axis=0)
                assert ((step[:, 0] == 0) ^ (step[:, 1] == 0)).all()  # horizontal or vertical edges
                turn = step[:, 0] * np.roll(step, -1, axis=0)[:, 1] - step[:, 1] * np.roll(step, -1, axis=0)[:, 0]
                assert (turn != 0).all()
        np.testing.assert_array_equal(fill(polygons, instance.shape), mask)
    # All nuclei at once, numbered in id order: the map itself (ids 1..n), or its ids' ranks.
    ranks = np.searchsorted(ids, instance) + 1
    np.testing.assert_array_equal(rasterise([traced[v] for v in ids], instance.shape), np.where(instance > 0, ranks, 0))
    return traced


def fake_instances(kaggle_part1, three_folds):
    maps = []
    _, masks, _ = raw_fold(kaggle_part1)
    maps += [reference_labels(np.asarray(masks[i]))[1] for i in range(PART1_PATCHES)]
    for fold, layout in ((1, "kaggle"), (2, "kaggle-flat"), (3, "official")):
        root = three_folds if fold != 2 else f"{three_folds}/fold_2"
        _, masks, _ = raw_fold(root, fold, layout)
        maps += [reference_labels(np.asarray(masks[i]))[1] for i in range(THREE_FOLD_PATCHES[fold])]
    return maps


def test_every_nucleus_of_the_fake_folds_traces_and_fills_back_exactly(kaggle_part1, three_folds):
    pieces = holes = nuclei = 0
    for instance in fake_instances(kaggle_part1, three_folds):
        for polygons in check_traced(instance).values():
            nuclei += 1
            pieces += len(polygons) > 1
            holes += any(len(polygon) > 1 for polygon in polygons)
    assert nuclei > 1000 and pieces > 0  # the fake folds have nuclei in two pieces


def test_hand_made_shapes():
    instance = np.zeros((8, 10), dtype=np.int32)
    instance[2, 3] = 1  # one pixel
    instance[0, 0] = instance[1, 1] = 2  # two pixels touching at a corner: two pieces
    instance[3:6, 5:8] = 3
    instance[4, 6] = 0  # a ring with a hole
    instance[4, 6] = 4  # a nucleus inside that hole
    instance[7, 0:2] = instance[6, 9] = instance[7, 9] = 5  # pieces on the border
    traced = check_traced(instance)
    assert [p[0].tolist() for p in traced[1]] == [[[3, 2], [4, 2], [4, 3], [3, 3]]]
    assert [[r.tolist() for r in p] for p in traced[2]] == [
        [[[0, 0], [1, 0], [1, 1], [0, 1]]],
        [[[1, 1], [2, 1], [2, 2], [1, 2]]],
    ]
    assert [[r.tolist() for r in p] for p in traced[3]] == [
        [[[5, 3], [8, 3], [8, 6], [5, 6]], [[6, 4], [6, 5], [7, 5], [7, 4]]]
    ]
    assert [p[0].tolist() for p in traced[4]] == [[[6, 4], [7, 4], [7, 5], [6, 5]]]
    assert [p[0].tolist() for p in traced[5]] == [[[9, 6], [10, 6], [10, 8], [9, 8]], [[0, 7], [2, 7], [2, 8], [0, 8]]]
    assert geojson_geometry(traced[1]) == {"type": "Polygon", "coordinates": [[[3, 2], [4, 2], [4, 3], [3, 3], [3, 2]]]}
    assert geojson_geometry(traced[2])["type"] == "MultiPolygon"


def test_pockets_pinches_and_checkerboards_stay_valid():
    u_shape = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 0, 1],
            [1, 0, 0, 1],
            [1, 1, 1, 1],
        ]
    )  # the pocket reaches out only through the corner at (3, 1): a hole touching the exterior there
    traced = check_traced(u_shape)
    assert [[r.tolist() for r in p] for p in traced[1]] == [
        [[[0, 0], [3, 0], [3, 1], [4, 1], [4, 4], [0, 4]], [[1, 1], [1, 3], [3, 3], [3, 1]]]
    ]
    checker = (np.indices((7, 7)).sum(axis=0) % 2).astype(np.int32)
    assert len(check_traced(checker)[1]) == 24
    frame = np.ones((5, 5), dtype=np.int32)
    frame[1:4, 1:4] = 0
    frame[1, 1] = frame[3, 3] = frame[2, 2] = 1  # holes meeting each other and the exterior at corners
    check_traced(frame)
    rng = np.random.default_rng(7)
    for _ in range(200):
        check_traced((rng.random((9, 9)) < 0.55) * rng.integers(1, 4, (9, 9)))


def test_fill_is_pixel_centres_inside_with_the_top_left_rule():
    # Vertices off the grid: centres on the left and top edges are inside, on the right and bottom ones not.
    square = [[np.array([[0.5, 0.5], [2.5, 0.5], [2.5, 2.5], [0.5, 2.5]])]]
    expected = np.zeros((4, 4), dtype=bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(fill(square, (4, 4)), expected)
    # The same square in the other orientation, and split in two halves sharing an edge: no pixel twice.
    np.testing.assert_array_equal(fill([[square[0][0][::-1]]], (4, 4)), expected)
    left = [[np.array([[0.5, 0.5], [1.5, 0.5], [1.5, 2.5], [0.5, 2.5]])]]
    right = [[np.array([[1.5, 0.5], [2.5, 0.5], [2.5, 2.5], [1.5, 2.5]])]]
    a, b = fill(left, (4, 4)), fill(right, (4, 4))
    assert not (a & b).any() and np.array_equal(a | b, expected)
    # Random star-shaped polygons with float vertices, some with a hole (a centre on an edge has measure zero):
    # shapely's point-in-polygon of the pixel centres.
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:32, 0:32]
    holed = 0
    for _ in range(200):
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 12)))
        radii = rng.uniform(4, 20, len(angles))
        centre = rng.uniform(4, 28, 2)
        points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        polygon = shapely.Polygon(points)
        if not polygon.is_valid:  # a gap of more than half a turn between two rays: not star-shaped
            continue
        with_hole = shapely.Polygon(points, [centre + rng.uniform(-1.5, 1.5, (3, 2))])
        if rng.random() < 0.5 and with_hole.is_valid:
            polygon, holed = with_hole, holed + 1
        rings = [np.array(polygon.exterior.coords)[:-1]] + [np.array(r.coords)[:-1] for r in polygon.interiors]
        inside = shapely.contains_xy(polygon, cols + 0.5, rows + 0.5)
        np.testing.assert_array_equal(fill([rings], (32, 32)), inside)
    assert holed > 20


def post_proc_contour(mask):
    """The contour of one nucleus as HoVer-Net's post_proc `process` finds it, in patch coordinates, or None."""
    rows, cols = np.nonzero(mask)
    rmin, rmax, cmin, cmax = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = mask[rmin:rmax, cmin:cmax].astype(np.uint8)
    contour = np.squeeze(cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0][0].astype("int32"))
    if contour.ndim != 2 or contour.shape[0] < 3:
        return None
    return contour + [cmin, rmin]


def test_hovernet_contours_fill_back_the_piece_they_outline(kaggle_part1, three_folds):
    exact = filled = 0
    for instance in fake_instances(kaggle_part1, three_folds):
        for value in sorted(set(np.unique(instance).tolist()) - {0}):
            mask = instance == value
            contour = post_proc_contour(mask)
            if contour is None:
                continue
            pieces, _ = ndimage.label(mask, structure=np.ones((3, 3)))
            outlined = ndimage.binary_fill_holes(pieces == pieces[contour[0][1], contour[0][0]])
            drawn = fill_contour(contour, instance.shape)
            np.testing.assert_array_equal(drawn, outlined)
            # OpenCV's other way of drawing a filled contour (HoVer-Net's overlays) gives the same pixels.
            by_cv2 = cv2.drawContours(
                np.zeros(instance.shape, np.uint8), [contour.reshape(-1, 1, 2)], -1, 1, cv2.FILLED
            )
            np.testing.assert_array_equal(drawn, by_cv2.astype(bool))
            top, left, crop = contour_piece([contour], instance.shape)
            np.testing.assert_array_equal(drawn[top : top + crop.shape[0], left : left + crop.shape[1]], crop)
            assert drawn.sum() == crop.sum()
            exact += np.array_equal(drawn, mask)
            filled += 1
    assert filled > 1000 and exact > 0.9 * filled


@pytest.mark.parametrize("size", [(1, 1), (3, 5)])
def test_empty_maps_and_tiny_patches(size):
    assert trace(np.zeros(size, dtype=np.int32)) == {}
    assert check_traced(np.ones(size, dtype=np.int32))[1][0][0].tolist() == [
        [0, 0], [size[1], 0], [size[1], size[0]], [0, size[0]]
    ]  # fmt: skip


def test_rasterise_draws_the_larger_first_and_drops_a_nucleus_without_pixels():
    big = [[np.array([[0, 0], [6, 0], [6, 6], [0, 6]])]]
    small = [[np.array([[2, 2], [4, 2], [4, 4], [2, 4]])]]
    thin = [[np.array([[5.1, 0], [5.4, 0], [5.4, 3], [5.1, 3]])]]  # holds no pixel centre
    same = [[np.array([[0, 7], [2, 7], [2, 8], [0, 8]])]]
    for order, (b, s) in (([big, small, thin, same, same], (1, 2)), ([small, thin, big, same, same], (3, 1))):
        got = rasterise(order, (8, 8))
        expected = np.zeros((8, 8), dtype=np.int64)
        expected[:6, :6] = b
        expected[2:4, 2:4] = s
        expected[7, :2] = 5  # equal areas: the later on top
        np.testing.assert_array_equal(got, expected)


def painted_alone(nuclei, size):
    """Each nucleus (rings of pixel centres) filled alone on a full canvas, then painted larger first in plain
    Python, equal areas in list order."""
    masks = []
    for rings in nuclei:
        canvas = np.zeros(size, np.uint8)
        cv2.fillPoly(canvas, [np.asarray(ring, np.int32).reshape(-1, 1, 2) for ring in rings], 1)
        masks.append(canvas.astype(bool))
    instance = np.zeros(size, dtype=np.int64)
    for k in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):
        instance[masks[k]] = k + 1
    return instance


def test_paint_contours_draws_the_larger_first_only_where_nuclei_share_pixels():
    big = [np.array([[1, 1], [9, 1], [9, 9], [1, 9]])]
    small = [np.array([[4, 4], [6, 4], [6, 6], [4, 6]])]
    apart = [np.array([[12, 12], [14, 12], [13, 14]])]
    touching = [np.array([[10, 1], [11, 1], [11, 3], [10, 3]])]  # beside big, boxes apart by a pixel: not shared
    for nuclei in ([big, small, apart, touching], [small, big, touching, apart], [apart, small, touching, big]):
        got = paint_contours(nuclei, (16, 16))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, painted_alone(nuclei, (16, 16)))
        assert (got[4:7, 4:7] == next(k for k, n in enumerate(nuclei, 1) if n is small)).all()  # on top
    twins = [[np.array([[0, 0], [3, 0], [3, 3]])], [np.array([[0, 0], [3, 0], [3, 3]])]]
    assert set(np.unique(paint_contours(twins, (4, 4))).tolist()) == {0, 2}  # equal areas: the later on top
    assert not paint_contours([], (4, 4)).any()


def test_paint_contours_equals_each_nucleus_painted_alone_on_random_rings():
    rng = np.random.default_rng(7)
    shared = 0
    for _ in range(300):
        nuclei = []
        for _ in range(rng.integers(0, 12)):
            centre = rng.integers(0, 40, size=2)
            rings = [np.clip(centre + rng.integers(-6, 7, size=(rng.integers(1, 8), 2)), 0, 39) for _ in range(2)]
            nuclei.append(rings[: rng.integers(1, 3)])  # one ring, or two filled together
        expected = painted_alone(nuclei, (40, 40))
        np.testing.assert_array_equal(paint_contours(nuclei, (40, 40)), expected)
        alone = sum(int((painted_alone([nucleus], (40, 40)) > 0).sum()) for nucleus in nuclei)
        shared += alone > (expected > 0).sum()  # some pixel in two nuclei
    assert shared > 100  # the paint order was put to the test


def test_rasterise_without_overlaps_equals_the_painted_order():
    squares_ = [[[np.array([[c, r], [c + 2, r], [c + 2, r + 2], [c, r + 2]])]] for r in (0, 3) for c in (0, 3)]
    got = rasterise(squares_, (6, 6))
    expected = np.zeros((6, 6), dtype=np.int64)
    for k, (r, c) in enumerate((r, c) for r in (0, 3) for c in (0, 3)):
        expected[r : r + 2, c : c + 2] = k + 1
    np.testing.assert_array_equal(got, expected)
