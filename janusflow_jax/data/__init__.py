"""Training data: TFDS/ArrayRecord builders of local sources (`builders`, imported lazily since it
pulls in tensorflow_datasets) and the Grain training loader (`pipeline`)."""

from janusflow_jax.data.pipeline import (
    KINDS,
    DataError,
    DataWarning,
    MixSpec,
    TrainLoader,
    resize_center_crop,
)

_LAZY = {
    "build",
    "builder",
    "build_report",
    "BUILDERS",
    "SourceConfig",
    "ImageCaptionFolder",
    "ImageQuestionAnswer",
    "TextOnly",
}

__all__ = [
    "BUILDERS",
    "KINDS",
    "DataError",
    "DataWarning",
    "ImageCaptionFolder",
    "ImageQuestionAnswer",
    "MixSpec",
    "SourceConfig",
    "TextOnly",
    "TrainLoader",
    "build",
    "build_report",
    "builder",
    "resize_center_crop",
]


def __getattr__(name):
    if name in _LAZY:
        from janusflow_jax.data import builders

        return getattr(builders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
