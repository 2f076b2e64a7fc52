"""An exact, pixel-based, GenEval-style judge of GenEval-world images: (image, spec) → satisfied?

Detection (`detect`; deterministic, numpy only, reusing the shapes judge's image intake and component tools):

1. foreground: pixels whose RGB distance to the white background exceeds half the smallest distance
   between white and a palette colour (≈ 110); each is named by its nearest palette colour;
2. objects: the 4-connected components of each colour (`shapes.judge.components`), holes filled, of at
   least `MIN_AREA` pixels (smaller specks are ignored);
3. shape: the best intersection-over-union against the five 16×16 shape templates, aligned on the
   component's bounding-box centre and tried at every ±1 px shift; below `MIN_IOU` the shape is
   `unknown` (the object still counts as an object);
4. colour: the palette colour of the component's pixels; centre: the mean pixel centre (centroid).

Checks (`check`, per task kind, GenEval's rules made exact): every stated object is present (`present`),
with its stated colour (`colour`; unstated colours are not checked), counting objects exactly `count`
times, a position pair in the stated relation by centroids (`relation`: the centroid of A at least
`RELATION_MARGIN` px left of / right of / above / below B's). With `strict` (default) the image may show
no other object (`only`): the number of detected objects equals the number the spec states. GenEval
itself allows extra objects of other classes (`strict=False`), and requires, for counting, exactly
`count` objects of the counted kind, and for colors, no object of the shape in another colour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from janusflow_jax.geneval.world import BACKGROUND, BOX, COLOUR_NAMES, KINDS, SHAPES, Spec, object_mask
from janusflow_jax.shapes.judge import as_image, components, fill_holes
from janusflow_jax.shapes.world import COLOURS

MIN_AREA = 12  # components smaller than this are specks, not objects
MIN_IOU = 0.5  # best template IoU below this → shape `unknown`
RELATION_MARGIN = 8.0  # px: the least centroid distance along the axis of a stated relation
UNKNOWN = "unknown"
_COL_RGB = np.array([COLOURS[n] for n in COLOUR_NAMES], np.float64)
_BG = np.array(BACKGROUND, np.float64)
_THRESHOLD = 0.5 * float(np.linalg.norm(_COL_RGB - _BG, axis=1).min())
_PAD = 3  # template canvases: border around the box, room for the ±1 shifts


def _template(shape: str) -> np.ndarray:
    """bool [BOX + 2·_PAD]²: the shape's mask with its box centred on the canvas centre."""
    size = BOX + 2 * _PAD
    return object_mask(shape, (size / 2, size / 2), BOX, size)


_TEMPLATES = {s: _template(s) for s in SHAPES}
_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
_STACK = np.stack([np.roll(_TEMPLATES[s], d, axis=(0, 1)) for s in SHAPES for d in _SHIFTS])  # [5·9, S, S]


@dataclasses.dataclass(frozen=True)
class Detection:
    """One detected object: shape (or `unknown`), colour, pixel area, centroid (x, y), best IoU."""

    shape: str
    colour: str
    area: int
    x: float
    y: float
    iou: float


def classify(mask: np.ndarray) -> tuple[str, float]:
    """(shape, IoU) of a bool [H, W] object mask: the best template at the mask's bbox centre (±1 px)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    size = BOX + 2 * _PAD
    h, w = y1 - y0, x1 - x0
    if h > size - 2 or w > size - 2:  # bigger than any object box: no shape
        return UNKNOWN, 0.0
    canvas = np.zeros((size, size), bool)
    oy, ox = (size - h) // 2, (size - w) // 2
    canvas[oy : oy + h, ox : ox + w] = mask[y0:y1, x0:x1]
    ious = (_STACK & canvas).sum(axis=(1, 2)) / (_STACK | canvas).sum(axis=(1, 2))
    i = int(np.argmax(ious))  # the first best: SHAPES order, then shift order
    best = (SHAPES[i // len(_SHIFTS)], float(ious[i]))
    return best if best[1] >= MIN_IOU else (UNKNOWN, best[1])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """`shapes.judge.fill_holes` run on the mask's bounding box (plus a 1-pixel frame): same result."""
    ys, xs = np.nonzero(mask)
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, mask.shape[0])
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, mask.shape[1])
    out = mask.copy()
    out[y0:y1, x0:x1] = fill_holes(mask[y0:y1, x0:x1])
    return out


