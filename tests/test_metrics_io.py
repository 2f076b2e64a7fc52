"""The training run's metrics sinks (`janusflow_jax.training.metrics.MetricsLogger`): metrics.jsonl and its
resume truncation, TensorBoard event files (read back without TensorFlow), the matplotlib loss curve,
the progress line, and a disabled logger (processes other than 0)."""

import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from janusflow_jax.training import metrics as metrics_lib
from janusflow_jax.training.metrics import MetricsLogger


def _m(step, **kw):
    loss = 2.0 / step
    return dict(
        dict(loss=loss, rf=0.75 * loss, repa=0.25 * loss, grad_norm=1.5 + step / 100, step=step, step_time=0.25,
             tokens_per_s=4096.0, mfu=0.1234, lr=1e-4 * step),
        **kw,
    )  # fmt: skip


def _events(logdir):
    """Every Event of the TFRecord event files in `logdir`, CRCs checked (tensorboardX's own protos)."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    out = []
    for name in sorted(os.listdir(logdir)):
        assert name.startswith("events.out.tfevents."), name
        data = open(os.path.join(logdir, name), "rb").read()
        pos, file_events = 0, []
        while pos < len(data):
            header = data[pos : pos + 8]
            (n,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc32c(header)
            body = data[pos + 12 : pos + 12 + n]
            assert struct.unpack("<I", data[pos + 12 + n : pos + 16 + n])[0] == masked_crc32c(body)
            file_events.append(event_pb2.Event.FromString(body))
            pos += 16 + n
        out.append(file_events)
    return out


def _scalars(events):
    got = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                got.setdefault(v.tag, []).append((e.step, v.simple_value))
    return got


def test_jsonl_lines_round_trip(tmp_path):
    logged = []
    lg = MetricsLogger(str(tmp_path / "run"), total_steps=30, start_step=0, log=logged.append)
    written = []
    for step in range(1, 31):
        m = _m(step, loss=np.float32(2.0 / step)) if step == 30 else _m(step)  # numpy scalars are numbers too
        line = lg.log_step(m, write=step % 10 == 0 or step == 1)
        assert (line is not None) == (step % 10 == 0 or step == 1)
        if line:
            written.append(m)
    lg.close()
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    lines = text.splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 10, 20, 30]
    for raw, m in zip(lines[:3], written[:3]):
        assert raw == json.dumps(m) and json.loads(raw) == m  # the same line the trainer wrote before
    assert json.loads(lines[3])["loss"] == pytest.approx(2.0 / 30, rel=1e-6)
    assert text.endswith("\n") and len(logged) == 4 and [h["step"] for h in lg.history] == [1, 10, 20, 30]


def test_resume_drops_the_lines_of_redone_steps(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    path = out / "metrics.jsonl"
    path.write_text("".join(json.dumps(_m(s)) + "\n" for s in (1, 10, 20, 30, 40)) + '{"step": 50, "lo')  # cut
    lg = MetricsLogger(str(out), total_steps=60, start_step=20, log=lambda s: None)
    assert [h["step"] for h in lg.history] == [1, 10, 20]
    assert path.read_text() == "".join(json.dumps(_m(s)) + "\n" for s in (1, 10, 20))
    lg.log_step(_m(25), write=True)
    lg.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 10, 20, 25]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    # a fresh start over an old run's file keeps nothing
    MetricsLogger(str(out), total_steps=60, start_step=0, log=lambda s: None).close()
    assert path.read_text() == ""


def test_tensorboard_scalars_and_images_read_back(tmp_path):
    out = tmp_path / "run"
    lg = MetricsLogger(str(out), total_steps=20, start_step=0, log=lambda s: None)
    for step in range(1, 21):
        lg.log_step(_m(step), write=step % 5 == 0)
    grid = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    lg.log_images("samples", 20, grid)
    with pytest.raises(ValueError, match="uint8"):
        lg.log_images("samples", 20, grid.astype(np.float32))
    lg.close()
    (events,) = _events(out / "tensorboard")
    got = _scalars(events)
    want_tags = {"loss/loss", "loss/rf", "loss/repa", "optim/grad_norm", "optim/lr", "perf/step_time",
                 "perf/tokens_per_s", "perf/mfu"}  # fmt: skip
    assert set(got) == want_tags
    for tag in want_tags:
        key = tag.split("/")[1]
        assert [s for s, _ in got[tag]] == [5, 10, 15, 20]
        np.testing.assert_allclose([v for _, v in got[tag]], [_m(s)[key] for s in (5, 10, 15, 20)], rtol=1e-6)
    images = [(e.step, v) for e in events for v in e.summary.value if v.HasField("image")]
    assert len(images) == 1 and images[0][0] == 20 and images[0][1].tag == "samples"
    img = images[0][1].image
    assert (img.height, img.width, img.colorspace) == (24, 40, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.encoded_image_string))), grid)

    # a resume from step 10 writes a second file that starts with TensorBoard's purge marker at step 11
    lg = MetricsLogger(str(out), total_steps=20, start_step=10, log=lambda s: None)
    lg.log_step(_m(11), write=True)
    lg.close()
    first, second = sorted(_events(out / "tensorboard"), key=len, reverse=True)
    starts = [e.step for e in second if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [11] and _scalars(second)["loss/rf"] == [(11, pytest.approx(_m(11)["rf"]))]


def test_loss_curve_png(tmp_path):
    out = tmp_path / "run"
    logged = []
    lg = MetricsLogger(str(out), total_steps=300, start_step=0, log=logged.append, title="stage 2: loss parts")
    rng = np.random.default_rng(1)
    for step in range(1, 301):
        m = _m(step, rf=float(1.0 / step + 0.05 * rng.random()), repa=float(rng.normal()))
        lg.log_step(m, write=True)
    path = lg.write_loss_curve()
    lg.close()
    assert path == str(out / "loss.png") and logged[-1] == f"wrote {path}"
    raw = open(path, "rb").read()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        px = np.asarray(im.convert("RGB"))
    assert 600 <= w <= 3000 and 200 <= h <= 2000 and len(np.unique(px.reshape(-1, 3), axis=0)) > 20
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]

    series = {k: [(h["step"], h[k]) for h in lg.history] for k in ("loss", "rf", "repa")}
    fig = metrics_lib.loss_figure(series, title="t")
    axes = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().split()[0] for ax in axes] == ["loss", "rf", "repa"]
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "linear"]  # repa has negative values
    for ax, k in zip(axes, series):
        raw_line, smooth = ax.get_lines()
        assert raw_line.get_alpha() < 1 and smooth.get_alpha() in (None, 1)
        ys, sm = raw_line.get_ydata(), smooth.get_ydata()
        np.testing.assert_allclose(ys, [v for _, v in series[k]])
        if k != "loss":  # the noisy parts (second half: past rf's steep start): the EMA is much smoother
            assert np.std(np.diff(sm[150:])) < 0.5 * np.std(np.diff(ys[150:]))
    assert fig.get_suptitle() == "t" and fig.canvas.__class__.__name__ == "FigureCanvasAgg"


def test_ema_is_debiased():
    np.testing.assert_allclose(metrics_lib.ema([3.0] * 5, 0.9), [3.0] * 5)
    np.testing.assert_allclose(metrics_lib.ema([1.0, 3.0], 0.5), [1.0, (0.5 * 0.5 + 0.5 * 3.0) / (1 - 0.25)])
    np.testing.assert_allclose(metrics_lib.ema([1.0, 2.0], 0.0), [1.0, 2.0])


def test_progress_line(tmp_path, monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(metrics_lib, "_clock", lambda: now[0])
    logged = []
    lg = MetricsLogger(str(tmp_path), total_steps=120, start_step=0, log=logged.append)
    now[0] = 104.0  # the first step: 4 s (compile included)
    first = lg.log_step(_m(1, step_time=4.0), write=True)
    assert "step 1/120" in first and "ETA 07:56" in first  # 119 steps at the first step's 4 s
    for step in range(2, 13):
        now[0] += 1.0
        line = lg.log_step(_m(step), write=step == 12)  # at 12: 11 steps in 11 s since the first → 1 step/s
    assert logged == [first, line]
    for want in ("step 12/120", "loss 0.1667", "(rf 0.1250 repa 0.0417)", "0.25s/step", "4096 tok/s",
                 "MFU 12.3%", "ETA 01:48", "00:15 elapsed"):  # fmt: skip
        assert want in line, (want, line)
    assert "\n" not in line and "grad_norm" not in line
    now[0] += 108.0
    last = lg.log_step(_m(120), write=True)
    assert "step 120/120" in last and "100%" in last and "ETA 00:00" in last

    # a resumed run counts from its start step
    lg = MetricsLogger(str(tmp_path / "b"), total_steps=120, start_step=100, log=lambda s: None)
    lg.log_step(_m(101), write=True)
    now[0] += 2.0
    assert "step 111/120" in lg.log_step(_m(111), write=True) and "ETA 00:01" in lg.progress_line(_m(111))

    # without a `log`, the lines go to standard error (where the training CLI's tests look for them)
    lg = MetricsLogger(str(tmp_path / "c"), total_steps=5, start_step=0)
    lg.log_step(_m(5), write=True)
    captured = capsys.readouterr()
    assert "step 5/5" in captured.err and "MFU" in captured.err and "ETA" in captured.err and not captured.out


def test_disabled_logger_writes_nothing(tmp_path):
    out = tmp_path / "run"
    (tmp_path / "keep").mkdir()
    logged = []
    lg = MetricsLogger(str(out), total_steps=10, start_step=0, enabled=False, log=logged.append)
    for step in range(1, 11):
        assert lg.log_step(_m(step), write=True) is None
    lg.log_images("samples", 10, np.zeros((8, 8, 3), np.uint8))
    assert lg.write_loss_curve() is None
    lg.close()
    assert not out.exists() and logged == [] and os.listdir(tmp_path) == ["keep"]
    # nor does it touch an existing run's file (another process's view of the same folder)
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps(_m(5)) + "\n")
    MetricsLogger(str(out), total_steps=10, start_step=2, enabled=False).close()
    assert (out / "metrics.jsonl").read_text() == json.dumps(_m(5)) + "\n" and os.listdir(out) == ["metrics.jsonl"]
