"""PNG outputs people look at: image grids and loss curves (Pillow only, no plotting library)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def make_grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """uint8 `[N, H, W, 3]` → one uint8 image, row-major, `cols` per row (default ≈ √N)."""
    n, h, w = images.shape[:3]
    cols = max(1, min(n, cols or math.ceil(math.sqrt(n))))
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    return grid


def save_png(path: str, image: np.ndarray) -> str:
    """Write atomically (temp file + rename), so a reader never sees half a PNG."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def plot_curves(
    path: str, series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = "", size=(900, 520)
) -> str:
    """Line plot of named (x, y) series, one shared axis, with ticks and a legend, as a PNG."""
    w, h = size
    left, right, top, bottom = 70, 20, 30, 45
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    pts = [(x, y) for s in series.values() for x, y in s if np.isfinite(y)]
    if not pts:
        d.text((w // 2 - 40, h // 2), "no data", fill="black")
        img.save(path)
        return path
    xs, ys = zip(*pts)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        _, yp = px(x0, yv)
        d.line([left - 4, yp, left, yp], fill="black")
        d.text((4, yp - 6), f"{yv:.3g}", fill="black")
        xv = x0 + (x1 - x0) * i / 5
        xp, _ = px(xv, y0)
        d.line([xp, h - bottom, xp, h - bottom + 4], fill="black")
        d.text((xp - 12, h - bottom + 8), f"{xv:.0f}", fill="black")
    d.text((w // 2 - 10, h - 16), "step", fill="black")
    if title:
        d.text((left, 8), title, fill="black")
    for i, (name, s) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        line = [px(x, y) for x, y in s if np.isfinite(y)]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        elif line:
            d.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=colour)
        d.rectangle([w - right - 150, top + 8 + 16 * i, w - right - 138, top + 18 + 16 * i], fill=colour)
        d.text((w - right - 132, top + 6 + 16 * i), name, fill="black")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
