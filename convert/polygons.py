"""Nuclei as polygons and back: exact pixel-edge outlines (GeoJSON, QuPath) and OpenCV's contours (HoVer-Net, CellViT).

Two coordinate conventions meet here, both (x, y) with x the column:

- **Pixel corners** (QuPath, GeoJSON, InstanSeg's rasterio polygons, our `geojson` export): pixel (row r,
  column c) is the square [c, c + 1] x [r, r + 1]; its centre is (c + 0.5, r + 0.5). `trace` writes these
  polygons and `fill` reads them: a pixel belongs to a polygon when its centre is inside.
- **Pixel centres** (HoVer-Net's and CellViT's `contour`, from `cv2.findContours`): point (x, y) is the centre
  of pixel (row y, column x). `fill_contour` fills such a ring as OpenCV draws it (`cv2.fillPoly`).

Plain functions of numpy arrays; nothing here reads or writes files.
"""

import cv2
import numpy as np

# Edge directions around a pixel, in the order top, right, bottom, left: walking them, the pixel is on the
# right in image orientation (y down), and the ring's shoelace area on the raw (x, y) numbers is positive, as
# RFC 7946 wants of an exterior ring ("counterclockwise" on the numbers); a hole comes out negative.
_SIDES = (
    # (neighbour row offset, neighbour column offset, start corner (dx, dy), end corner (dx, dy))
    (-1, 0, (0, 0), (1, 0)),  # top: left to right
    (0, 1, (1, 0), (1, 1)),  # right: top to bottom
    (1, 0, (1, 1), (0, 1)),  # bottom: right to left
    (0, -1, (0, 1), (0, 0)),  # left: bottom to top
)


def _boundary_edges(labels):
    """(label, pixel, x0, y0, x1, y1) of every pixel side whose neighbour has another label, for labels != 0.

    The pixel is a flat index into labels padded by one (so the patch border has neighbours of label 0).
    """
    padded = np.pad(labels, 1)
    width = padded.shape[1]
    parts = []
    for dr, dc, (sx, sy), (ex, ey) in _SIDES:
        neighbour = np.roll(padded, (-dr, -dc), axis=(0, 1))
        rows, cols = np.nonzero((padded != 0) & (padded != neighbour))
        # Padded (row, col) is pixel (row - 1, col - 1): its corners are at x = col - 1 + dx, y = row - 1 + dy.
        parts.append(
            np.stack(
                [padded[rows, cols], rows * width + cols, cols - 1 + sx, rows - 1 + sy, cols - 1 + ex, rows - 1 + ey],
                axis=1,
            )
        )
    return np.concatenate(parts).astype(np.int64)


def _rings(edges):
    """The closed edge walks of one label's edges: lists of (x, y) start corners, each walk a ring.

    At a corner where two pixels of the label touch diagonally (two edges leave it), a walk keeps to the
    pixel it came along (4-connectivity): the two pixels are never joined through their shared corner.
    """
    start = {}
    by_pixel = {}
    for k, (_, pixel, x0, y0, _, _) in enumerate(edges.tolist()):
        start.setdefault((x0, y0), []).append(k)
        by_pixel[(pixel, x0, y0)] = k
    used = np.zeros(len(edges), dtype=bool)
    rings = []
    rows = edges.tolist()
    for first in range(len(rows)):
        if used[first]:
            continue
        ring, k = [], first
        while not used[k]:
            used[k] = True
            _, pixel, x0, y0, x1, y1 = rows[k]
            ring.append((x0, y0))
            leaving = start[(x1, y1)]
            k = leaving[0] if len(leaving) == 1 else by_pixel[(pixel, x1, y1)]
        rings.append(ring)
    return rings


def _simple_loops(ring):
    """A closed walk cut into loops that visit no corner twice (a walk pinched at a corner is two loops)."""
    loops, path, seen = [], [], {}
    for point in ring:
        if point in seen:
            cut = seen[point]
            loops.append(path[cut:])
            for old in path[cut + 1 :]:
                del seen[old]
            path = path[: cut + 1]
        else:
            seen[point] = len(path)
            path.append(point)
    loops.append(path)
    return loops


