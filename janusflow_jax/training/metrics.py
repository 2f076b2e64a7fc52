"""Where a training run's numbers go: `metrics.jsonl`, TensorBoard event files, the loss-curve PNG and
the progress line. One `MetricsLogger` per run; only process 0 passes `enabled=True`.

Layout under `out_dir`:
  metrics.jsonl   one JSON object per logged step (`json.dumps` of the metrics dict, keys as given).
                  On a resume from step s the lines of steps > s are dropped first (those steps are redone).
  tensorboard/    event files (tensorboardX, no TensorFlow needed): every numeric metric as a scalar at
                  its step, tagged by group (`loss/<part>`, `optim/lr`, `optim/grad_norm`,
                  `perf/step_time`, `perf/tokens_per_s`, `perf/mfu`), and sample images. A resumed run
                  starts its file with a purge marker at step s + 1, so TensorBoard hides the points of
                  the redone steps that the killed run had already written.
  loss.png        matplotlib (Agg, no display): one panel per loss part, raw points faint plus an
                  exponential moving average, log y where all values are positive; written atomically.

The progress line (one per logged step, through `log`), e.g.
  step 60/120 [##########          ]  50% loss 0.4312 (rf 0.4011 repa 0.0301) | 0.52s/step 9431 tok/s
  MFU 31.2% | 00:31 elapsed, ETA 00:30
(one line). The bar, the time formats and the ETA come from tqdm (`tqdm.format_meter`); the rate
behind the ETA is the wall time per step since the first step this process ran (so the compile of
the first step and a resume do not skew it), checkpoints and samples included.

`matplotlib` and `tensorboardX` are imported when first used (they cost seconds at start-up).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOSS_CURVE_FILE = "loss.png"
# numeric metrics that are not loss parts → their TensorBoard group; every other numeric key is a loss part
NON_LOSS = {
    "step": None,
    "lr": "optim",
    "grad_norm": "optim",
    "step_time": "perf",
    "tokens_per_s": "perf",
    "mfu": "perf",
    "usage": "codebook",  # vq task: fraction of codebook rows used in the step's batch
    "perplexity": "codebook",
}
_clock = time.perf_counter  # the progress line's clock (tests substitute a fake one)
# tqdm bar_format of the progress line; `{desc}` (tqdm's prefix) carries the loss and speed figures
_LINE = "step {n_fmt}/{total_fmt} [{bar:20}] {percentage:3.0f}% {desc} | {elapsed} elapsed, ETA {remaining}"


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch when torch is not loaded yet: tensorboardX
    tries `import torch` at import time only to accept torch tensors (we pass NumPy arrays), and where
    torch is installed that import alone costs over a second of every run's start-up."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError (tensorboardX catches it)
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _print_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _json_scalar(v):
    if isinstance(v, np.generic):  # numpy scalars as the Python numbers they hold
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def loss_parts(metrics: Mapping) -> list[str]:
    """The loss parts of a metrics dict, in its order: numeric keys that are neither "loss" nor in NON_LOSS."""
    return [k for k, v in metrics.items() if _is_number(v) and k != "loss" and k not in NON_LOSS]


def tensorboard_tag(key: str) -> str:
    """`loss/<key>` for the total and each part, `optim/…` or `perf/…` for the others."""
    return f"{NON_LOSS.get(key) or 'loss'}/{key}"


def read_history(path: str, upto: int) -> list[dict]:
    """The metrics lines of steps ≤ `upto` (a resume from step `upto`); the file is rewritten with only
    those (atomically), dropping the lines of steps that will be redone and any line cut by a kill."""
    out = []
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                h = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(h, dict) and h.get("step", 0) <= upto:
                out.append(h)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(h) + "\n" for h in out)
    os.replace(tmp, path)
    return out


def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """Exponential moving average, debiased (TensorBoard's smoothing): s_i = Σ w^(i-j)(1-w) v_j / (1 - w^(i+1))."""
    out = np.empty(len(values), np.float64)
    acc = 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1.0 - weight) * float(v)
        out[i] = acc / (1.0 - weight ** (i + 1)) if weight > 0 else float(v)
    return out


