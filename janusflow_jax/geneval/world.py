"""The synthetic "GenEval world": GenEval's six task kinds in miniature, 64×64 RGB, exact and cheap.

Specification (followed exactly; `judge.py` checks it back from pixels):

* background: white (255,255,255), always;
* objects: a shape — circle, square, triangle (the shapes world's primitives, `shapes.world.shape_mask`),
  diamond (|dx| + |dy| < 8) or cross (a plus sign, arms 16 long and 6 thick) — in one of the shapes
  world's six flat colours (red, green, blue, yellow, purple, orange), always in a 16×16 box (the
  shapes world's `small`), painted by pixel centres (no anti-aliasing), box centres on integer pixels;
* placement (`layout`): from a seed, box centres on the 8-px grid {16, 24, 32, 40, 48}² (so every box
  covers exactly 2×2 cells of the 8-px grid that both generators' tokens tile: a JanusFlow ShallowUViT
  token is 2×2 VAE latents of a 4×-downsampling VAE, a Janus code one cell of an 8×-downsampling VQ; at
  least 8 background pixels to the border), every pair of boxes at least 24 px apart along x or along y
  (≥ 8 background pixels between any two objects); position prompts put the second object ≥ 24 px away
  along the stated axis and ≤ 8 px off it;
* colours the prompt does not state (single_object, two_objects, position) are drawn from the seed.

Task kinds (`KINDS`) and their full specs (`Spec`):

| kind | spec | example canonical caption |
|---|---|---|
| single_object | shape | a photo of a circle |
| two_objects | {shape, shape} (distinct) | a photo of a circle and a square |
| counting | shape, colour, count 1–4 | a photo of three red circles |
| colors | shape, colour | a photo of a red circle |
| position | shape A, relation, shape B (distinct) | a photo of a circle left of a square |
| color_attr | {(colour, shape), (colour, shape)}, all distinct | a photo of a red circle and a blue square |

Specs per kind (train + held-out): single_object 5 + 0, two_objects 8 + 2, counting 102 + 18, colors
26 + 4, position 64 + 16, color_attr 258 + 42; 463 + 82 of 545 (15 %).

Unlike GenEval, counting prompts state the colour: an object "kind" here is a coloured shape, and the
third value lets the split hold counting compositions out while every pair of values stays in training.
Two-object specs are unordered; `specs()` lists them with the objects in `SHAPES` order.

Captions: `caption(spec, variant)`, variant 0 canonical (GenEval's "a photo of …"), 1 … `N_VARIANTS`-1
fixed paraphrases of the same spec. Questions (`qa(spec, seed)`): (question kind,
question, answer) about the rendered image, kinds `what` / `count` / `color` / `position` / `where`,
answers short lower-case words (`circle`, `circle and square`, `three`, `red`, `yes`, `no`, `left`).
Position questions are
asked about every two-object scene (two_objects, position, color_attr), in pairs: for each axis along
which the two box centres lie ≥ `RELATION_DISTANCE` apart, "is the A <relation> the B?" → yes and the
inverse relation → no (A, B in caption order; a position prompt's scene gives exactly its stated
relation's pair; before the builder's version 1.2.0 only position prompts were asked). On each such
axis also a `where` question (builder 1.3.0): "is the A left or right of the B?" → left | right, "is
the A above or below the B?" → above | below.

Splits (`is_heldout`, `specs(split, kind)`), deterministic, by a modular code on value indices (the shapes
world's rule). `held-out` specs are new compositions; `PAIRS` documents the pairs guaranteed in training
(tests/test_geneval_world.py checks every one, and that every single value appears in training):

* single_object: nothing held out (a spec is a single value);
* two_objects: held out iff (i_A + i_B) % 5 == 0 (square+cross, triangle+diamond). Every shape stays in
  two_objects training; the held-out shape pair itself appears in the training specs of position and
  color_attr (a two-value spec cannot keep its pair inside its own kind);
* counting: held out iff (i_shape + i_colour + count − 1) % 7 == 0. Every pair shape×colour, shape×count,
  colour×count appears in counting training (the third value has ≥ 2 values of distinct residues);
* colors: held out iff (i_shape + i_colour) % 7 == 0 — exactly the count-one slice of counting, so "a red
  circle" is held out iff "one red circle" is. Every shape and colour stays in colors training; the
  (shape, colour) pair appears in counting training (counts 2–4) and color_attr training;
* position: split by scene (A left of B ≡ B right of A, A above B ≡ B below A, both prompts go to the same
  side): scene (first, second, axis) with first = the left / upper shape, axis 0 horizontal, 1 vertical,
  held out iff (i_first + i_second + axis) % 5 == 0. In training: every shape×relation as A and as B, and
  every ordered shape pair (A, B);
* color_attr: held out iff (i_shape1 + i_colour1 + i_shape2 + i_colour2) % 7 == 0 (objects in `SHAPES`
  order). In training: every object binding (shape, colour), every shape pair, every colour pair, every
  object with each other-object shape and with each other-object colour.

Held-out means a new prompt of its kind. The content of a held-out two_objects or colors prompt still
shows up in training images under other kinds' prompts (a held-out "a square and a cross" scene is drawn
for the training prompt "a photo of a square above a cross"); counting and colors hold the same scenes out.

`EVAL_SPECS`: a fixed evaluation list, `EVAL_PER_KIND` held-out specs per kind evenly spaced along
`specs("heldout", kind)` (single_object has none held out: its `SHAPES` training specs, all five).

Seeds: `render(spec, seed)` = `draw(layout(spec, seed))`; the layout (centres, unstated colours) is a
function of (seed, spec). Records (`examples`) draw their per-record seed from (split seed, split, spec,
repeat); the training split uses `TRAIN_SEED`, the held-out split `HELDOUT_SEED` (the shapes world's seeds,
splits and record-seed rule: `shapes.world.derive_seed`, `split_seed`, `shuffled`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from janusflow_jax.shapes import world as shapes_world
from janusflow_jax.shapes.world import COLOURS, IMAGE_SIZE, derive_seed, shuffled

BACKGROUND: tuple[int, int, int] = shapes_world.BACKGROUNDS["white"]
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                           "diamond": "diamonds", "cross": "crosses"}  # fmt: skip
COUNTS: tuple[int, ...] = (1, 2, 3, 4)
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
KINDS: tuple[str, ...] = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
QUESTION_KINDS: tuple[str, ...] = ("what", "count", "color", "position", "where")
# `where`: "is the circle left or right of the square?" → "left" — the relation as the answer itself.
# A yes/no position question's answer is the XOR of the relation word and the layout: per image and per
# word it is balanced, so nothing about the layout alone or the word alone predicts it and a model
# trained from scratch gets no first-order signal to start reading places from (it stays at chance).
WHERE_AXES: tuple[tuple[str, str], ...] = (("left", "right"), ("above", "below"))

BOX = shapes_world.SIZES["small"]  # 16: the side of every object's box, pixels
GRID = 8  # px: box centres lie on multiples of GRID (a box then covers 2×2 whole grid cells)
MARGIN = 8  # background pixels at least between a box and the image border
GAP = 8  # background pixels at least between two boxes (along x or along y)
MIN_SEPARATION = BOX + GAP  # 24: the least centre distance along x or y of two objects
RELATION_DISTANCE = 24  # position prompts: the least centre distance along the stated axis
RELATION_OFFSET = 8  # position prompts: the most centre distance across it
CENTRE_RANGE = (BOX // 2 + MARGIN, IMAGE_SIZE - BOX // 2 - MARGIN)  # (16, 48), inclusive
GRID_CENTRES = tuple(range(CENTRE_RANGE[0], CENTRE_RANGE[1] + 1, GRID))  # (16, 24, 32, 40, 48)
_CELLS = [(x, y) for x in GRID_CENTRES for y in GRID_CENTRES]  # every box centre a layout may use
MAX_TRIES = 1000  # layout restarts (a 4-object layout placed object by object restarts rarely)

TRAIN_SEED = shapes_world.TRAIN_SEED  # the shapes world's split seeds and splits (and its record-seed rule)
HELDOUT_SEED = shapes_world.HELDOUT_SEED
SPLITS = shapes_world.SPLITS
EVAL_PER_KIND = 4

PAIRS: dict[str, tuple[str, ...]] = {  # kind → the pairs guaranteed in training (checked by the tests)
    "single_object": (),
    "two_objects": ("shape×shape (in position and color_attr training)",),
    "counting": ("shape×colour", "shape×count", "colour×count"),
    "colors": ("shape×colour (in counting and color_attr training)",),
    "position": ("shape A×relation", "shape B×relation", "shape A×shape B"),
    "color_attr": (
        "object (shape, colour)",
        "shape×shape",
        "colour×colour",
        "object×other shape",
        "object×other colour",
    ),
}


# --- specs ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Obj:
    """One stated object group: a shape, its colour (None: not stated, drawn from the seed), a count."""

    shape: str
    colour: str | None = None
    count: int = 1

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"Obj.shape: {self.shape!r} is not one of {SHAPES}")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"Obj.colour: {self.colour!r} is not one of {COLOUR_NAMES}")
        if self.count not in COUNTS:
            raise ValueError(f"Obj.count: {self.count!r} is not one of {COUNTS}")

    def phrase(self) -> str:
        """The noun phrase of one object: `a circle`, `an orange square`."""
        return _article(f"{self.colour} {self.shape}" if self.colour else self.shape)

    def counted(self) -> str:
        """The counted noun phrase: `one red circle`, `three red circles`."""
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        return f"{COUNT_WORDS[self.count]} {self.colour + ' ' if self.colour else ''}{noun}"

    def words(self) -> tuple[int, int, int]:
        """(shape index, colour index + 1 or 0, count)."""
        return (SHAPES.index(self.shape), 0 if self.colour is None else COLOUR_NAMES.index(self.colour) + 1, self.count)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclasses.dataclass(frozen=True)
class Spec:
    """One prompt's content: the task kind, the stated objects (in caption order), the relation of
    objects[0] to objects[1] (position only). Validated per kind (see the module docstring)."""

    kind: str
    objects: tuple[Obj, ...]
    relation: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Spec.kind: {self.kind!r} is not one of {KINDS}")
        objs = tuple(self.objects)
        object.__setattr__(self, "objects", objs)
        n = 2 if self.kind in ("two_objects", "position", "color_attr") else 1
        stated = self.kind in ("counting", "colors", "color_attr")
        if len(objs) != n or not all(isinstance(o, Obj) for o in objs):
            raise ValueError(f"{self.kind}: needs {n} Obj, got {objs!r}")
        if any((o.colour is not None) != stated for o in objs):
            raise ValueError(f"{self.kind}: colours must be {'stated' if stated else 'unstated'}: {objs!r}")
        if self.kind != "counting" and any(o.count != 1 for o in objs):
            raise ValueError(f"{self.kind}: counts other than 1 are for counting: {objs!r}")
        if n == 2 and objs[0].shape == objs[1].shape:
            raise ValueError(f"{self.kind}: the two objects need distinct shapes: {objs!r}")
        if self.kind == "color_attr" and objs[0].colour == objs[1].colour:
            raise ValueError(f"color_attr: the two objects need distinct colours: {objs!r}")
        if (self.relation is not None) != (self.kind == "position"):
            raise ValueError(f"{self.kind}: a relation is {'required' if self.kind == 'position' else 'not allowed'}")
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"Spec.relation: {self.relation!r} is not one of {RELATIONS}")

    @property
    def n_objects(self) -> int:
        return sum(o.count for o in self.objects)

    def words(self) -> tuple[int, ...]:
        """Integer words identifying the spec (kind, objects, relation) — seeds are derived from them."""
        rel = 0 if self.relation is None else RELATIONS.index(self.relation) + 1
        return (KINDS.index(self.kind), *(w for o in self.objects for w in o.words()), rel)

    @property
    def key(self) -> str:
        """A file-name friendly identifier, e.g. `position-a_circle_left_of_a_square`."""
        return f"{self.kind}-" + caption(self, 1).replace(" ", "_")

    def canonical(self) -> Spec:
        """The same content with the objects of an unordered kind in `SHAPES` order."""
        if self.kind in ("two_objects", "color_attr"):
            return dataclasses.replace(self, objects=tuple(sorted(self.objects, key=lambda o: SHAPES.index(o.shape))))
        return self


def _all_specs(kind: str) -> list[Spec]:
    if kind == "single_object":
        return [Spec(kind, (Obj(s),)) for s in SHAPES]
    if kind == "two_objects":
        return [Spec(kind, (Obj(a), Obj(b))) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1 :]]
    if kind == "counting":
        return [Spec(kind, (Obj(s, c, n),)) for s in SHAPES for c in COLOUR_NAMES for n in COUNTS]
    if kind == "colors":
        return [Spec(kind, (Obj(s, c),)) for s in SHAPES for c in COLOUR_NAMES]
    if kind == "position":
        return [Spec(kind, (Obj(a), Obj(b)), r) for a in SHAPES for r in RELATIONS for b in SHAPES if a != b]
    if kind == "color_attr":
        return [
            Spec(kind, (Obj(a, ca), Obj(b, cb)))
            for i, a in enumerate(SHAPES)
            for b in SHAPES[i + 1 :]
            for ca in COLOUR_NAMES
            for cb in COLOUR_NAMES
            if ca != cb
        ]
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


_ALL = {k: tuple(_all_specs(k)) for k in KINDS}


def all_specs(kind: str | None = None) -> list[Spec]:
    """Every spec of a kind (all kinds when None), in a fixed order."""
    if kind is None:
        return [s for k in KINDS for s in _ALL[k]]
    if kind not in _ALL:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    return list(_ALL[kind])


def position_scene(spec: Spec) -> tuple[int, int, int]:
    """(first, second, axis) of a position spec: the left (axis 0) or upper (axis 1) shape's index first."""
    a, b = (SHAPES.index(o.shape) for o in spec.objects)
    if spec.relation in ("left of", "above"):
        return a, b, RELATIONS.index(spec.relation) // 2
    return b, a, RELATIONS.index(spec.relation) // 2


