"""What the quickstart pipeline runs: dataset sizes, schedules and files, as one frozen record.

Two presets: :func:`default_settings` (the full demonstration, sized for a 2-core CPU in about a
quarter of an hour) and :func:`fast_settings` (tiny datasets and one epoch per stage, a smoke
test of every stage). The model itself (input size, widths, optimizer) comes from the configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

__all__ = ["QuickstartSettings", "default_settings", "fast_settings"]


@dataclass(frozen=True)
class QuickstartSettings:
    """Settings of one quickstart run.

    Datasets (written once under ``data_dir/<dataset_name>``, reused while their settings match):
        det_train / det_val / det_image_size / det_max_objects: the COCO detection set;
        cls_train / cls_val / cls_image_size: the ImageFolder classification set.
    Training:
        pretrain_epochs: classification epochs of SpaRTAN-T (0 skips pretraining: the detector
            then trains from scratch); detector_epochs: RT-DETR epochs; detector_lr: the
            detector's AdamW learning rate (None: the config's, 8e-4, tuned for training from
            scratch; 4e-4 suits the pretrained backbone); detector_input_size: train and
            evaluate at this square size instead of the config's.
        pretrain_overrides / detector_overrides: extra ``key.sub=value`` config overrides.
    Outputs:
        num_samples: validation images annotated with the ONNX model; score_threshold: the
        lowest score drawn; latency_runs: timed onnxruntime calls (batch 1).
    """

    output_dir: Path
    data_dir: Path
    detection_config: Path
    pretrain_config: Path
    seed: int = 0
    dataset_name: str = "quickstart"
    det_train: int = 1600
    det_val: int = 100
    det_image_size: int = 256
    det_max_objects: int = 4
    cls_train: int = 1600
    cls_val: int = 200
    cls_image_size: int = 64
    pretrain_epochs: int = 4
    detector_epochs: int = 3
    detector_lr: float | None = 4e-4
    detector_input_size: int | None = None
    pretrain_overrides: tuple[str, ...] = ()
    detector_overrides: tuple[str, ...] = ()
    device: str | None = None
    num_samples: int = 6
    score_threshold: float = 0.5
    latency_runs: int = 20

    @property
    def detection_data(self) -> Path:
        return self.data_dir / self.dataset_name / "detection"

    @property
    def classification_data(self) -> Path:
        return self.data_dir / self.dataset_name / "classification"

    def replace(self, **changes: object) -> QuickstartSettings:
        """A copy with ``changes`` applied (field names as in the class)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def default_settings(
    output_dir: str | Path,
    data_dir: str | Path,
    detection_config: str | Path,
    pretrain_config: str | Path,
    seed: int = 0,
) -> QuickstartSettings:
    """The full run: pretraining on shapes, detector training, evaluation, export, demo."""
    return QuickstartSettings(
        output_dir=Path(output_dir),
        data_dir=Path(data_dir),
        detection_config=Path(detection_config),
        pretrain_config=Path(pretrain_config),
        seed=seed,
    )


def fast_settings(
    output_dir: str | Path,
    data_dir: str | Path,
    detection_config: str | Path,
    pretrain_config: str | Path,
    seed: int = 0,
) -> QuickstartSettings:
    """Every stage on tiny datasets for one epoch: checks that the pipeline runs, not quality."""
    return default_settings(output_dir, data_dir, detection_config, pretrain_config, seed).replace(
        dataset_name="quickstart_fast",
        det_train=16,
        det_val=4,
        det_image_size=96,
        detector_input_size=96,
        cls_train=32,
        cls_val=8,
        cls_image_size=32,
        pretrain_epochs=1,
        detector_epochs=1,
        num_samples=2,
        latency_runs=3,
        # one epoch: no warm-up epoch (the schedulers need warmup_epochs < epochs)
        detector_overrides=(
            "train_dataloader.batch_size=8",
            "val_dataloader.batch_size=4",
            "lr_scheduler.warmup_epochs=0",
        ),
        pretrain_overrides=("train_dataloader.batch_size=16", "lr_scheduler.warmup_epochs=0"),
    )
