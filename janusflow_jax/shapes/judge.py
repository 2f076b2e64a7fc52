"""A deterministic, pixel-based judge of shapes-world images: image → `Attributes`.

Steps (`analyse` returns the intermediate values):

1. background: per-channel median of the 2-pixel border frame (no shape of the spec reaches it),
   named by the nearest of the three backgrounds;
   If the border is noisy (robust sigma > `NOISE_SIGMA`), the image is first 3×3-median filtered;
2. foreground: pixels whose RGB distance to the MEASURED background colour exceeds half the smallest
   distance between that background and any palette colour (≥ 47; 110 on white/black). On blurred
   edges this keeps the pixels that are more shape than background, so areas are preserved;
3. cleaning (robustness to generated images): keep the largest 4-connected foreground component
   (drops specks and stray blobs), then fill its holes (background pixels not connected to the border);
4. shape and size: the best intersection-over-union among the six (shape, size) templates of the
   spec, each aligned on the component's bounding-box centre and tried at every ±1 px shift; this is
   the fill ratio test (circle π/4, square 1, triangle ½) made robust to ragged edges;
5. position: the nearest of the five box centres to the best template's box centre;
6. colour: the per-channel median of the component's interior (the component eroded by one pixel
   when enough of it remains: blurred edges are mixed colours), named by the palette entry whose
   mixing segment with the background (colour fraction ½ … 1) passes nearest to it — exact for flat
   colours, and tolerant of a shape washed out towards the background.

An image with (almost) no foreground is judged `UNKNOWN` in every field but the background.
Images of another size are resized (bilinear) to 64×64 first.
"""

from __future__ import annotations

import numpy as np

from janusflow_jax.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    FIELDS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    UNKNOWN,
    Attributes,
    shape_mask,
)

MIN_AREA = 12  # fewer foreground pixels than this → no shape
NOISE_SIGMA = 4.0  # border noise (robust sigma per channel) above which a 3×3 median filter is applied
MIX_MIN = 0.5  # the least colour fraction a shape pixel is assumed to keep (colour matching, step 6)
_BG_NAMES = tuple(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[n] for n in _BG_NAMES], np.float64)
_COL_NAMES = tuple(COLOURS)
_COL_RGB = np.array([COLOURS[n] for n in _COL_NAMES], np.float64)
_POS_NAMES = tuple(POSITIONS)
_POS_XY = np.array([POSITIONS[n] for n in _POS_NAMES], np.float64)
_REF = (IMAGE_SIZE // 2, IMAGE_SIZE // 2)  # templates are drawn with their box centred here


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())


def _templates() -> list[tuple[str, str, np.ndarray, tuple[float, float]]]:
    """(shape, size, mask with box centre `_REF`, painted-bbox centre) for the 6 (shape, size) pairs."""
    out = []
    for shape in SHAPES:
        for size, box in SIZES.items():
            m = shape_mask(shape, box, _REF)
            x0, x1, y0, y1 = _bbox(m)
            out.append((shape, size, m, ((x0 + x1 + 1) / 2.0, (y0 + y1 + 1) / 2.0)))
    return out


_TEMPLATES = _templates()


def _neighbours_min(lab: np.ndarray, big: int) -> np.ndarray:
    """Elementwise minimum of each pixel and its 4 neighbours (outside = `big`)."""
    p = np.pad(lab, 1, constant_values=big)
    return np.minimum.reduce([lab, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])


def components(mask: np.ndarray) -> np.ndarray:
    """int [H, W] labels of the 4-connected components of `mask` (-1 outside; label = smallest flat
    index of the component). Pure numpy: min-label propagation with pointer jumping."""
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        new = np.where(mask, _neighbours_min(lab, big), big)
        flat = new.reshape(-1)
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # pointer jumping: a label's own label (≤ it)
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(mask, lab, -1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of `mask` (ties: the one with the smallest first pixel)."""
    if not mask.any():
        return mask.copy()
    lab = components(mask)
    ids, counts = np.unique(lab[lab >= 0], return_counts=True)
    return lab == ids[np.argmax(counts)]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` plus every non-mask pixel not 4-connected to the image border through non-mask pixels."""
    free = ~mask
    reach = np.zeros_like(mask)
    reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:
        p = np.pad(reach, 1)
        grown = (reach | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]) & free
        if np.array_equal(grown, reach):
            break
        reach = grown
    return mask | (free & ~reach)


