"""Every ```python and ```bash example of README.md runs, in README order, on generated data.

The README's examples use the COCO and ImageNet configs and their schedules. Here they run in a
temporary folder holding the generated shapes datasets, a folder of images and a short video,
with the strings of ``SUBSTITUTIONS`` replaced: the shapes configs and datasets for COCO and
ImageNet, one epoch for the long schedules. A block right after the line
``<!-- readme-test: skip: REASON -->`` is not run; the reason says where it is tested instead.
The Python examples and the command-line examples run in two folders, each in order (later
examples read the checkpoints that earlier ones wrote), every block in its own process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from rtdetr_spartan.data.shapes import make_classification_dataset, make_detection_dataset, make_yolo_dataset
from rtdetr_spartan.deploy.video import VideoWriter

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
BLOCK_TIMEOUT_S = 600

# README text -> what runs here. Longer keys are replaced first (a path before its folder).
SUBSTITUTIONS = {
    "configs/rtdetr/rtdetr_spartan_t_6x_coco.yml": "configs/rtdetr/rtdetr_spartan_t_shapes.yml",
    "configs/rtdetr/rtdetr_r18vd_6x_coco.yml": "configs/rtdetr/rtdetr_spartan_t_shapes.yml",
    "configs/spartan/spartan_t_imagenet.yml": "configs/spartan/spartan_t_shapes_cls.yml",
    "dataset/coco/annotations/instances_val2017.json": "data/shapes/annotations/instances_val.json",
    "dataset/coco/val2017/": "data/shapes/val/",
    "dataset/coco": "data/shapes",
    "data/imagenet": "data/shapes_cls",
    "datasets/my_yolo": "data/shapes_yolo",
    "epochs=300": "epochs=1",
    "epochs=72": "epochs=1",
}

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Example:
    """One fenced block of the README."""

    language: str
    line: int  # of the opening fence, 1-based
    code: str
    skip_reason: str | None


def readme_examples(text: str) -> list[Example]:
    """The ```python and ```bash blocks of ``text``, each with the skip reason of the line before it."""
    examples = []
    for match in FENCE.finditer(text):
        if match.group(1) not in ("python", "bash"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 1
        examples.append(Example(match.group(1), line, match.group(2), skip.group(1) if skip else None))
    return examples


def substitute(code: str) -> str:
    """``code`` with every key of ``SUBSTITUTIONS`` replaced, longest key first."""
    pattern = re.compile("|".join(re.escape(key) for key in sorted(SUBSTITUTIONS, key=len, reverse=True)))
    return pattern.sub(lambda match: SUBSTITUTIONS[match.group(0)], code)


def runnable(language: str) -> list[Example]:
    return [
        ex
        for ex in readme_examples(README.read_text(encoding="utf-8"))
        if ex.language == language and not ex.skip_reason
    ]


def make_workspace(root: Path) -> None:
    """What the examples read: configs, tiny shapes datasets (COCO, YOLO, ImageFolder), images/, traffic.mp4."""
    (root / "configs").symlink_to(REPO_ROOT / "configs", target_is_directory=True)
    # 8 training images = one batch of the shapes detector config (drop_last), 4 to validate.
    make_detection_dataset(root / "data" / "shapes", train=8, val=4, size=128, seed=0)
    make_yolo_dataset(root / "data" / "shapes_yolo", train=8, val=4, size=128, seed=1)
    # 32 = one batch of the shapes classifier config; every class needs an image in both splits.
    make_classification_dataset(root / "data" / "shapes_cls", train=32, val=8, size=64, seed=0)
    frames = [Image.open(path).convert("RGB") for path in sorted((root / "data" / "shapes" / "val").glob("*.jpg"))]
    (root / "images").mkdir()
    for index, frame in enumerate(frames[:2]):
        frame.save(root / "images" / f"scene_{index}.jpg")
    with VideoWriter(root / "traffic.mp4", 128, 128, Fraction(5)) as writer:
        for frame in frames[:3]:
            writer.write(frame)


def run_environment() -> dict[str, str]:
    """This interpreter's ``python`` and ``rtdetr-spartan`` first on PATH; tracebacks on errors."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")  # faster than the cores' count on a busy machine
    env["RTDETR_SPARTAN_DEBUG"] = "1"
    return env


def test_readme_has_both_forms_of_each_task_and_every_substitution_is_used() -> None:
    examples = readme_examples(README.read_text(encoding="utf-8"))
    run = [ex for ex in examples if not ex.skip_reason]
    code = "\n".join(ex.code for ex in run)
    assert [key for key in SUBSTITUTIONS if key not in code] == []
    for task in ("pretrain", "train", "val", "predict", "export"):
        assert any(f"rtdetr-spartan {task} " in ex.code for ex in run if ex.language == "bash"), task
    for call in ("Classifier(", ".train(", ".val(", ".predict(", ".export("):
        assert any(call in ex.code for ex in run if ex.language == "python"), call
    assert all(ex.skip_reason for ex in examples if "pip install" in ex.code)  # not run here: .ci/run does


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci_commands = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci_commands == ["python -m pytest tests -q"]
    two_lines = [ex for ex in readme_examples(README.read_text(encoding="utf-8")) if "python -m pytest" in ex.code]
    assert len(two_lines) == 1 and two_lines[0].code.rstrip().endswith("&& python -m pytest tests -q")


def test_readme_examples_parse_skip_markers_and_lines() -> None:
    text = "intro\n```python\nprint(1)\n```\n<!-- readme-test: skip: slow -->\n```bash\nls\n```\n```yaml\na: 1\n```\n"
    assert readme_examples(text) == [Example("python", 2, "print(1)\n", None), Example("bash", 6, "ls\n", "slow")]
    assert substitute("rtdetr-spartan val --data dataset/coco --images dataset/coco/val2017/") == (
        "rtdetr-spartan val --data data/shapes --images data/shapes/val/"
    )


@pytest.mark.slow
@pytest.mark.parametrize("language", ["python", "bash"])
def test_readme_examples_run(language: str, tmp_path: Path) -> None:
    env = run_environment()
    if language == "bash" and shutil.which("rtdetr-spartan", path=env["PATH"]) is None:
        pytest.fail("the rtdetr-spartan command is not installed next to this python: run `pip install -e .`")
    make_workspace(tmp_path)
    for index, example in enumerate(runnable(language)):
        script = tmp_path / f"example_{index}.{'py' if language == 'python' else 'sh'}"
        script.write_text(substitute(example.code), encoding="utf-8")
        command = [sys.executable, script.name] if language == "python" else ["bash", "-euo", "pipefail", script.name]
        proc = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False
        )
        assert proc.returncode == 0, (
            f"README.md line {example.line} ({language}) exited {proc.returncode}:\n{script.read_text()}\n"
            f"--- output ---\n{(proc.stdout + proc.stderr)[-4000:]}"
        )