def _corners_only(loop):
    """The loop without the points where it goes straight on, rotated to start at its smallest (y, x) corner."""
    points = np.asarray(loop, dtype=np.int64)
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    turn = (points - before)[:, 0] * (after - points)[:, 1] - (points - before)[:, 1] * (after - points)[:, 0]
    points = points[turn != 0]
    first = np.lexsort((points[:, 0], points[:, 1]))[0]
    return np.roll(points, -first, axis=0)


def ring_area(ring):
    """The shoelace area of an open (n, 2) ring on its raw (x, y) numbers: positive for our exterior rings."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _inside_ring(ring, x, y):
    """Whether point (x, y), never on the ring, is inside it (even-odd crossing count)."""
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crossing = (np.minimum(y0, y1) <= y) & (y < np.maximum(y0, y1))
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1, y1 - y0)
    return bool(np.count_nonzero(crossing & (xi <= x)) % 2)


def _polygons(loops):
    """[[exterior, *holes], ...] of one label's simple loops: each hole goes to the smallest exterior holding it."""
    shells, holes = [], []
    for loop in loops:
        ring = _corners_only(loop)
        (shells if ring_area(ring) > 0 else holes).append(ring)
    polygons = [[shell] for shell in shells]
    areas = [ring_area(shell) for shell in shells]
    for hole in holes:
        # The centre of the pixel inside the hole beside its first edge: the hole's side of a walk is its left.
        (x0, y0), (x1, y1) = hole[0], hole[1]
        dx, dy = np.sign(x1 - x0), np.sign(y1 - y0)
        x, y = (x0 + x1) / 2 + 0.5 * dy, (y0 + y1) / 2 - 0.5 * dx
        if dx == 0:  # a vertical edge: its midpoint is not a pixel centre's height yet
            y = min(y0, y1) + 0.5
        if dy == 0:
            x = min(x0, x1) + 0.5
        holders = [k for k, shell in enumerate(shells) if _inside_ring(shell, x, y)]
        polygons[min(holders, key=lambda k: areas[k])].append(hole)
    return polygons


def trace(instance_map):
    """{id: [[exterior, *holes], ...]} of every non-zero id of an (H, W) integer map, exact along pixel edges.

    Each ring is an open (n, 2) int64 array of (x, y) pixel corners (x the column edge, y the row edge), only
    its corners kept, starting at its smallest (y, x) corner; exteriors have a positive shoelace area on the
    numbers (RFC 7946's counterclockwise), holes a negative one. Pieces are 4-connected: pixels that touch
    only at a corner are two polygons, a background pocket that reaches out only through a corner is a hole
    touching the exterior at that corner. So every ring is simple, every polygon valid (OGC: rings may touch
    at a point), and `fill` of the polygons gives back exactly the pixels of the id. Polygons are in the
    order of their top-left corner (y, then x); ids in increasing order.
    """
    labels = np.asarray(instance_map)
    if labels.ndim != 2:
        raise ValueError(f"trace wants a 2-D map, got shape {labels.shape}")
    edges = _boundary_edges(labels)
    if not len(edges):
        return {}
    edges = edges[np.argsort(edges[:, 0], kind="stable")]
    ids, starts = np.unique(edges[:, 0], return_index=True)
    result = {}
    for label, (begin, end) in zip(ids.tolist(), zip(starts, [*starts[1:], len(edges)])):
        loops = [loop for ring in _rings(edges[begin:end]) for loop in _simple_loops(ring)]
        polygons = _polygons(loops)
        result[label] = sorted(polygons, key=lambda polygon: (int(polygon[0][0, 1]), int(polygon[0][0, 0])))
    return result