def _smoothing_weight(n: int) -> float:
    """EMA weight for n points: a window of about n/20 points (none below 20 points, at most 50)."""
    return min(0.98, 1.0 - 1.0 / max(1.0, n / 20.0))


def loss_figure(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = ""):
    """A matplotlib Figure (Agg canvas): one panel per named (step, value) series with finite values,
    the raw points faint and their EMA solid, log y where all values are positive, x = step."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [k for k, s in series.items() if any(math.isfinite(y) for _, y in s)]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # rendered by Agg; no pyplot, no display, no global backend change
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (ax, name) in enumerate(zip(axes, names)):
        pts = sorted((float(x), float(y)) for x, y in series[name] if math.isfinite(y))
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        c = colours[i % len(colours)]
        ax.plot(xs, ys, color=c, alpha=0.3, linewidth=0.8, marker="." if len(xs) < 50 else None, label="raw")
        ax.plot(xs, ema(ys, _smoothing_weight(len(ys))), color=c, linewidth=1.8, label="EMA")
        if (ys > 0).all():
            ax.set_yscale("log")
        ax.set_title(f"{name} (last {ys[-1]:.4g})", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3, which="both")
        if i == 0:
            ax.legend(fontsize=8)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    if not names:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes)
    if title:
        fig.suptitle(title)
    return fig


def plot_loss_curves(path: str, series: Mapping[str, Sequence[tuple[float, float]]], *, title: str = "") -> str:
    """`loss_figure` as a PNG at `path`, written to a temp file and then `os.replace`d (never half a file)."""
    fig = loss_figure(series, title=title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


class MetricsLogger:
    """The metrics sinks of one training run (see the module docstring).

        logger = MetricsLogger(out_dir, total_steps=r.steps, start_step=step, enabled=jax.process_index() == 0,
                               log=print_fn, title="janusflow-train stage 2: loss parts")
        per step:         logger.log_step(metrics, write=is_logging_step)   # metrics["step"] = the step done
        sample grids:     logger.log_images("samples", step, grid_uint8_hwc)
        at the end:       logger.write_loss_curve(); logger.close()

    `log` receives the progress lines and "wrote <loss.png>" (default: print to standard error).
    `start_step` is the step the run starts (or resumes) from: the JSONL lines of later steps are dropped
    and `history` holds the earlier ones. With `enabled=False` nothing is written or printed (not even
    a directory), so every process can call it unconditionally.
    """

    def __init__(
        self,
        out_dir: str,
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        log: Callable[[str], None] | None = None,
        title: str = "",
    ):
        self.out_dir = os.path.abspath(out_dir)
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.enabled = bool(enabled)
        self.title = title
        self._log = log or _print_stderr
        self.metrics_path = os.path.join(self.out_dir, METRICS_FILE)
        self.tensorboard_dir = os.path.join(self.out_dir, TENSORBOARD_DIR)
        self.history: list[dict] = []
        self._writer = None
        self._t_start = _clock()
        self._first: tuple[int, float] | None = None  # (step, time) of the first log_step call
        if self.enabled:
            os.makedirs(self.out_dir, exist_ok=True)
            self.history = read_history(self.metrics_path, self.start_step)

    # --- per step ---------------------------------------------------------------------------------

    def log_step(self, metrics: Mapping, *, write: bool) -> str | None:
        """Call after every step (`metrics["step"]` = the step just done); `write=True` on logging steps
        appends the JSONL line and the TensorBoard scalars and prints the progress line (returned)."""
        step = int(metrics["step"])
        now = _clock()
        if self._first is None:
            self._first = (step, now)
        if not (write and self.enabled):
            return None
        m = dict(metrics)
        self.history.append(m)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(m, default=_json_scalar) + "\n")
        w = self._tb()
        for k, v in m.items():
            if k != "step" and _is_number(v):
                w.add_scalar(tensorboard_tag(k), float(v), global_step=step)
        w.flush()
        line = self.progress_line(m, now)
        self._log(line)
        return line

    def _rate(self, step: int, now: float, step_time: float | None) -> float | None:
        """Steps per second for the ETA: wall time since the first step this process ran; before a
        second step exists, the step's own time (which includes the compile)."""
        if self._first is not None and step > self._first[0] and now > self._first[1]:
            return (step - self._first[0]) / (now - self._first[1])
        return 1.0 / step_time if step_time and step_time > 0 else None

    def progress_line(self, m: Mapping, now: float | None = None) -> str:
        """`step N/M [bar] p% loss … (parts) | s/step tok/s MFU | elapsed, ETA` of a metrics dict."""
        now = _clock() if now is None else now
        step, total = int(m["step"]), max(self.total_steps, int(m["step"]))
        rate = self._rate(step, now, m.get("step_time"))
        out = []
        if "loss" in m:
            out.append(f"loss {float(m['loss']):.4f}")
        parts = " ".join(f"{k} {float(m[k]):.4f}" for k in loss_parts(m))
        if parts:
            out.append(f"({parts})")
        perf = []
        if _is_number(m.get("step_time")):
            perf.append(f"{float(m['step_time']):.2f}s/step")
        if _is_number(m.get("tokens_per_s")):
            perf.append(f"{float(m['tokens_per_s']):.0f} tok/s")
        if _is_number(m.get("mfu")):
            perf.append(f"MFU {float(m['mfu']):.1%}")
        desc = " ".join(out) + (" | " + " ".join(perf) if perf else "")
        return tqdm.format_meter(
            step, total, now - self._t_start, prefix=desc, ascii=True, unit="step", rate=rate, bar_format=_LINE
        )

    # --- images, curves, end ----------------------------------------------------------------------

    def log_images(self, tag: str, step: int, image: np.ndarray) -> None:
        """A uint8 `[H, W, C]` image (C = 1, 3 or 4; e.g. a sample grid) into TensorBoard at `step`."""
        if not self.enabled:
            return
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"log_images wants a uint8 [H, W, C] array, got {image.dtype} {image.shape}")
        self._tb().add_image(tag, image, global_step=int(step), dataformats="HWC")
        self._writer.flush()

    def write_loss_curve(self, keys: Iterable[str] | None = None, *, title: str | None = None) -> str | None:
        """`loss.png` from `history` (this run's and the resumed lines): one panel per key (default:
        "loss" and every loss part seen). Returns the path (None when disabled)."""
        if not self.enabled:
            return None
        if keys is None:
            keys = []
            for h in self.history:
                for k in (["loss"] if "loss" in h else []) + loss_parts(h):
                    if k not in keys:
                        keys.append(k)
        series = {k: [(h["step"], float(h[k])) for h in self.history if _is_number(h.get(k))] for k in keys}
        path = os.path.join(self.out_dir, LOSS_CURVE_FILE)
        plot_loss_curves(path, series, title=self.title if title is None else title)
        self._log(f"wrote {path}")
        return path

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer (the JSONL is written line by line)."""
        w, self._writer = self._writer, None
        if w is not None:
            w.flush()
            w.close()

    def _tb(self):
        if self._writer is None:
            SummaryWriter = _summary_writer_class()

            # on a resume, TensorBoard hides the points of steps > start_step that a killed run wrote
            purge = self.start_step + 1 if self.start_step > 0 else None
            # tensorboardX names the file by the second and host only: a restart within the same second
            # would overwrite the killed run's file without a suffix of its own
            suffix = f".from{self.start_step}.{os.getpid()}"
            self._writer = SummaryWriter(
                logdir=self.tensorboard_dir, purge_step=purge, flush_secs=30, filename_suffix=suffix
            )
        return self._writer

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
