"""Sampling jobs (`janusflow-sample batch`): a JSONL prompt file → GenEval-style folders, data-parallel
over every device of every `jax.distributed` process, deterministic, resumable.

Input: one JSON object per line, `{"prompt": "...", "seed": 7, "count": 4, ...any other metadata}`
(`seed`, `count` optional: the CLI's `--seed` / `--num-images`); blank lines are ignored. Output:

    DIR/job.json                     the settings that shape the images (a rerun must match them)
    DIR/<index:05d>/metadata.jsonl   the prompt's input line, verbatim (GenEval's layout)
    DIR/<index:05d>/samples/<k:04d>.png   image k of prompt `index` (0-based among non-blank lines)
    DIR/<index:05d>/raw/<k:04d>.npy       with save_raw: its final latents (JanusFlow) or codes (Janus)
    DIR/summary.json                 images, seconds, images/s, devices, processes (written at the end)

Bad prompt files are refused whole, before anything is generated or written: every problem is one
line `FILE:LINE: what` (invalid JSON, not an object, a missing / non-string / empty prompt, a seed or
count of the wrong type or range; then, once the tokenizer is loaded, a prompt too long for the
context). Skipping lines instead would leave gaps in the numbered folders that a GenEval-style
evaluation would silently score as a smaller benchmark.

Determinism: image k of a prompt with seed s draws from `fold_in(key(s), k)` — the same key as image k
of `janusflow-sample generate --seed s --num-images N` for that prompt alone — never from its slot
in a batch. Every batch has the same global size (`batch_per_device × devices`; the last is padded
with dummy rows whose results are dropped) and every prompt is left-padded to one length per job
(the file's longest prompt, rounded up to 32 tokens), so one program is compiled per job and a row's
inputs do not depend on the batch it lands in. JanusFlow latents then agree within float32 rounding
across device counts (XLA may order a reduction differently for another per-device batch), Janus
codes exactly; tests/test_batch_sampling.py counts the uint8 pixels that differ.

Multi-process: every process reads the prompt file (it must be readable on every host) and derives the
same work list. Process 0 alone reads and writes DIR: it checks job.json, writes the metadata files,
finds the finished images and broadcasts that list, so every process agrees on the remaining work
and on the batches. In each batch every process supplies only the rows its own devices hold (the
global batch is assembled with `jax.make_array_from_process_local_data`); the outputs are gathered to
process 0, which writes them. DIR therefore need not be on a shared filesystem.

Resume: an image is finished when its PNG exists; every file is written to a hidden temporary name
and renamed (the .npy before the PNG), so a killed run leaves no partial image and loses at most the batch in flight. A
rerun with the same settings skips the finished images; `DIR/job.json` refuses a rerun whose settings
(model, dtype, sampler options, prompt length, the resolved prompts, seeds and counts) differ.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from janusflow_jax.sharding import BATCH_AXES, make_mesh

__all__ = ["JobError", "Prompt", "PromptFileError", "image_key_data", "job_mesh", "read_prompts", "run_job"]

FAULT_ENV = "JANUSFLOW_SAMPLE_FAULT"  # "after_image:N": SIGKILL right after this run's N-th PNG (tests)
BUCKET = 32  # prompt lengths are padded up to a multiple of this (one compile per job)
SEED_LIMIT = 2**32  # jax.random.key takes seeds modulo 2^32


class PromptFileError(ValueError):
    """A prompt file with problems; `problems` holds one line per problem (`FILE:LINE: what`)."""

    def __init__(self, path: str, problems: list[str]):
        self.path, self.problems = path, list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in {path}; nothing was generated")


class JobError(ValueError):
    """The job cannot start or go on (an output folder of another job, ...)."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    index: int  # output folder number: 0-based among the file's non-blank lines
    line: int  # 1-based line number in the file (for messages)
    text: str  # the input line as given (written verbatim to metadata.jsonl)
    prompt: str
    seed: int
    count: int


