"""The training input pipeline: Grain reading of the three data kinds into fixed-shape numpy batches.

Ordering contract (what makes multi-host runs and resumption exact). Per kind there is one
deterministic infinite stream: epochs of the source, epoch e a permutation of the source drawn from
(seed, kind, e) (Grain's index shuffle). The GLOBAL batch at step s takes the stream elements
`[s·B, (s+1)·B)` of that kind (B = `mix.<kind>`); process p of P takes the contiguous slice
`[s·B + p·B/P, s·B + (p+1)·B/P)`, so the P process batches concatenated in process order are the
single-process batch. A bad record met at read time (undecodable image, empty text, a sequence that
cannot fit its length budget even when truncated) is replaced by the next good record of the source
in index order (index+1, index+2, … modulo its length) — a rule that depends only on the record, not
on the process layout — and counted in `TrainLoader.skipped` (one `DataWarning` per kind).

Over-long records are truncated, not skipped, and counted per delivered row in
`TrainLoader.truncated` (one `DataWarning` per kind, naming the first such record):
  gen:  the caption is cut (at a token boundary of its own tokenisation, re-tokenised inside the
        template) to the longest prefix whose whole prompt (BOS, template, image start tag last)
        fits `gen_prompt_len`;
  und:  the question is cut the same way; the image slots and the whole answer + EOS always stay;
  text: the tokens are cut to `text_len` (BOS + the first text_len - 1 tokens, no EOS: the
        document does not end there).
At least one token of the caption / question / text must survive; a record where even that does
not fit (template + image + answer too long) stays bad.

Everything is a pure function of (seed, position), so the checkpoint state is just the next stream
position per kind (plus the skipped / truncated counters); `set_state` on any loader restores the
exact position whatever was prefetched.

Batch layout (numpy; a kind with 0 rows is absent; b = mix.<kind> // process_count):
  gen:  prompt_ids int32 [b, gen_prompt_len] (left-padded with pad_id; the tokenised
        `generation_prompt(caption)`, ending with the image start tag), prompt_mask int32,
        image uint8 [b, gen_image_size, gen_image_size, 3] (short side resized bicubic, centre crop)
  und:  ids int32 [b, und_len] (right-padded: understanding prompt with the image slots expanded,
        " answer" tokens, EOS), mask int32, loss_mask float32 (answer tokens and EOS),
        pixel_values float32 [b, S, S, 3] (`processor.preprocess_image`), images_seq_mask bool
        (image start tag + num_image_tokens slots)
  text: ids int32 [b, text_len] (right-padded: BOS text EOS; a truncated text has no EOS), mask
        int32, loss_mask float32 (all real tokens but BOS)
With `processor=None` (image-only tasks: the vae and vq tokenizers) only generation rows can be asked
for, and they hold `image` alone.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import sys
import warnings
from collections.abc import Sequence

import grain
import numpy as np
from PIL import Image

from janusflow_jax import processing

KINDS = ("gen", "und", "text")
_KIND_CODE = {"gen": 1, "und": 2, "text": 3}
STATE_VERSION = 1


class DataError(ValueError):
    """Unusable training data or loader configuration (the message names the path / kind)."""


class DataWarning(UserWarning):
    """Bad records were skipped (build time or read time), or over-long ones truncated (read time)."""


@dataclasses.dataclass(frozen=True)
class MixSpec:
    """Rows of each kind per GLOBAL batch; 0 = kind absent."""

    gen: int = 0
    und: int = 0
    text: int = 0

    def __post_init__(self):
        for k in KINDS:
            v = getattr(self, k)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise DataError(f"MixSpec.{k} must be a non-negative int, got {v!r}")


class _Bad(Exception):
    """A record that cannot be used (message = reason)."""


def _as_text(rec: dict, key: str) -> str:
    if key not in rec:
        raise _Bad(f"no {key!r} field")
    v = rec[key]
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, (bytes, np.bytes_)):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{key!r} is not UTF-8") from None
    if not isinstance(v, str):
        raise _Bad(f"{key!r} is not text ({type(v).__name__})")
    v = v.strip()
    if not v:
        raise _Bad(f"empty {key!r}")
    return v


def _as_image(rec: dict) -> Image.Image:
    """The record's image (encoded bytes, uint8 HWC array or PIL image) as a loaded RGB PIL image."""
    if "image" not in rec:
        raise _Bad("no 'image' field")
    v = rec["image"]
    if isinstance(v, np.ndarray) and v.shape == () and v.dtype == object:
        v = v.item()
    try:
        if isinstance(v, Image.Image):
            return v.convert("RGB")
        if isinstance(v, np.ndarray):
            if v.dtype != np.uint8 or v.ndim not in (2, 3) or 0 in v.shape:
                raise ValueError(f"array of {v.dtype} {v.shape}")
            return Image.fromarray(v).convert("RGB")
        with Image.open(io.BytesIO(bytes(v))) as im:
            return im.convert("RGB")  # forces the full decode
    except Exception as e:  # PIL raises many types for corrupt data
        raise _Bad(f"undecodable image ({type(e).__name__}: {e})") from None