def _inside_pixels(polygons, size):
    """(polygon index, flat pixel index) of every pixel whose centre is inside each polygon, as `fill` rules.

    All rings of all polygons at once: each edge gives its crossings of the pixel-centre lines it spans, the
    crossings of a polygon on a line are sorted, and pairs of them (in, out) bound the pixels inside.
    """
    height, width = size
    rings = [
        (k, np.asarray(ring, dtype=np.float64).reshape(-1, 2)) for k, polygon in enumerate(polygons) for ring in polygon
    ]
    rings = [(k, ring) for k, ring in rings if len(ring)]
    if not rings:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    points = np.concatenate([ring for _, ring in rings])
    lengths = np.array([len(ring) for _, ring in rings])
    polygon = np.repeat([k for k, _ in rings], lengths)
    following = np.arange(1, len(points) + 1)
    ends = np.cumsum(lengths)
    following[ends - 1] = ends - lengths  # a ring's last corner goes back to its first
    (x0, y0), (x1, y1) = points.T, points[following].T
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    # Rows whose centre line r + 0.5 lies in [low, high): r from ceil(low - 0.5) to ceil(high - 0.5) - 1.
    first = np.clip(np.ceil(low - 0.5), 0, height).astype(np.int64)
    count = np.clip(np.ceil(high - 0.5), 0, height).astype(np.int64) - first
    count[count < 0] = 0
    edge = np.repeat(np.arange(len(points)), count)
    row = first[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count)
    centre = row + 0.5
    xi = x0[edge] + (centre - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((xi, row, polygon[edge]))
    xi, row, owner = xi[order], row[order], polygon[edge][order]
    # In each (polygon, row) the crossings alternate in, out (each ring crosses a line an even number of times).
    start = np.clip(np.ceil(xi[0::2] - 0.5), 0, width).astype(np.int64)
    stop = np.clip(np.ceil(xi[1::2] - 0.5), 0, width).astype(np.int64)
    run = np.maximum(stop - start, 0)
    owner, row = owner[0::2], row[0::2]
    pixel = np.repeat(row * width + start - (np.cumsum(run) - run), run) + np.arange(int(run.sum()))
    return np.repeat(owner, run), pixel


def fill(polygons, size):
    """(H, W) bool: the pixels whose centre is inside the polygons ([[exterior, *holes], ...], pixel corners).

    A polygon is the even-odd rule over its rings, so holes cut; polygons are united. A centre exactly on an
    edge (possible only for vertices off the pixel grid) is decided by the top-left rule: inside when the
    polygon's interior is on its right (+x), or for a horizontal edge below it (+y), so that two polygons
    sharing an edge never share a pixel. Exactly: on the line y = r + 0.5 an edge from (x0, y0) to (x1, y1)
    crosses when min(y0, y1) <= r + 0.5 < max(y0, y1), at xi; pixel (r, c) is inside when the crossings with
    xi <= c + 0.5 are odd in number. Coordinates may be floats and lie outside the patch (clipped).
    """
    mask = np.zeros(size[0] * size[1], dtype=bool)
    mask[_inside_pixels(polygons, size)[1]] = True
    return mask.reshape(size)


def rasterise(nuclei, size):
    """(H, W) int32 map 1..n of n nuclei, each a list of polygons filled by `fill`'s rule, in one pass.

    Where nuclei overlap the larger is drawn first and the smaller stays on top (a nucleus drawn inside
    another's hole), equal areas in list order, the later on top; a nucleus without pixels is absent.
    """
    height, width = size
    polygons = [polygon for nucleus in nuclei for polygon in nucleus]
    nucleus_of = np.repeat(np.arange(len(nuclei)), [len(nucleus) for nucleus in nuclei])
    owner, pixel = _inside_pixels(polygons, size)
    number = nucleus_of[owner]
    instance = np.zeros(height * width, dtype=np.int32)  # as cv2's maps: a reader's checks take it uncopied
    instance[pixel] = number + 1
    if np.count_nonzero(instance) == len(pixel):  # no pixel twice: nothing overlaps, the paint order is moot
        return instance.reshape(size)
    area = np.bincount(number, minlength=len(nuclei))
    rank = np.empty(len(nuclei), dtype=np.int64)
    rank[np.lexsort((np.arange(len(nuclei)), -area))] = np.arange(len(nuclei))  # the paint order
    order = np.lexsort((rank[number], pixel))
    pixel, number = pixel[order], number[order]
    last = np.ones(len(pixel), dtype=bool)
    last[:-1] = pixel[1:] != pixel[:-1]  # each pixel's nucleus drawn last
    instance[pixel[last]] = number[last] + 1
    return instance.reshape(size)


def fill_contour(contour, size):
    """(H, W) bool: an open ring of pixel centres (x, y), as HoVer-Net and CellViT store a `contour`, filled
    as OpenCV draws it (`cv2.fillPoly`, boundary pixels included, even-odd), the pixels of the patch only."""
    mask = np.zeros(size, dtype=np.uint8)
    cv2.fillPoly(mask, [np.asarray(contour, dtype=np.int32).reshape(-1, 1, 2)], 1)
    return mask.view(bool)


def contour_piece(rings, size):
    """(top, left, bool crop) of rings of pixel centres filled together as cv2.fillPoly fills them (a single ring:
    `fill_contour`), over their box in the patch; points are whole pixels inside the patch."""
    rings = [np.asarray(ring, dtype=np.int32).reshape(-1, 2) for ring in rings]
    points = np.concatenate(rings)
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    crop = np.zeros((bottom - top + 1, right - left + 1), dtype=np.uint8)
    cv2.fillPoly(crop, [(ring - (left, top)).reshape(-1, 1, 2) for ring in rings], 1)
    return int(top), int(left), crop.view(bool)


ALONE_CHECKED = 2048  # nuclei of a patch up to which their boxes are compared pairwise


def paint_contours(nuclei, size):
    """(H, W) int32 map 1..n of n nuclei, each a list of non-empty rings of pixel centres inside the patch filled
    together as cv2.fillPoly fills them (`contour_piece`). Where nuclei overlap the larger is drawn first, so
    that one drawn inside another's outline (a fill covers the holes an outline cannot hold) stays on top;
    equal areas in list order, the later on top."""
    instance = np.zeros(size, dtype=np.int32)
    if not nuclei:
        return instance
    rings = [[np.asarray(ring, dtype=np.int32).reshape(-1, 2) for ring in nucleus] for nucleus in nuclei]
    for k, nucleus in enumerate(rings):
        cv2.fillPoly(instance, nucleus, k + 1)
    # Drawn in list order, that is the map unless two nuclei share a pixel. A fill stays within its points'
    # box, so only nuclei whose boxes meet another's can: drawn again in reverse order, they end the same on
    # every pixel exactly when none is shared; else they are filled apart and painted again by area.
    points = np.concatenate([ring for nucleus in rings for ring in nucleus])
    counts = [sum(len(ring) for ring in nucleus) for nucleus in rings]
    starts = np.cumsum(counts) - counts
    low, high = np.minimum.reduceat(points, starts), np.maximum.reduceat(points, starts)
    if len(nuclei) <= ALONE_CHECKED:
        meets = ((low[:, None] <= high[None]) & (low[None] <= high[:, None])).all(axis=-1)
        np.fill_diagonal(meets, False)
        others = np.flatnonzero(meets.any(axis=1)).tolist()
    else:
        others = list(range(len(nuclei)))
    if not others:
        return instance
    reverse = np.zeros(size, dtype=np.int32)
    for k in reversed(others):
        cv2.fillPoly(reverse, rings[k], k + 1)
    drawn = reverse != 0
    if np.array_equal(instance[drawn], reverse[drawn]):
        return instance
    pieces = [contour_piece(rings[k], size) for k in others]
    areas = np.array([int(crop.sum()) for _, _, crop in pieces], dtype=np.int64)
    for j in np.argsort(-areas, kind="stable").tolist():
        top, left, crop = pieces[j]
        instance[top : top + crop.shape[0], left : left + crop.shape[1]][crop] = others[j] + 1
    return instance


def geojson_geometry(polygons):
    """A GeoJSON geometry (Polygon or MultiPolygon, rings closed, integer corners) of trace's polygons."""
    closed = [[[*map(list, ring.tolist()), ring[0].tolist()] for ring in polygon] for polygon in polygons]
    if len(closed) == 1:
        return {"type": "Polygon", "coordinates": closed[0]}
    return {"type": "MultiPolygon", "coordinates": closed}