def _type(v) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


def _int_problem(obj: dict, key: str, lo: int, hi: int | None, what: str) -> str | None:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        return f'"{key}" must be {what}, got {json.dumps(v)} ({_type(v)})'
    if v < lo or (hi is not None and v >= hi):
        return f'"{key}" must be {what}, got {v}'
    return None


SEED_RULE = "an integer in [0, 2^32)"
COUNT_RULE = "a positive integer"


def read_prompts(path: str, *, seed: int, count: int) -> list[Prompt]:
    """Parse and check a JSONL prompt file; PromptFileError lists every problem found (one per line)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise JobError(f"cannot read prompt file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise JobError(f"prompt file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    out, problems = [], []
    for n, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text:
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f'{where}: expected a JSON object like {{"prompt": "..."}}, got {_type(obj)}')
            continue
        bad = []
        p = obj.get("prompt")
        if "prompt" not in obj:
            bad.append('no "prompt"')
        elif not isinstance(p, str):
            bad.append(f'"prompt" must be a string, got {json.dumps(p)} ({_type(p)})')
        elif not p.strip():
            bad.append('empty "prompt"')
        for key, lo, hi, rule in (("seed", 0, SEED_LIMIT, SEED_RULE), ("count", 1, None, COUNT_RULE)):
            if key in obj:
                msg = _int_problem(obj, key, lo, hi, rule)
                if msg:
                    bad.append(msg)
        if bad:
            problems += [f"{where}: {b}" for b in bad]
            continue
        out.append(Prompt(len(out), n, text, p, obj.get("seed", seed), obj.get("count", count)))
    if problems:
        raise PromptFileError(path, problems)
    if not out:
        raise JobError(f'{path}: no prompts (one JSON object per line, e.g. {{"prompt": "a red cube"}})')
    return out


def job_mesh(devices_per_process: int | None = None) -> jax.sharding.Mesh:
    """A data-parallel mesh over the first `devices_per_process` devices of every process (default: all)."""
    devs = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if devices_per_process is not None:
        n = int(devices_per_process)
        if n < 1 or n > jax.local_device_count():
            raise JobError(f"--devices {n}: this process has {jax.local_device_count()} device(s)")
        devs = [d for p in range(jax.process_count()) for d in [x for x in devs if x.process_index == p][:n]]
    return make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices=devs)


def image_key_data(seed: int, k: int) -> np.ndarray:
    """Raw uint32 key `[2]` of image k of a prompt with `seed`: `fold_in(key(seed), k)`, as `generate`."""
    return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(int(seed)), int(k))), np.uint32)


def process_rows(sharding: NamedSharding, batch: int) -> np.ndarray:
    """Global row numbers this process supplies (and its devices hold), in the order
    `jax.make_array_from_process_local_data` maps its local rows onto them: sorted, each once."""
    rows = set()
    for idx in sharding.addressable_devices_indices_map((batch,)).values():
        rows.update(range(*idx[0].indices(batch)))
    return np.asarray(sorted(rows), np.int64)


def _to_host(x: jax.Array) -> np.ndarray:
    """A global batch-sharded array → numpy on every process (all rows)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _from_process_zero(status: int, done: np.ndarray) -> tuple[int, np.ndarray]:
    """Process 0's (status, done mask) on every process."""
    if jax.process_count() == 1:
        return status, done
    from jax.experimental import multihost_utils

    x = np.concatenate([np.asarray([status], np.int32), done.astype(np.int32)])
    y = np.asarray(multihost_utils.broadcast_one_to_all(x))
    return int(y[0]), y[1:].astype(bool)


def _fault(written: int) -> None:
    if os.environ.get(FAULT_ENV) == f"after_image:{written}":
        os.kill(os.getpid(), signal.SIGKILL)


