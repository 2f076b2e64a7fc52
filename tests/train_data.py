"""A small local dataset in the layouts janusflow-train reads: a folder of PNGs + captions.jsonl,
a questions JSONL, a text file. Colours are learnable from the captions (for loss-decrease checks)."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}


def make_dataset(root: str, n: int = 16, size: int = 64, seed: int = 0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "captions")
    os.makedirs(img_dir, exist_ok=True)
    names = list(COLOURS)
    caps, qa = [], []
    for i in range(n):
        colour = names[i % len(names)]
        img = np.full((size, size, 3), 255, np.uint8)
        half = size // 4 + int(rng.integers(0, size // 8))
        c = size // 2
        img[c - half : c + half, c - half : c + half] = COLOURS[colour]
        fname = f"{i:04d}.png"
        Image.fromarray(img).save(os.path.join(img_dir, fname))
        caps.append({"file": fname, "caption": f"a {colour} square"})
        qa.append({"image": f"captions/{fname}", "question": "what color?", "answer": colour})
    with open(os.path.join(img_dir, "captions.jsonl"), "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in caps)
    with open(os.path.join(root, "qa.jsonl"), "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in qa)
    with open(os.path.join(root, "text.txt"), "w") as f:
        f.writelines(f"the {c} square is {c}\n" for c in names * 2)
    return {"captions": img_dir, "qa": os.path.join(root, "qa.jsonl"), "text": os.path.join(root, "text.txt")}
