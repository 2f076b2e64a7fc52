"""TFDS builders (ArrayRecord, no TensorFlow) for the three local training-data kinds.

Every builder reads a LOCAL source named by its `SourceConfig` (a `tfds.core.BuilderConfig` carrying
the source path); the config name becomes the dataset's sub-folder, so one builder class serves any
number of sources. The simplest entry point is `build`:

    from janusflow_jax.data import build
    b = build("image_caption", "shapes/train_images", "datasets/")   # folder + captions.jsonl|tsv
    b = build("image_qa", "shapes/qa.jsonl", "datasets/")            # {"image", "question", "answer"}
    b = build("text", "corpus.txt", "datasets/")                     # one document per line (or .jsonl {"text"})
    src = b.as_data_source()["train"]                                 # random access, for TrainLoader

Source formats (one record per line; an optional `"split"` field routes a JSONL record to that split,
default `train`):

* `image_caption` — a folder holding the images and `captions.jsonl` (`{"file": "a.png", "caption": …}`)
  or `captions.tsv` (`file<TAB>caption`, an optional `file<TAB>caption` header). Features: `image` (the
  file's encoded bytes, never re-encoded), `caption`, `id` (the file name as written in the captions file).
  The source may also be the captions file itself; image paths are relative to its folder.
* `image_qa` — a JSONL file of `{"image": path, "question": …, "answer": …}` (paths relative to the
  file's folder, or absolute; optional `"id"`). Features: `image`, `question`, `answer`, `id`.
* `text` — a `.txt` file (one document per line) or a `.jsonl` file of `{"text": …}`. Feature: `text`.

Text fields are stored stripped. Bad records (missing or undecodable image, empty text after strip,
malformed line) are skipped, counted, and reported with ONE `DataWarning` per build; if every record
is bad, or the source does not exist, `DataError` is raised naming the path. The counts are kept in
the dataset's `metadata.json` (see `build_report`). Building is idempotent: an already-built dataset
is reused (its recorded source must be the same path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from janusflow_jax.data.pipeline import DataError, DataWarning

MAX_REPORTED = 5  # offending ids named in the warning / kept in the metadata
_SPLIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclasses.dataclass(eq=False)
class SourceConfig(tfds.core.BuilderConfig):
    """A builder config whose `source` is the local input path (folder or file)."""

    source: str = ""


class _Bad(Exception):
    """A record that is skipped at build time (message = reason)."""


def _check_image(path: str) -> None:
    if not os.path.isfile(path):
        raise _Bad("missing image file")
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the file unusable; decode fully on a fresh handle
            im.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb…)
        raise _Bad(f"undecodable image ({type(e).__name__}: {e})") from None


def _nonempty(row: dict, key: str) -> str:
    v = row.get(key)
    if not isinstance(v, str):
        raise _Bad(f"missing {key!r}")
    v = v.strip()
    if not v:
        raise _Bad(f"empty {key!r}")
    return v


def _split_of(row: dict) -> str:
    split = row.get("split", "train")
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise _Bad(f"invalid split {split!r}")
    return split


def _json_lines(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or _Bad) for each non-blank line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, _Bad(f"invalid JSON ({e.msg})")
                continue
            yield n, row if isinstance(row, dict) else _Bad("line is not a JSON object")


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: scan the source once (validating and splitting), then write the kept records."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIG_CLASS = SourceConfig
    KIND = ""
    # Nothing is downloaded, so there are no URL checksums to look up. (TFDS's lookup goes through
    # `code_path`, which imports the optional `importlib_resources` package for modules in packages.)
    url_infos = None

    def _features(self) -> dict:
        raise NotImplementedError

    def _scan(self, source: str) -> Iterator[tuple[str, Any, Any]]:
        """Yields (record id, split, payload) or (record id, None, _Bad) for each input record."""
        raise NotImplementedError

    def _example(self, payload) -> dict:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Local {self.KIND} data ({type(self).__name__}, janusflow_jax.data.builders).",
            features=tfds.features.FeaturesDict(self._features()),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        source = os.path.abspath(self.builder_config.source or "")
        if not self.builder_config.source or not os.path.exists(source):
            raise DataError(f"{type(self).__name__}: source {source!r} does not exist")
        kept: dict[str, list] = {}
        bad: list[tuple[str, str]] = []
        total = 0
        for rid, split, payload in self._scan(source):
            if isinstance(payload, _Bad):
                bad.append((rid, str(payload)))
            else:
                kept.setdefault(split, []).append((total, payload))  # key: the record's ordinal
            total += 1
        if not kept:
            first = "; ".join(f"{i}: {r}" for i, r in bad[:MAX_REPORTED])
            raise DataError(f"{type(self).__name__}: no usable record in {source!r} ({total} bad; {first})")
        if bad:
            first = ", ".join(f"{i} ({r})" for i, r in bad[:MAX_REPORTED])
            warnings.warn(
                f"{type(self).__name__}: skipped {len(bad)} of {total} records of {source!r}; first: {first}",
                DataWarning,
                stacklevel=2,
            )
        self.info.metadata.update(
            kind=self.KIND,
            source=source,
            kept={s: len(v) for s, v in sorted(kept.items())},
            skipped=len(bad),
            skipped_examples=[list(x) for x in bad[:MAX_REPORTED]],
        )
        return {split: self._generate_examples(rows) for split, rows in sorted(kept.items())}

    def _generate_examples(self, rows):
        for key, payload in rows:
            yield key, self._example(payload)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class ImageCaptionFolder(_LocalBuilder):
    """A folder of images + `captions.jsonl` / `captions.tsv` → image bytes, caption, id."""

    KIND = "image_caption"

    def _features(self):
        return {
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "caption": tfds.features.Text(),
            "id": tfds.features.Text(),
        }

    def _scan(self, source):
        if os.path.isdir(source):
            cands = [os.path.join(source, n) for n in ("captions.jsonl", "captions.tsv")]
            found = [p for p in cands if os.path.isfile(p)]
            if not found:
                raise DataError(f"ImageCaptionFolder: {source!r} has no captions.jsonl or captions.tsv")
            if len(found) > 1:
                raise DataError(f"ImageCaptionFolder: {source!r} has both captions.jsonl and captions.tsv")
            cap_file = found[0]
        else:
            cap_file = source
        folder = os.path.dirname(cap_file)
        if cap_file.endswith(".jsonl"):
            rows = _json_lines(cap_file)
        elif cap_file.endswith(".tsv"):
            rows = self._tsv_rows(cap_file)
        else:
            raise DataError(f"ImageCaptionFolder: {cap_file!r} is neither a folder, a .jsonl nor a .tsv file")
        for n, row in rows:
            rid = row.get("file") if isinstance(row, dict) and isinstance(row.get("file"), str) else f"line {n}"
            try:
                if isinstance(row, _Bad):
                    raise row
                name = _nonempty(row, "file")
                caption = _nonempty(row, "caption")
                split = _split_of(row)
                path = os.path.join(folder, name)
                _check_image(path)
            except _Bad as e:
                yield rid, None, e
                continue
            yield rid, split, (path, caption, name)

    @staticmethod
    def _tsv_rows(path):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                if "\t" not in line:
                    yield n, _Bad("no TAB separator")
                    continue
                file, caption = line.split("\t", 1)
                if n == 1 and (file.strip(), caption.strip()) == ("file", "caption"):
                    continue  # header
                yield n, {"file": file.strip(), "caption": caption}

    def _example(self, payload):
        path, caption, name = payload
        return {"image": _read_bytes(path), "caption": caption, "id": name}


class ImageQuestionAnswer(_LocalBuilder):
    """A JSONL file of {"image", "question", "answer"} → image bytes, question, answer, id."""

    KIND = "image_qa"

    def _features(self):
        return {
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "question": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "id": tfds.features.Text(),
        }

    def _scan(self, source):
        if not os.path.isfile(source):
            raise DataError(f"ImageQuestionAnswer: {source!r} is not a JSONL file")
        folder = os.path.dirname(source)
        for n, row in _json_lines(source):
            rid = f"line {n}"
            try:
                if isinstance(row, _Bad):
                    raise row
                rid = str(row["id"]) if "id" in row else f"{row.get('image')}#L{n}"
                image = _nonempty(row, "image")
                question = _nonempty(row, "question")
                answer = _nonempty(row, "answer")
                split = _split_of(row)
                path = os.path.join(folder, image)  # an absolute `image` path stays absolute
                _check_image(path)
            except _Bad as e:
                yield rid, None, e
                continue
            yield rid, split, (path, question, answer, rid)

    def _example(self, payload):
        path, question, answer, rid = payload
        return {"image": _read_bytes(path), "question": question, "answer": answer, "id": rid}


class TextOnly(_LocalBuilder):
    """A `.txt` (one document per line) or `.jsonl` ({"text"}) file → text."""

    KIND = "text"

    def _features(self):
        return {"text": tfds.features.Text()}

    def _scan(self, source):
        if not os.path.isfile(source):
            raise DataError(f"TextOnly: {source!r} is not a .txt or .jsonl file")
        if source.endswith(".jsonl"):
            for n, row in _json_lines(source):
                try:
                    if isinstance(row, _Bad):
                        raise row
                    text = _nonempty(row, "text")
                    split = _split_of(row)
                except _Bad as e:
                    yield f"line {n}", None, e
                    continue
                yield f"line {n}", split, text
        else:
            with open(source, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    text = line.strip()
                    if text:
                        yield f"line {n}", "train", text
                    else:
                        yield f"line {n}", None, _Bad("empty line")

    def _example(self, payload):
        return {"text": payload}


BUILDERS: dict[str, type[_LocalBuilder]] = {
    "image_caption": ImageCaptionFolder,
    "image_qa": ImageQuestionAnswer,
    "text": TextOnly,
}


def _config_name(source: str) -> str:
    base = os.path.basename(os.path.normpath(source))
    if os.path.isfile(source):
        base = os.path.splitext(base)[0]
    name = re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_")
    return name if name and name[0].isalpha() else f"src_{name}"


def prepare_offline(b, *, overwrite: bool = False) -> None:
    """`download_and_prepare` a builder that generates its data locally (nothing is downloaded),
    quietly; an already prepared dataset is reused unless `overwrite`."""
    mode = (
        tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    with quiet_tfds(), tempfile.TemporaryDirectory(prefix="tfds_downloads_") as nothing_to_download:
        b.download_and_prepare(
            download_dir=nothing_to_download,
            download_config=tfds.download.DownloadConfig(try_download_gcs=False, download_mode=mode),
        )


@contextlib.contextmanager
def quiet_tfds():
    """No progress bars and no 'Using custom data configuration' chatter while building."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    tfds.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tfds.display_progress_bar(was)
        absl_logger.setLevel(level)


