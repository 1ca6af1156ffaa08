"""Options of the align stage, with their validation; no torch import.

Why a separate module: the CLI builds its `--help` from these constants, and `fvtool --help` must
not pay for importing torch and the MTCNN weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fvtool.errors import InputError

KEEP_POLICIES: tuple[str, ...] = ("largest", "center", "confident")
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
MODES = ("similarity", "crop")
FORMATS = ("jpg", "png")
ON_FAIL = ("center-crop", "skip")
#: default centre-crop fraction per mode, measured on LFW deep-funneled detections (docs/align.md):
#: a similarity crop covers a median 0.52 of the 250-px image side, an MTCNN box 0.48 (crop mode,
#: margin 0; the margin widens it by size / (size - margin)). So a fallback frames the face about
#: as a detected crop of the same mode would.
DEFAULT_CENTER_FRACTION = {"similarity": 0.52, "crop": 0.48}


@dataclass(frozen=True)
class AlignOptions:
    size: int = 112
    mode: str = "similarity"
    margin: float = 0.0
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    keep: str = "center"
    device: str = "cpu"
    batch_size: int = 16
    image_format: str = "jpg"
    quality: int = 95
    on_fail: str = "center-crop"
    center_crop_fraction: float | None = None
    max_detect_side: int = 1024
    resume: bool = True
    threads: int | None = None
    show_progress: bool = True
    #: an earlier alignment of the same source (folder or manifest) whose detections are reused
    reuse_detections: Path | None = None

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 1024:
            raise InputError(f"--size must be between 16 and 1024 pixels, got {self.size}")
        if self.mode not in MODES:
            raise InputError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.margin < self.size:
            raise InputError(f"--margin must be >= 0 and smaller than --size ({self.size}), got {self.margin}")
        if self.keep not in KEEP_POLICIES:
            raise InputError(f"--keep must be one of {', '.join(KEEP_POLICIES)}, got {self.keep!r}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.image_format not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {self.image_format!r}")
        if not 1 <= self.quality <= 100:
            raise InputError(f"--quality must be between 1 and 100, got {self.quality}")
        if self.on_fail not in ON_FAIL:
            raise InputError(f"--on-fail must be one of {', '.join(ON_FAIL)}, got {self.on_fail!r}")
        if self.center_crop_fraction is not None and not 0 < self.center_crop_fraction <= 1:
            raise InputError(f"--center-crop-fraction must be in (0, 1], got {self.center_crop_fraction}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        self.detector_config()  # validates thresholds and face size

    @property
    def fallback_fraction(self) -> float:
        if self.center_crop_fraction is not None:
            return self.center_crop_fraction
        if self.mode == "crop":
            return round(min(1.0, DEFAULT_CENTER_FRACTION["crop"] * self.size / (self.size - self.margin)), 4)
        return DEFAULT_CENTER_FRACTION[self.mode]

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(min_face_size=self.min_face_size, thresholds=tuple(self.thresholds),
                              device=self.device, max_detect_side=self.max_detect_side)

    def detection_options(self) -> dict[str, object]:
        """The options that determine which face is kept (and where its landmarks are)."""
        return {
            "min_face_size": self.min_face_size,
            "thresholds": [float(t) for t in self.thresholds],
            "keep": self.keep,
            "max_detect_side": self.max_detect_side,
        }

    def output_options(self) -> dict[str, object]:
        """The options that determine the output files; a resumed run must use the same ones."""
        return {
            "size": self.size,
            "mode": self.mode,
            "margin": self.margin if self.mode == "crop" else 0.0,
            "min_face_size": self.min_face_size,
            "thresholds": [float(t) for t in self.thresholds],
            "keep": self.keep,
            "format": self.image_format,
            "quality": self.quality if self.image_format == "jpg" else None,
            "center_crop_fraction": self.fallback_fraction,
            "max_detect_side": self.max_detect_side,
        }


@dataclass(frozen=True)
class DetectorConfig:
    """MTCNN settings (facenet-pytorch's defaults); the minimum face size is in source pixels."""

    min_face_size: int = 20
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    factor: float = 0.709
    device: str = "cpu"
    #: images whose longer side exceeds this are downscaled for detection only
    max_detect_side: int = 1024

    def __post_init__(self) -> None:
        if self.min_face_size < 1:
            raise InputError(f"minimum face size must be >= 1 pixel, got {self.min_face_size}")
        if len(self.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise InputError(f"thresholds must be three numbers in [0, 1] (P-, R-, O-net), got {self.thresholds}")
        if not 0.1 <= self.factor < 1.0:
            raise InputError(f"pyramid factor must be in [0.1, 1), got {self.factor}")
        if self.max_detect_side < 64:
            raise InputError(f"max detection side must be >= 64 pixels, got {self.max_detect_side}")