def is_heldout(spec: Spec) -> bool:
    """The split rule (module docstring): True for a held-out composition."""
    spec = spec.canonical()
    idx = [(SHAPES.index(o.shape), -1 if o.colour is None else COLOUR_NAMES.index(o.colour), o.count)
           for o in spec.objects]  # fmt: skip
    if spec.kind == "single_object":
        return False
    if spec.kind == "two_objects":
        return (idx[0][0] + idx[1][0]) % 5 == 0
    if spec.kind == "counting":
        s, c, n = idx[0]
        return (s + c + n - 1) % 7 == 0
    if spec.kind == "colors":
        s, c, _ = idx[0]
        return (s + c) % 7 == 0
    if spec.kind == "position":
        return sum(position_scene(spec)) % 5 == 0
    return (idx[0][0] + idx[0][1] + idx[1][0] + idx[1][1]) % 7 == 0  # color_attr


def specs(split: str, kind: str | None = None) -> list[Spec]:
    """The specs of a split (`train` | `heldout`) and kind (all kinds when None), `all_specs` order."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return [s for s in all_specs(kind) if is_heldout(s) == (split == "heldout")]


def evaluation_specs(per_kind: int = EVAL_PER_KIND) -> dict[str, list[Spec]]:
    """kind → `per_kind` held-out specs evenly spaced along `specs("heldout", kind)` (single_object: its
    training specs, all of them, since it holds nothing out)."""
    out = {}
    for kind in KINDS:
        pool = specs("heldout", kind)
        if not pool:
            out[kind] = specs("train", kind)
            continue
        k = min(per_kind, len(pool))
        picks = sorted({round(i * (len(pool) - 1) / max(k - 1, 1)) for i in range(k)})
        out[kind] = [pool[i] for i in picks]
    return out


EVAL_SPECS: dict[str, list[Spec]] = evaluation_specs()


# --- captions and questions -----------------------------------------------------------------------

REL_PARAPHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "over", "below": "under"}
N_VARIANTS = 4


def caption(spec: Spec, variant: int = 0) -> str:
    """Caption `variant` (0 canonical, 1 … N_VARIANTS-1 paraphrases) of a spec."""
    if not 0 <= variant < N_VARIANTS:
        raise ValueError(f"variant must be in [0, {N_VARIANTS}), got {variant}")
    k = spec.kind
    if k in ("single_object", "colors", "counting"):
        o = spec.objects[0]
        np_ = o.counted() if k == "counting" else o.phrase()
        if k == "colors":
            last = f"{_article(o.shape)} that is {o.colour}"
        else:
            last = f"exactly {np_}" if k == "counting" else f"{np_} on a white background"
        return (f"a photo of {np_}", np_, f"an image of {np_}", last)[variant]
    a, b = (o.phrase() for o in spec.objects)
    if k == "position":
        rel = spec.relation
        forms = (f"a photo of {a} {rel} {b}", f"{a} {rel} {b}", f"a photo of {a} {REL_PARAPHRASE[rel]} {b}")
        return (*forms, f"an image of {a} {rel} {b}")[variant]
    forms = (f"a photo of {a} and {b}", f"{a} and {b}", f"a photo of {b} and {a}")
    return (*forms, f"an image with {a} and {b}")[variant]


def captions(spec: Spec) -> list[str]:
    """All `N_VARIANTS` captions, canonical first."""
    return [caption(spec, v) for v in range(N_VARIANTS)]


def qa(spec: Spec, seed: int) -> list[tuple[str, str, str]]:
    """(question kind, question, answer) about `render(spec, seed)`, in a fixed order."""
    return qa_of(spec, layout(spec, seed))


def qa_of(spec: Spec, placed: Sequence[Placement]) -> list[tuple[str, str, str]]:
    """The questions of `qa` for an explicit layout of the spec (colours are read from it)."""
    colour = {p.shape: p.colour for p in placed}
    names = [o.shape for o in spec.objects]
    out = []
    if len(names) == 1:
        out.append(("what", "what shape is in the image?", names[0]))
    else:
        out.append(("what", "what shapes are in the image?", " and ".join(names)))
    if spec.kind == "counting":
        o = spec.objects[0]
        out.append(("count", f"how many {PLURALS[o.shape]} are there?", COUNT_WORDS[o.count]))
    else:
        out.append(("count", "how many objects are there?", COUNT_WORDS[spec.n_objects]))
    for o in spec.objects:
        q = f"what color is the {o.shape}?" if o.count == 1 else f"what color are the {PLURALS[o.shape]}?"
        out.append(("color", q, colour[o.shape]))
    if len(names) == 2:  # two_objects, position, color_attr: the relation on every axis it is clear on
        a, b = placed
        for true, d in (("left of", b.x - a.x), ("above", b.y - a.y)):
            if abs(d) >= RELATION_DISTANCE:
                rel = true if d > 0 else INVERSE[true]
                out.append(("position", f"is the {a.shape} {rel} the {b.shape}?", "yes"))
                out.append(("position", f"is the {a.shape} {INVERSE[rel]} the {b.shape}?", "no"))
        for (lo, hi), d in zip(WHERE_AXES, (b.x - a.x, b.y - a.y), strict=True):
            if abs(d) >= RELATION_DISTANCE:
                rel = f"{lo} or {hi} of" if lo == "left" else f"{lo} or {hi}"
                out.append(("where", f"is the {a.shape} {rel} the {b.shape}?", lo if d > 0 else hi))
    return out


# --- layout and rendering -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Placement:
    """One drawn object: shape, colour and the integer centre (x, y) of its 16×16 box."""

    shape: str
    colour: str
    x: int
    y: int


def object_mask(shape: str, centre: tuple[float, float], box: int = BOX, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """bool [H, W]: pixels whose centre lies inside `shape` (box side `box`, box centred at `centre`)."""
    if shape in ("circle", "square", "triangle"):
        return shapes_world.shape_mask(shape, box, centre, image_size)
    h = box / 2.0
    ys, xs = np.mgrid[0:image_size, 0:image_size]
    dx = np.abs(xs + 0.5 - centre[0])
    dy = np.abs(ys + 0.5 - centre[1])
    if shape == "diamond":
        return dx + dy < h
    if shape == "cross":
        return ((dx < h) & (dy < h / 3)) | ((dx < h / 3) & (dy < h))
    raise ValueError(f"unknown shape {shape!r}")


def _rng(seed: int, spec: Spec) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**63, *spec.words()])


def _separated(xy: list[tuple[int, int]]) -> bool:
    return all(
        max(abs(x0 - x1), abs(y0 - y1)) >= MIN_SEPARATION for i, (x0, y0) in enumerate(xy) for x1, y1 in xy[i + 1 :]
    )


def _centres(rng: np.random.Generator, spec: Spec) -> list[tuple[int, int]]:
    grid = GRID_CENTRES
    for _ in range(MAX_TRIES):
        if spec.kind == "position":
            axis = RELATIONS.index(spec.relation) // 2  # 0: x, 1: y
            sign = -1 if spec.relation in ("left of", "above") else 1  # A's coordinate minus B's, in sign
            main_a = int(rng.choice(grid))
            main_b = main_a - sign * GRID * int(rng.integers(RELATION_DISTANCE // GRID, len(grid)))
            cross_a = int(rng.choice(grid))
            cross_b = cross_a + GRID * int(rng.integers(-(RELATION_OFFSET // GRID), RELATION_OFFSET // GRID + 1))
            if not (grid[0] <= main_b <= grid[-1] and grid[0] <= cross_b <= grid[-1]):
                continue
            pa, pb = ((main_a, cross_a), (main_b, cross_b)) if axis == 0 else ((cross_a, main_a), (cross_b, main_b))
            return [pa, pb]
        xy: list[tuple[int, int]] = []  # object by object, each uniform over the cells clear of the others
        for _ in range(spec.n_objects):
            free = [c for c in _CELLS if _separated(xy + [c])]
            if not free:
                break
            xy.append(free[int(rng.integers(len(free)))])
        if len(xy) == spec.n_objects:
            return xy
    raise RuntimeError(f"no layout for {spec} in {MAX_TRIES} tries")  # never happens for the world's specs


def layout(spec: Spec, seed: int) -> list[Placement]:
    """The objects of `render(spec, seed)` (caption order; a counted group's objects consecutive)."""
    rng = _rng(seed, spec)
    colours = [o.colour or COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))] for o in spec.objects]
    centres = iter(_centres(rng, spec))
    return [Placement(o.shape, c, *next(centres)) for o, c in zip(spec.objects, colours) for _ in range(o.count)]