def _atomic_write(path: str, write: Callable) -> None:
    """`write(file)` into a hidden temp file beside `path`, then rename: `path` is whole or absent.
    (Hidden, so that tools globbing `\\d+\\.png` — GenEval's evaluator — never pick up a partial file.)"""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path: str, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    _atomic_write(path, lambda f: Image.fromarray(np.asarray(image, np.uint8)).save(f, format="PNG"))


def _save_npy(path: str, x: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, x))


def png_path(out_dir: str, index: int, k: int) -> str:
    return os.path.join(out_dir, f"{index:05d}", "samples", f"{k:04d}.png")


def raw_path(out_dir: str, index: int, k: int) -> str:
    return os.path.join(out_dir, f"{index:05d}", "raw", f"{k:04d}.npy")


def _settings_diff(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _prepare_dir(out_dir: str, prompts: list[Prompt], settings: dict, items: list[tuple[int, int]]) -> np.ndarray:
    """Process 0: check / write job.json and the metadata files, drop stale temp files; the done mask."""
    os.makedirs(out_dir, exist_ok=True)
    job = os.path.join(out_dir, "job.json")
    if os.path.exists(job):
        try:
            with open(job, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise JobError(f"{job}: unreadable ({e}); remove it or use a new --out") from None
        diff = _settings_diff(old, settings)
        if diff:
            raise JobError(f"{out_dir} holds a job with other settings ({', '.join(diff)}); use a new --out")
    else:
        _write_text(job, json.dumps(settings, indent=1) + "\n")
    for q in prompts:
        folder = os.path.join(out_dir, f"{q.index:05d}")
        os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
        meta = os.path.join(folder, "metadata.jsonl")
        if not os.path.exists(meta):
            _write_text(meta, q.text + "\n")
        for tmp in glob.glob(os.path.join(glob.escape(folder), "*", ".*.tmp")):
            os.remove(tmp)  # a run killed while writing; the image itself was not finished
    return np.asarray([os.path.exists(png_path(out_dir, prompts[p].index, k)) for p, k in items], bool)


def run_job(
    model,
    prompts: list[Prompt],
    out_dir: str,
    *,
    sample_kwargs: dict,
    settings: dict,
    negative_prompt: str | None = None,
    batch_per_device: int = 1,
    save_raw: bool = False,
    path: str = "prompts",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Generate every unfinished image of `prompts` into `out_dir` with `model.generate_batch(ids, mask,
    key_data, **sample_kwargs)` on `model.mesh` (data parallel); returns the summary (process 0 also
    writes it to `out_dir/summary.json`). `settings` (model, dtype, options) go to job.json."""
    from janusflow_jax import progress

    lead = jax.process_index() == 0
    say = (log or (lambda m: print(m, file=sys.stderr, flush=True))) if lead else (lambda m: None)
    if batch_per_device < 1:
        raise JobError(f"--batch-per-device must be positive, got {batch_per_device}")
    mesh = model.mesh
    proc = model.processor

    # one prompt length for the whole job: the longest prompt (refused whole if any is too long)
    tokens = [proc.encode(proc.generation_prompt(q.prompt)) for q in prompts]
    problems = []
    for q, t in zip(prompts, tokens):
        try:
            model.check_generation_length(len(t))
        except ValueError as e:
            problems.append(f"{path}:{q.line}: {e}")
    if problems:
        raise PromptFileError(path, problems)
    neg = proc.encode(proc.generation_prompt(negative_prompt)) if negative_prompt is not None else None
    if neg is not None:
        try:
            model.check_generation_length(len(neg))
        except ValueError as e:
            raise JobError(f"--negative-prompt: {e}") from None
    longest = max(len(t) for t in tokens + ([neg] if neg else []))
    length = -(-longest // BUCKET) * BUCKET
    try:
        model.check_generation_length(length)
    except ValueError:
        length = longest
    ids_all, mask_all = proc.left_pad(tokens, length)

    items = [(p, k) for p, q in enumerate(prompts) for k in range(q.count)]
    digest = hashlib.sha256(json.dumps([[q.prompt, q.seed, q.count] for q in prompts]).encode()).hexdigest()
    settings = {**settings, "negative_prompt": negative_prompt, "prompt_len": int(length),
                "prompts": len(prompts), "images": len(items), "prompts_sha256": digest}  # fmt: skip
    status, done, err = 0, np.zeros(len(items), bool), None
    if lead:
        try:
            done = _prepare_dir(out_dir, prompts, settings, items)
        except (JobError, OSError) as e:
            status, err = 1, e
    status, done = _from_process_zero(status, done)
    if status:
        raise err if err is not None else JobError("process 0 refused the job (see its error)")

    todo = [it for it, d in zip(items, done) if not d]
    devices, processes = mesh.size, jax.process_count()
    bsz = batch_per_device * devices
    sharding = NamedSharding(mesh, P(BATCH_AXES))
    mine = process_rows(sharding, bsz)
    neg_rows = None
    if neg is not None:
        nid, nmask = proc.left_pad([neg], length)
        neg_rows = (np.repeat(nid, len(mine), 0), np.repeat(nmask, len(mine), 0))

    def global_(local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(sharding, local, (bsz,) + local.shape[1:])

    say(
        f"batch job: {len(items)} image(s) of {len(prompts)} prompt(s), {len(items) - len(todo)} already finished; "
        f"{len(todo)} to draw in batches of {bsz} ({batch_per_device} per device × {devices} device(s), "
        f"{processes} process(es)); prompts padded to {length} tokens (first batch compiles)"
    )
    bar = progress.bar(len(todo), "sampling", "images") if lead else None
    written, t0 = 0, time.perf_counter()
    model.timings = {"compile_s": 0.0, "run_s": 0.0}
    try:
        for a in range(0, len(todo), bsz):
            chunk = todo[a : a + bsz]
            rows = chunk + [chunk[0]] * (bsz - len(chunk))  # dummy rows: results dropped
            local = [rows[r] for r in mine]
            p_idx = np.asarray([p for p, _ in local])
            keys = np.stack([image_key_data(prompts[p].seed, k) for p, k in local])
            extra = {}
            if neg_rows is not None:
                extra = {"neg_ids": global_(neg_rows[0]), "neg_mask": global_(neg_rows[1])}
            images, raw = model.generate_batch(
                global_(ids_all[p_idx]), global_(mask_all[p_idx]), global_(keys), **sample_kwargs, **extra
            )
            images, raw = _to_host(images), _to_host(raw)
            if not lead:
                continue
            for r, (p, k) in enumerate(chunk):
                q = prompts[p]
                if save_raw:
                    os.makedirs(os.path.dirname(raw_path(out_dir, q.index, k)), exist_ok=True)
                    _save_npy(raw_path(out_dir, q.index, k), raw[r])
                _save_png(png_path(out_dir, q.index, k), images[r])  # the PNG marks the image finished
                written += 1
                _fault(written)
            bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    timings = getattr(model, "timings", {}) or {}
    summary = {
        "images": len(items),
        "generated": len(todo),
        "skipped": len(items) - len(todo),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else 0.0,
        "compile_s": round(float(timings.get("compile_s", 0.0)), 3),
        "devices": devices,
        "processes": processes,
        "batch_size": bsz,
        "batches": -(-len(todo) // bsz),
        "family": model.family,
        "out": os.path.abspath(out_dir),
    }
    if lead:
        _write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
    return summary


def summary_line(s: dict) -> str:
    return (
        f"wrote {s['generated']} image(s) ({s['skipped']} already finished) to {s['out']} in {s['seconds']:.1f}s: "
        f"{s['images_per_s']:.2f} images/s (compile {s['compile_s']:.1f}s) on {s['devices']} device(s), "
        f"{s['processes']} process(es)"
    )