def detect(image) -> list[Detection]:
    """The objects of an image (uint8 [64, 64, 3]; other sizes are resized), sorted by (y, x)."""
    img = as_image(image).astype(np.float64)
    fg = np.linalg.norm(img - _BG, axis=-1) > _THRESHOLD
    nearest = np.full(fg.shape, -1)
    nearest[fg] = np.argmin(np.linalg.norm(img[fg][:, None, :] - _COL_RGB, axis=-1), axis=-1)
    out = []
    for ci in np.unique(nearest[fg]):
        ys, xs = np.nonzero(nearest == ci)  # label the colour's bounding box only (same components)
        y0, x0 = ys.min(), xs.min()
        lab = components(nearest[y0 : ys.max() + 1, x0 : xs.max() + 1] == ci)
        ids, counts = np.unique(lab[lab >= 0], return_counts=True)
        for i in ids[counts >= MIN_AREA]:
            comp = np.zeros(fg.shape, bool)
            comp[y0 : y0 + lab.shape[0], x0 : x0 + lab.shape[1]] = lab == i
            comp = _fill_holes(comp)
            cy, cx = np.nonzero(comp)
            shape, iou = classify(comp)
            out.append(
                Detection(
                    shape, COLOUR_NAMES[int(ci)], int(comp.sum()), float(cx.mean() + 0.5), float(cy.mean() + 0.5), iou
                )
            )
    return sorted(out, key=lambda d: (d.y, d.x))


def relation_holds(a: Detection, b: Detection, relation: str) -> bool:
    """Whether A's centroid is `relation` B's (left of / right of / above / below) by `RELATION_MARGIN`."""
    d = {"left of": b.x - a.x, "right of": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[relation]
    return d >= RELATION_MARGIN


def check(spec: Spec, found: Sequence[Detection], *, strict: bool = True) -> dict[str, bool]:
    """The constraints of a spec on a list of detections → satisfied?, plus `all`.

    Keys: `present` (each stated shape there the stated number of times: ≥ 1, exactly `count` for
    counting), `colour` (the stated colours: a stated object has that colour; colors also needs no
    object of the shape in another colour), `relation` (position), `only` (strict: nothing else)."""
    out: dict[str, bool] = {}
    if spec.kind == "counting":
        o = spec.objects[0]
        n_shape = sum(d.shape == o.shape for d in found)
        n_kind = sum(d.shape == o.shape and d.colour == o.colour for d in found)
        out["present"] = n_shape >= 1
        out["count"] = n_kind == o.count
        out["colour"] = n_kind == n_shape
    else:
        out["present"] = all(any(d.shape == o.shape for d in found) for o in spec.objects)
        if spec.kind in ("colors", "color_attr"):
            out["colour"] = all(
                any(d.shape == o.shape and d.colour == o.colour for d in found)
                and all(d.colour == o.colour for d in found if d.shape == o.shape)
                for o in spec.objects
            )
    if spec.kind == "position":
        a, b = ([d for d in found if d.shape == o.shape] for o in spec.objects)
        out["relation"] = any(relation_holds(da, db, spec.relation) for da in a for db in b)
    if strict:
        out["only"] = len(found) == spec.n_objects
    out["all"] = all(out.values())
    return out


def judge(image, spec: Spec, *, strict: bool = True) -> bool:
    """Whether the image satisfies every stated constraint of the spec (see the module docstring)."""
    return check(spec, detect(image), strict=strict)["all"]


def score(images, specs: Sequence[Spec], *, strict: bool = True) -> dict[str, float]:
    """GenEval's summary: the fraction of images judged right per task kind (kinds present only) and
    `overall`, the mean over those kinds."""
    right: dict[str, list[bool]] = {}
    for img, spec in zip(images, specs, strict=True):
        right.setdefault(spec.kind, []).append(judge(img, spec, strict=strict))
    out = {k: float(np.mean(right[k])) for k in KINDS if k in right}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out
