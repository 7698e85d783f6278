"""``Classifier``: a backbone pretrained as an image classifier (``configs/spartan``) through
the Python API. Training and evaluation are the solver's (``rtdetr-spartan pretrain``);
prediction preprocesses with the config's validation transform, as evaluation and
``rtdetr-spartan visualize`` do. A detector takes the result with
``Detector(config, backbone_weights=classifier.checkpoint)``.

    clf = Classifier("configs/spartan/spartan_t_shapes_cls.yml")
    clf.train(data="data/shapes_cls", epochs=2, output_dir="runs/cls")
    clf.val()["top1"]; clf.predict("cat.jpg", top_k=3)[0].names
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rtdetr_spartan.api.config import ModelConfig
from rtdetr_spartan.api.model import TaskModel
from rtdetr_spartan.api.results import Classification
from rtdetr_spartan.api.sources import ImageSource, is_video, iter_images
from rtdetr_spartan.data.image_io import to_rgb
from rtdetr_spartan.misc.checkpoint import load_model_weights
from rtdetr_spartan.visualize.run import classifier_transform

__all__ = ["Classifier"]


def _class_names(cfg: Any) -> list[str]:
    """The class folders of the validation ImageFolder (its labels are their sorted order)."""
    root = ((cfg.get("val_dataloader") or {}).get("dataset") or {}).get("root")
    if root and Path(root).is_dir():
        return sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    return []


class Classifier(TaskModel):
    """An image classifier (``task: classification``) from a YAML ``config`` with ``-u``-style
    ``override_strings`` and keyword ``overrides``; :meth:`load` rebuilds one from a checkpoint."""

    task = "classification"

    def __init__(self, config: str | Path | ModelConfig, *override_strings: str, **overrides: Any) -> None:
        super().__init__(config, *override_strings, **overrides)
        self._model: tuple[tuple[Any, ...], torch.nn.Module, Any, list[str]] | None = None

    def _prediction_model(self, device: str) -> tuple[torch.nn.Module, Any, list[str]]:
        key = (self.checkpoint, repr(self.config.overrides), device)
        if self._model is None or self._model[0] != key:
            cfg = self.config.resolve()
            model = cfg.build("model")
            if self.checkpoint is not None:
                load_model_weights(model, self.checkpoint, expect_task="classification", purpose="Classifier.predict")
            self._model = (key, model.to(device).eval(), classifier_transform(cfg), _class_names(cfg))
        return self._model[1], self._model[2], self._model[3]

    @torch.inference_mode()
    def predict(
        self, source: ImageSource, top_k: int = 5, batch_size: int = 32, device: str = "cpu"
    ) -> list[Classification]:
        """The ``top_k`` most probable classes of every image of ``source`` (the inputs
        ``Detector.predict`` takes, except videos)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if is_video(source):
            raise ValueError(f"Classifier.predict takes images, not the video {source}")
        model, transform, names = self._prediction_model(device)
        images = list(iter_images(source))
        results: list[Classification] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = torch.stack([transform(to_rgb(image)) for image, _, _ in chunk]).to(device)
            probabilities = model(batch).float().softmax(dim=-1)
            scores, labels = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
            for (_, source_path, _), row_scores, row_labels in zip(chunk, scores.tolist(), labels.tolist()):
                results.append(
                    Classification(
                        labels=row_labels,
                        names=[names[i] if i < len(names) else f"class_{i}" for i in row_labels],
                        scores=row_scores,
                        source=source_path,
                    )
                )
        return results