def resize_center_crop(image, size: int) -> np.ndarray:
    """RGB PIL image or uint8 HWC array → uint8 `[size, size, 3]`: bicubic resize so the SHORT side is
    `size` (aspect kept, rounded), then the centred square crop (left/top offset rounded down)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    im = im.convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    x = np.asarray(im, np.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(x[top : top + size, left : left + size])


def _fit_prefix(text: str, tokenizer, build, limit: int) -> tuple[list[int], int, int] | None:
    """The longest prefix of `text` whose token sequence `build(prefix)` has at most `limit` tokens.

    `text` is cut after a token of its own tokenisation (at least one kept, trailing spaces dropped)
    and the prefix re-tokenised through `build`, so the row is a real tokenisation of a shorter text.
    Returns (ids, tokens kept, tokens in `text`), or None when not even one token fits."""
    ends = [e for _, e in tokenizer.encode(text, add_special_tokens=False).offsets]
    best = None
    lo, hi = 1, len(ends) - 1
    while lo <= hi:  # lengths grow with the prefix; each candidate's length is measured, not predicted
        mid = (lo + hi) // 2
        cut = text[: ends[mid - 1]].rstrip()
        ids = build(cut) if cut else None
        if ids is not None and len(ids) <= limit:
            best, lo = (ids, mid), mid + 1
        else:
            hi = mid - 1
    return None if best is None else (best[0], best[1], len(ends))


class _Encoder:
    """Record → fixed-shape arrays of one row, for each kind: `(row, note)` where `note` says how an
    over-long record was truncated (None if it was not); raises _Bad for an unusable record."""

    def __init__(self, processor, *, gen_image_size: int, gen_prompt_len: int, und_len: int, text_len: int):
        self.p = processor
        self.gen_image_size = gen_image_size
        self.gen_prompt_len = gen_prompt_len
        self.und_len = und_len
        self.text_len = text_len

    def gen(self, rec: dict) -> tuple[dict, str | None]:
        p = self.p
        if p is None:  # image-only (tokenizer training tasks: vae, vq): the caption is not read
            return {"image": resize_center_crop(_as_image(rec), self.gen_image_size)}, None
        caption = _as_text(rec, "caption")
        L = self.gen_prompt_len

        def build(c: str) -> list[int]:
            return p.encode(p.generation_prompt(c))

        ids, note = build(caption), None
        if len(ids) > L:
            fit = _fit_prefix(caption, p.tokenizer, build, L)
            if fit is None:
                raise _Bad(f"generation prompt of {len(ids)} tokens > gen_prompt_len {L} even with 1 caption token")
            ids, kept, total = fit
            note = f"caption cut from {total} to {kept} tokens (prompt of {len(ids)} tokens, gen_prompt_len {L})"
        if ids[-1] != p.image_start_id:
            raise _Bad("the generation prompt does not end with the image start tag")
        prompt = np.full((L,), p.pad_id, np.int32)
        mask = np.zeros((L,), np.int32)
        prompt[L - len(ids) :] = ids
        mask[L - len(ids) :] = 1
        row = {
            "prompt_ids": prompt,
            "prompt_mask": mask,
            "image": resize_center_crop(_as_image(rec), self.gen_image_size),
        }
        return row, note

    def und(self, rec: dict) -> tuple[dict, str | None]:
        p = self.p
        question, answer = _as_text(rec, "question"), _as_text(rec, "answer")
        # The official template writes "Assistant: answer<eos>"; the prompt ends at "Assistant:".
        ans = p.tokenizer.encode(" " + answer, add_special_tokens=False).ids
        if any(t in (p.image_id, p.image_start_id, p.image_end_id) for t in ans):
            raise _Bad("the answer holds an image tag")

        def prompt_of(q: str) -> list[int]:
            return p._expand(p.encode(processing.sft_prompt(p.understanding_conversation(q))))

        prompt = prompt_of(question)
        if prompt.count(p.image_start_id) != 1:
            raise _Bad("the question holds an image tag")
        L, tail = self.und_len, ans + [p.eos_id]
        note = None
        if len(prompt) + len(tail) > L:
            fit = _fit_prefix(question, p.tokenizer, lambda q: prompt_of(q) + tail, L)
            if fit is None:
                raise _Bad(
                    f"understanding sequence of {len(prompt) + len(tail)} tokens > und_len {L} even with 1 "
                    f"question token (image {p.num_image_tokens} + answer {len(tail)} tokens kept whole)"
                )
            seq, kept, total = fit
            prompt = seq[: len(seq) - len(tail)]
            note = f"question cut from {total} to {kept} tokens (sequence of {len(seq)} tokens, und_len {L})"
        seq = prompt + tail
        ids = np.full((L,), p.pad_id, np.int32)
        ids[: len(seq)] = seq
        mask = np.zeros((L,), np.int32)
        mask[: len(seq)] = 1
        loss = np.zeros((L,), np.float32)
        loss[len(prompt) : len(seq)] = 1.0
        seq_mask = np.zeros((L,), bool)
        start = prompt.index(p.image_start_id)
        seq_mask[start : start + 1 + p.num_image_tokens] = True
        pixels = p.preprocess_image(np.asarray(_as_image(rec), np.uint8)).astype(np.float32)
        row = {"ids": ids, "mask": mask, "loss_mask": loss, "pixel_values": pixels, "images_seq_mask": seq_mask}
        return row, note

    def text(self, rec: dict) -> tuple[dict, str | None]:
        p = self.p
        seq = p.encode(_as_text(rec, "text")) + [p.eos_id]
        L = self.text_len
        note = None
        if len(seq) > L:
            if L < 2:
                raise _Bad(f"text of {len(seq)} tokens > text_len {L} (no room for a text token)")
            note = f"text cut from {len(seq)} to {L} tokens (no EOS; text_len {L})"
            seq = seq[:L]  # BOS + the first L - 1 tokens: the document goes on, so no EOS
        ids = np.full((L,), p.pad_id, np.int32)
        ids[: len(seq)] = seq
        mask = np.zeros((L,), np.int32)
        mask[: len(seq)] = 1
        loss = mask.astype(np.float32)
        loss[0] = 0.0
        return {"ids": ids, "mask": mask, "loss_mask": loss}, note


def _kind_seed(seed: int, kind: str) -> int:
    """A 32-bit shuffle seed per (seed, kind); Grain then uses seed + epoch for epoch `epoch`."""
    return int(np.random.SeedSequence([int(seed) % 2**64, _KIND_CODE[kind]]).generate_state(1)[0])


def _record_id(rec, idx: int) -> str:
    try:
        v = rec.get("id")
        v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        return f"{v!s} (index {idx})" if v else f"index {idx}"
    except Exception:
        return f"index {idx}"


class TrainLoader:
    """Deterministic, sharded, checkpointable iterator of training batches (see the module docstring).

    Sources: random-access (`__len__`/`__getitem__` → feature dicts), e.g.
    `builders.build(...).as_data_source()["train"]`, or a plain list of dicts. Fields: gen
    {"image", "caption"}, und {"image", "question", "answer"}, text {"text"}; text may be bytes or
    str, an image encoded bytes, a uint8 HWC array or a PIL image.

    Counters (per kind, rows delivered by this process; kept in the checkpoint state): `skipped` (bad
    records replaced) and `truncated` (over-long records cut to their length budget).
    """

    def __init__(
        self,
        *,
        processor,
        gen_source=None,
        und_source=None,
        text_source=None,
        mix: MixSpec,
        gen_image_size: int,
        gen_prompt_len: int,
        und_len: int,
        text_len: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        num_threads: int = 2,
    ):
        if not isinstance(mix, MixSpec):
            raise DataError(f"mix must be a MixSpec, got {type(mix).__name__}")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} out of range for process_count {process_count}")
        for name, v in dict(
            gen_image_size=gen_image_size, gen_prompt_len=gen_prompt_len, und_len=und_len, text_len=text_len
        ).items():
            if int(v) < 1:
                raise DataError(f"{name} must be positive, got {v}")
        sources = {"gen": gen_source, "und": und_source, "text": text_source}
        self.kinds = tuple(k for k in KINDS if getattr(mix, k) > 0)
        if not self.kinds:
            raise DataError("MixSpec has no rows of any kind")
        if processor is None and set(self.kinds) - {"gen"}:
            raise DataError("understanding and text rows need a processor (the tokenizer); only images were asked for")
        self.mix = mix
        self.seed = int(seed)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self._global = {k: int(getattr(mix, k)) for k in self.kinds}
        self._local = {}
        self._sources = {}
        for k in self.kinds:
            if self._global[k] % self.process_count:
                raise DataError(f"mix.{k} = {self._global[k]} is not divisible by process_count {self.process_count}")
            self._local[k] = self._global[k] // self.process_count
            src = sources[k]
            if src is None:
                raise DataError(f"mix.{k} = {self._global[k]} but no {k}_source was given")
            if len(src) == 0:
                raise DataError(f"{k}_source is empty")
            self._sources[k] = src
        enc = _Encoder(
            processor, gen_image_size=int(gen_image_size), gen_prompt_len=int(gen_prompt_len),
            und_len=int(und_len), text_len=int(text_len),
        )  # fmt: skip
        self._encode = {k: getattr(enc, k) for k in self.kinds}
        # position in the stream → source index: epochs of Grain index-shuffles (seed + epoch per epoch)
        self._order = {
            k: grain.MapDataset.range(len(self._sources[k])).shuffle(seed=_kind_seed(self.seed, k)).repeat()
            for k in self.kinds
        }
        self._slots = [(k, o) for k in self.kinds for o in range(self._local[k])]
        self._threads = max(0, int(num_threads))
        self._known_bad = {k: {} for k in self.kinds}  # source index → reason (a cache; results don't depend on it)
        self._warned: set[str] = set()  # kinds already warned about: skips
        self._warned_cut: set[str] = set()  # … and truncations
        self.skipped: dict[str, int] = {k: 0 for k in KINDS}  # bad records replaced (per delivered row)
        self.truncated: dict[str, int] = {k: 0 for k in KINDS}  # rows of over-long records truncated
        self._position = {k: 0 for k in self.kinds}  # next GLOBAL stream element per kind
        self._steps = 0  # batches delivered since the start (informational)
        self._it = None

    # --- reading -----------------------------------------------------------------------------

    def _element(self, base: dict, e: int):
        """Element e of this process's slot stream (from `base`): (kind, row arrays, skips, first
        reason, truncation note or None)."""
        s, r = divmod(e, len(self._slots))
        k, o = self._slots[r]
        g = base[k] + s * self._global[k] + self.process_index * self._local[k] + o
        src, bad, n = self._sources[k], self._known_bad[k], len(self._sources[k])
        start = int(self._order[k][g])
        skips, first = 0, None
        for j in range(n):
            idx = (start + j) % n
            reason = bad.get(idx)
            if reason is None:
                rec = src[idx]
                try:
                    row, note = self._encode[k](rec)
                except _Bad as err:
                    reason = bad[idx] = f"{_record_id(rec, idx)}: {err}"
                else:
                    return k, row, skips, first, note and f"{_record_id(rec, idx)}: {note}"
            skips += 1
            first = first or reason
        raise DataError(f"no usable {k} record in the whole {k}_source ({n} records; e.g. {first})")

    def _collate(self, elems: Sequence[tuple]) -> tuple[dict, dict, dict, dict, dict]:
        batch, skips, first, cuts, first_cut = {}, {}, {}, {}, {}
        for k in self.kinds:
            rows = [el for el in elems if el[0] == k]  # slot order = row order
            batch[k] = {f: np.stack([r[1][f] for r in rows]) for f in rows[0][1]}
            skips[k] = sum(r[2] for r in rows)
            first[k] = next((r[3] for r in rows if r[3]), None)
            cuts[k] = sum(1 for r in rows if r[4])
            first_cut[k] = next((r[4] for r in rows if r[4]), None)
        return batch, skips, first, cuts, first_cut

    def _make_iter(self):
        n_slots = len(self._slots)
        base = dict(self._position)  # frozen for this iterator (a later set_state builds a new one)
        read = grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=2 * n_slots if self._threads else 0)
        ds = (
            grain.MapDataset.range(0, sys.maxsize)
            .map(functools.partial(self._element, base))
            .to_iter_dataset(read)
            .batch(n_slots, batch_fn=self._collate)
        )
        return iter(ds)

    def __iter__(self):
        return self

    @staticmethod
    def _count(counts: dict, warned: set, k: str, n: int, first, what: str, attr: str) -> None:
        """Add `n` to `counts[k]`; warn once per kind (naming the first such record)."""
        if not n:
            return
        counts[k] += n
        if k not in warned:
            warned.add(k)
            warnings.warn(f"TrainLoader: {what.format(k=k)}; first: {first}; counts in TrainLoader.{attr}",
                          DataWarning, stacklevel=3)  # fmt: skip

    def __next__(self) -> dict:
        if self._it is None:
            self._it = self._make_iter()
        batch, skips, first, cuts, first_cut = next(self._it)
        for k in self.kinds:
            self._position[k] += self._global[k]
            self._count(self.skipped, self._warned, k, skips[k], first[k],
                        "skipping bad {k} records (substituting the next good one)", "skipped")  # fmt: skip
            self._count(self.truncated, self._warned_cut, k, cuts[k], first_cut[k],
                        "truncating over-long {k} records to fit their length budget", "truncated")  # fmt: skip
        self._steps += 1
        return batch

    def close(self) -> None:
        """Stops the reader threads (the loader can still be used: iteration restarts them)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()

    # --- checkpointing -----------------------------------------------------------------------

    def get_state(self) -> dict:
        """JSON-serialisable: the next GLOBAL stream position per kind (the same on every process)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "step": self._steps,
            "position": dict(self._position),
            "skipped": dict(self.skipped),
            "truncated": dict(self.truncated),
        }

    def set_state(self, state: dict) -> None:
        """Resumes at `state`'s position (from any loader with the same seed and sources; the mix
        and process layout may differ — positions are global stream offsets per kind)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DataError(f"unsupported loader state {state!r:.200}")
        if int(state["seed"]) != self.seed:
            raise DataError(f"loader state has seed {state['seed']}, this loader {self.seed}")
        pos = state.get("position", {})
        self.close()
        self._position = {k: int(pos.get(k, 0)) for k in self.kinds}
        self._steps = int(state.get("step", 0))
        self.skipped = {k: int(state.get("skipped", {}).get(k, 0)) for k in KINDS}
        self.truncated = {k: int(state.get("truncated", {}).get(k, 0)) for k in KINDS}  # absent before truncation