def erode(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _shift(m: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`m` moved by (dx, dy) pixels, zero-filled (no wrap-around)."""
    out = np.zeros_like(m)
    h, w = m.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = m[ys, xs]
    return out


def _border(img: np.ndarray) -> np.ndarray:
    """[N, 3] pixels of the 2-pixel frame."""
    return np.concatenate(
        [img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3), img[2:-2, :2].reshape(-1, 3), img[2:-2, -2:].reshape(-1, 3)]
    )


def median3(img: np.ndarray) -> np.ndarray:
    """Per-channel 3×3 median filter (edge pixels replicated)."""
    h, w = img.shape[:2]
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    stack = np.stack([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return np.median(stack, axis=0)


def _line_distance(rgb: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Distance of `rgb` to each palette colour's mixing segment with the background,
    bg + t·(colour − bg) for t ∈ [MIX_MIN, 1]: a flat colour matches exactly (t = 1) and a colour
    washed out towards the background by blur still matches its own palette entry."""
    d = _COL_RGB - bg
    t = np.clip(((rgb - bg) * d).sum(axis=1) / np.maximum((d * d).sum(axis=1), 1e-9), MIX_MIN, 1.0)
    return np.linalg.norm(bg + t[:, None] * d - rgb, axis=1)


def as_image(image) -> np.ndarray:
    """uint8 [64, 64, 3] of an HWC RGB(A) image: alpha dropped, other dtypes rounded and clipped, other
    sizes resized (bilinear). Shared with the GenEval judge."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"expected an HWC RGB image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(np.round(img.astype(np.float64)), 0, 255).astype(np.uint8)
    if img.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
    return img


def analyse(image) -> dict:
    """The judge's measurements: attributes plus background RGB, threshold, area, bbox, IoUs."""
    img = as_image(image).astype(np.float64)
    border = _border(img)
    bg_rgb = np.median(border, axis=0)
    noise = float(np.mean(1.4826 * np.median(np.abs(border - bg_rgb), axis=0)))  # robust sigma
    if noise > NOISE_SIGMA:
        img = median3(img)
    bg_i = int(np.argmin(np.linalg.norm(_BG_RGB - bg_rgb, axis=1)))
    threshold = 0.5 * float(np.linalg.norm(_COL_RGB - _BG_RGB[bg_i], axis=1).min())
    fg = np.linalg.norm(img - bg_rgb, axis=-1) > threshold
    comp = fill_holes(largest_component(fg))
    out = {
        "background": _BG_NAMES[bg_i],
        "background_rgb": bg_rgb.tolist(),
        "threshold": threshold,
        "foreground_area": int(fg.sum()),
        "area": int(comp.sum()),
    }
    if out["area"] < MIN_AREA:
        out.update(shape=UNKNOWN, size=UNKNOWN, position=UNKNOWN, colour=UNKNOWN, iou=0.0, bbox=None)
        return out
    x0, x1, y0, y1 = _bbox(comp)
    cx, cy = (x0 + x1 + 1) / 2.0, (y0 + y1 + 1) / 2.0
    best = (-1.0, "", "", (0.0, 0.0))
    ious = {}
    for shape, size, tmask, (tx, ty) in _TEMPLATES:
        bx, by = round(cx - tx), round(cy - ty)
        top = (-1.0, (0.0, 0.0))
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                m = _shift(tmask, bx + dx, by + dy)
                iou = float((m & comp).sum() / (m | comp).sum())
                if iou > top[0]:
                    top = (iou, (_REF[0] + bx + dx, _REF[1] + by + dy))
        ious[f"{size} {shape}"] = top[0]
        if top[0] > best[0]:
            best = (top[0], shape, size, top[1])
    iou, shape, size, centre = best
    pos_i = int(np.argmin(np.linalg.norm(_POS_XY - np.array(centre), axis=1)))
    inner = erode(comp)
    pixels = img[inner] if inner.sum() >= MIN_AREA else img[comp]
    col_rgb = np.median(pixels, axis=0)
    col_i = int(np.argmin(_line_distance(col_rgb, bg_rgb)))
    out.update(
        shape=shape,
        size=size,
        position=_POS_NAMES[pos_i],
        colour=_COL_NAMES[col_i],
        colour_rgb=col_rgb.tolist(),
        centre=[float(centre[0]), float(centre[1])],
        bbox=[x0, y0, x1, y1],
        iou=iou,
        ious=ious,
    )
    return out


def judge(image) -> Attributes:
    """The attributes shown by a uint8 [64, 64, 3] image (see the module docstring)."""
    a = analyse(image)
    return Attributes(**{f: a[f] for f in FIELDS})


def score(pred: Attributes, true: Attributes) -> dict[str, bool]:
    """Per-attribute correctness plus `all` (every attribute right)."""
    out = {f: getattr(pred, f) == getattr(true, f) for f in FIELDS}
    out["all"] = all(out.values())
    return out


def accuracy(preds, trues) -> dict[str, float]:
    """Mean of `score` over pairs (per attribute and `all`)."""
    scores = [score(p, t) for p, t in zip(preds, trues, strict=True)]
    if not scores:
        return {k: float("nan") for k in (*FIELDS, "all")}
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