def draw(placed: Sequence[Placement]) -> np.ndarray:
    """uint8 [64, 64, 3]: the objects painted on the white background (later ones on top)."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    img[:] = BACKGROUND
    for p in placed:
        img[object_mask(p.shape, (p.x, p.y))] = COLOURS[p.colour]
    return img


def render(spec: Spec, seed: int) -> np.ndarray:
    """uint8 [64, 64, 3]: the spec's image for a seed (exact; same (spec, seed) → same pixels)."""
    return draw(layout(spec, seed))


# --- records --------------------------------------------------------------------------------------


def record_seed(seed: int, split: str, spec: Spec, repeat: int) -> int:
    """The per-record seed (a 63-bit integer) of (split seed, split, spec, repeat)."""
    return derive_seed(seed, split, spec.words(), repeat)


@dataclasses.dataclass(frozen=True)
class Example:
    """One rendered (spec, repeat) of a split with its caption and QA (question kind, question, answer)."""

    spec: Spec
    split: str
    repeat: int
    seed: int  # the record seed: drives the layout, the unstated colours and the paraphrase
    caption: str
    qa: tuple[tuple[str, str, str], ...]

    @property
    def id(self) -> str:
        return f"{self.split}/{self.spec.key}/{self.repeat}"

    def image(self) -> np.ndarray:
        return render(self.spec, self.seed)