def builder(kind, source: str, data_dir: str, *, name: str | None = None) -> _LocalBuilder:
    """The (not necessarily built) builder of `source` under `data_dir` (kind: a `BUILDERS` key or class)."""
    cls = BUILDERS.get(kind) if isinstance(kind, str) else kind
    if cls is None or not (isinstance(cls, type) and issubclass(cls, _LocalBuilder)):
        raise DataError(f"unknown dataset kind {kind!r} (one of {sorted(BUILDERS)})")
    source = os.path.abspath(os.fspath(source))
    name = _config_name(source) if name is None else name
    if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", name):
        raise DataError(f"invalid dataset name {name!r} (letters, digits and _, starting with a letter)")
    with quiet_tfds():
        return cls(
            data_dir=os.fspath(data_dir),
            config=SourceConfig(name=name, source=source),
            file_format="array_record",
        )


def build(kind, source: str, data_dir: str, *, name: str | None = None, overwrite: bool = False) -> _LocalBuilder:
    """Builds (once) and returns the ArrayRecord dataset of a local source.

    kind: "image_caption" | "image_qa" | "text" (or the builder class); source: the folder / file;
    data_dir: where datasets live (`data_dir/<builder>/<name>/1.0.0/`); name: the config name, by default
    derived from the source's base name. An existing build is reused unless `overwrite`; it must
    have been built from the same source path (else DataError: choose another `name`).
    Read with `build(...).as_data_source()["train"]`; counts with `build_report(builder)`.
    """
    b = builder(kind, source, data_dir, name=name)
    src = b.builder_config.source
    prepared = os.path.isfile(os.path.join(os.fspath(b.data_path), "dataset_info.json"))
    if prepared and not overwrite:
        built_from = b.info.metadata.get("source")
        if built_from != src:
            raise DataError(
                f"{b.data_path} was built from {built_from!r}, not {src!r}; pass another name= or overwrite=True"
            )
        return b
    if not os.path.exists(src):  # checked here too so that nothing is created for a missing source
        raise DataError(f"{type(b).__name__}: source {src!r} does not exist")
    prepare_offline(b, overwrite=overwrite)
    return b


def build_report(b) -> dict:
    """{"kind", "source", "kept": {split: n}, "skipped": n, "skipped_examples": [[id, reason], …]} of a build."""
    return json.loads(json.dumps(dict(b.info.metadata)))