def repeats_of(kind: str, split: str, repeats: int, min_per_kind: int) -> int:
    """Repeats of each spec of a kind: `repeats`, raised so the kind gives ≥ `min_per_kind` records
    (training only; the held-out split renders each spec once)."""
    if split == "heldout":
        return 1
    n = len(specs(split, kind))
    return max(int(repeats), -(-int(min_per_kind) // n)) if n else 0


def examples(
    split: str,
    *,
    seed: int | None = None,
    repeats: int = 1,
    min_per_kind: int = 0,
    paraphrase_prob: float = 0.5,
    kinds: Sequence[str] = KINDS,
) -> list[Example]:
    """The examples of a split, in a seed-shuffled order (deterministic).

    Each training spec is rendered `repeats_of(kind, …)` times, each repeat with its own seed (so its
    own placement and unstated colours). Repeat 0 uses the canonical caption; each later repeat (train
    only) a paraphrase with probability `paraphrase_prob`. The held-out split: once, canonical.
    `seed` defaults to `TRAIN_SEED` / `HELDOUT_SEED`."""
    seed = shapes_world.split_seed(split, seed, repeats)
    out = []
    for kind in kinds:
        r_k = repeats_of(kind, split, repeats, min_per_kind)
        for spec in specs(split, kind):
            for r in range(r_k):
                s = record_seed(seed, split, spec, r)
                rng = np.random.default_rng(s)
                u, v = rng.random(), int(rng.integers(1, N_VARIANTS))
                cap = caption(spec, v if split == "train" and r > 0 and u < paraphrase_prob else 0)
                out.append(Example(spec, split, r, s, cap, tuple(qa(spec, s))))
    return shuffled(out, seed, split)


def corpus_strings() -> list[str]:
    """Every caption, question and answer the world can produce (deduplicated, sorted)."""
    out: set[str] = set()
    for spec in all_specs():
        out.update(captions(spec))
        for _, q, a in qa(spec, 0):
            out.update((q, a))
    out.update(COLOUR_NAMES)
    return sorted(out)
