"""Per-operator profiles from each runtime's own profiler: which nodes cost the time, which kernel ran them.

- OpenVINO: ``ProfilingInfo`` of each inference (``PERF_COUNT``); the kernel is the node's
  ``exec_type`` (``brgconv_avx512_amx_1x1_bf16``, ``jit_avx512_amx_bf16``, ``ref_any_f32``), whose
  suffix is the precision it computed in. Nodes that did not run (fused into another) are skipped.
- onnxruntime: the chrome-trace JSON that ``SessionOptions.enable_profiling`` writes; events of
  category ``Node`` carry ``op_name``, ``provider`` and input types. Only the last ``runs``
  ``model_run`` windows count, so warm-up calls stay out.
- PyTorch: ``torch.profiler`` events; a row is a top-level operator (``aten::conv2d`` and what it
  calls) with its input shapes and dtypes, its kernel the callee that took the most time.

Times are per inference: the sum over the profiled runs divided by the number of runs.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "OpRecord",
    "Profile",
    "TypeSummary",
    "format_table",
    "onnxruntime_records",
    "openvino_records",
    "precision_from_exec_type",
    "read_profile_json",
    "summarize_by_type",
    "torch_records",
    "write_profile",
    "write_profile_json",
]

# Element-type spellings of the runtimes, to one short name each.
_PRECISIONS = {
    "f32": "f32",
    "fp32": "f32",
    "float": "f32",
    "float32": "f32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "f16": "f16",
    "fp16": "f16",
    "float16": "f16",
    "half": "f16",
    "double": "f64",
    "f64": "f64",
    "i8": "i8",
    "int8": "i8",
    "u8": "u8",
    "uint8": "u8",
    "i32": "i32",
    "int32": "i32",
    "int": "i32",
    "i64": "i64",
    "int64": "i64",
    "long": "i64",
    "int64_t": "i64",
    "boolean": "bool",
    "bool": "bool",
}


@dataclass(frozen=True)
class OpRecord:
    """One node (OpenVINO, onnxruntime) or operator with its input shapes (PyTorch).

    ``impl``: the kernel or implementation that ran it; ``precision``: the element type it computed
    in (``f32``, ``bf16``, ``i8`` ...; empty when the profiler does not say); ``time_ms`` and
    ``count``: per inference.
    """

    name: str
    type: str
    impl: str
    precision: str
    time_ms: float
    count: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TypeSummary:
    """All records of one type (and kernel, when grouped by it): per-inference count and time."""

    type: str
    impl: str
    count: float
    time_ms: float
    share: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Profile:
    """A runtime's per-inference profile: ``records`` sorted by time, most expensive first."""

    backend: str
    runs: int
    records: list[OpRecord]
    settings: dict[str, object] = field(default_factory=dict)
    not_run: int = 0  # nodes the runtime lists but did not run: fused into a neighbour (OpenVINO)

    def __post_init__(self) -> None:
        self.records = sorted(self.records, key=lambda r: (-r.time_ms, r.name))

    @property
    def total_ms(self) -> float:
        """Profiled time per inference, the sum over records."""
        return sum(r.time_ms for r in self.records)

    @property
    def nodes(self) -> float:
        """Executed nodes (operator calls for PyTorch) per inference."""
        return sum(r.count for r in self.records)

    def share(self, record: OpRecord) -> float:
        total = self.total_ms
        return record.time_ms / total if total > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "runs": self.runs,
            "settings": self.settings,
            "nodes": self.nodes,
            "not_run": self.not_run,
            "total_ms": self.total_ms,
            "records": [{**r.to_dict(), "share": self.share(r)} for r in self.records],
            "by_type": [s.to_dict() for s in summarize_by_type(self.records)],
        }


def precision_from_exec_type(exec_type: str) -> str:
    """The precision an OpenVINO kernel ran in, from its name's last type token (``jit_avx512_amx_bf16``
    -> ``bf16``, ``brgconv_avx512_amx_1x1_I8`` -> ``i8``); empty when the name has none (``undef``)."""
    for token in reversed(exec_type.lower().split("_")):
        if token in _PRECISIONS:
            return _PRECISIONS[token]
    return ""


def _executed(infos: Iterable[Any]) -> dict[tuple[str, str, str], float]:
    """(node name, type, exec type) -> reported ``real_time`` in ms, executed nodes only."""
    return {
        (str(i.node_name), str(i.node_type), str(i.exec_type)): i.real_time.total_seconds() * 1000.0
        for i in infos
        if str(i.status).rsplit(".", 1)[-1] == "EXECUTED"
    }


def openvino_records(
    after: Iterable[Any], inferences_after: int, before: Iterable[Any] = (), inferences_before: int = 0
) -> list[OpRecord]:
    """Records from ``InferRequest.get_profiling_info()`` taken after ``inferences_after`` inferences,
    less the one taken after ``inferences_before`` (the warm-up), so only the window between counts.

    The CPU plugin reports each node's mean time over every inference since compiling (whole
    microseconds), the first, with its one-time weight packing, included. The window's total is
    ``n_after * mean_after - n_before * mean_before``. Items need ``node_name``, ``node_type``,
    ``exec_type``, ``real_time`` (a timedelta) and ``status``; nodes that did not run are skipped.
    """
    runs = inferences_after - inferences_before
    if runs < 1 or inferences_before < 0:
        raise ValueError(f"no profiled inferences between {inferences_before} and {inferences_after}")
    means_after, means_before = _executed(after), _executed(before)
    records = []
    for (name, kind, impl), mean in means_after.items():
        total = inferences_after * mean - inferences_before * means_before.get((name, kind, impl), 0.0)
        # Truncation to whole microseconds can make a tiny node's difference negative.
        records.append(OpRecord(name, kind, impl, precision_from_exec_type(impl), max(total, 0.0) / runs, 1.0))
    return records


def _onnxruntime_events(trace: str | Path | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(trace, (str, Path)):
        with open(trace) as handle:
            loaded = json.load(handle)
        # Chrome traces are a list of events, or an object holding them under "traceEvents".
        return list(loaded["traceEvents"] if isinstance(loaded, dict) else loaded)
    return list(trace)


def _onnxruntime_precision(args: dict[str, Any]) -> str:
    """The element type of the node's first input (``input_type_shape``: [{"float": [1, 3, 640, 640]}, ...])."""
    for item in args.get("input_type_shape", ()):
        for type_name in item:
            return _PRECISIONS.get(str(type_name).lower(), str(type_name))
    return ""


def _onnxruntime_impl(name: str, args: dict[str, Any]) -> str:
    """Provider (``CPU``, ``CUDA``), with onnxruntime's NCHWc blocked-layout kernels marked: its
    layout transformer renames what it rewrites ``*_nchwc``."""
    impl = str(args.get("provider", "")).removesuffix("ExecutionProvider")
    if "_nchwc" in name:
        impl += " nchwc"
    for key in ("activation", "kernel"):
        if key in args:
            impl += f" {key}={args[key]}"
    return impl


def onnxruntime_records(trace: str | Path | Sequence[dict[str, Any]], runs: int) -> list[OpRecord]:
    """Records from an onnxruntime profile (the file ``InferenceSession.end_profiling()`` returns, or its
    events): the node events inside the last ``runs`` ``model_run`` windows, averaged over them."""
    events = _onnxruntime_events(trace)
    windows = sorted(
        (int(e["ts"]), int(e["ts"]) + int(e["dur"]))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    if runs < 1 or len(windows) < runs:
        raise ValueError(f"the onnxruntime profile holds {len(windows)} runs, {runs} were asked for")
    start = windows[-runs][0]
    times: dict[tuple[str, str, str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time") or int(event["ts"]) < start:
            continue
        args = event.get("args", {})
        node = name.removesuffix("_kernel_time")
        key = (node, str(args.get("op_name", "")), _onnxruntime_impl(node, args), _onnxruntime_precision(args))
        times[key] += int(event["dur"]) / 1000.0
        counts[key] += 1
    return [OpRecord(*key, time_ms=times[key] / runs, count=counts[key] / runs) for key in times]


def _top_level(events: Iterable[Any]) -> list[Any]:
    """Operators not called by another operator; a user annotation (``record_function``) is looked through.
    GPU kernels are events of their own too: they are counted through the operator that launched them."""
    top = []
    for event in events:
        if str(event.device_type).rsplit(".", 1)[-1] != "CPU":
            continue
        parent = event.cpu_parent
        while parent is not None and parent.is_user_annotation:
            parent = parent.cpu_parent
        if parent is None and not event.is_user_annotation:
            top.append(event)
    return top


# Memory bookkeeping inside an operator (bias copies, output allocation): never "the kernel".
_TORCH_MEMORY_OPS = frozenset(
    (
        "aten::copy_",
        "aten::empty",
        "aten::empty_strided",
        "aten::fill_",
        "aten::zero_",
        "aten::resize_",
        "aten::view",
        "aten::as_strided",
        "aten::_reshape_alias",
    )
)


def _kernel(event: Any, device: str) -> str:
    """What did the work of ``event``: its longest device kernel on CUDA, else the operator reached by
    following the callee that holds most of the time (``aten::conv2d`` -> ``aten::mkldnn_convolution``,
    ``aten::linear`` -> ``aten::addmm``), stopping at memory bookkeeping."""
    if device == "cuda" and event.kernels:
        return str(max(event.kernels, key=lambda k: k.duration).name)
    while True:
        children = [c for c in event.cpu_children if c.name not in _TORCH_MEMORY_OPS]
        child = max(children, key=lambda c: c.cpu_time_total, default=None)
        if child is None or child.cpu_time_total < 0.5 * event.cpu_time_total:
            return str(event.name)
        event = child


def _torch_precision(event: Any) -> str:
    for dtype in getattr(event, "input_dtypes", None) or ():
        name = _PRECISIONS.get(str(dtype).lower().removeprefix("c10::"), "")
        if name:
            return name
    return ""


def torch_records(events: Sequence[Any], runs: int, device: str = "cpu") -> list[OpRecord]:
    """Records from ``torch.profiler.profile(record_shapes=True).events()`` over ``runs`` calls: top-level
    operators grouped by name, input shapes and dtypes (what ``key_averages(group_by_input_shape=True)``
    groups by, here over top-level operators only, so that a callee's time is not counted twice); time
    on the CPU, or the device time of their kernels on CUDA."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for event in _top_level(events):
        groups[(event.name, f"{event.input_shapes}{getattr(event, 'input_dtypes', '')}")].append(event)
    records = []
    for (name, _), group in groups.items():
        shapes = ", ".join(str(list(s)) for s in group[0].input_shapes if s)
        total_us = sum(e.device_time_total if device == "cuda" else e.cpu_time_total for e in group)
        records.append(
            OpRecord(
                name=f"{name}({shapes})",
                type=str(name),
                impl=f"{device} {_kernel(group[0], device)}",
                precision=_torch_precision(group[0]),
                time_ms=total_us / 1000.0 / runs,
                count=len(group) / runs,
            )
        )
    return records


def summarize_by_type(records: Iterable[OpRecord], by_impl: bool = False) -> list[TypeSummary]:
    """Records grouped by type (and kernel, with ``by_impl``), most expensive first; ``share`` of the total."""
    records = list(records)
    total = sum(r.time_ms for r in records)
    times: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str], float] = defaultdict(float)
    for record in records:
        key = (record.type, record.impl if by_impl else "")
        times[key] += record.time_ms
        counts[key] += record.count
    summaries = [
        TypeSummary(kind, impl, counts[(kind, impl)], t, t / total if total > 0 else 0.0)
        for (kind, impl), t in times.items()
    ]
    return sorted(summaries, key=lambda s: (-s.time_ms, s.type, s.impl))


def _short(text: str, width: int = 80) -> str:
    """``text`` cut in the middle to ``width`` characters, with ``|`` escaped for markdown."""
    text = text.replace("|", "\\|")
    return text if len(text) <= width else f"{text[: width // 2 - 1]}…{text[-(width // 2) :]}"


def _count(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.2f}"


def format_table(profile: Profile, top: int = 25) -> str:
    """Markdown: totals, the ``top`` most expensive records, and the time by type and by type + kernel."""
    fused = f" (+{profile.not_run} listed, fused, not run)" if profile.not_run else ""
    lines = [
        f"{profile.backend} profile: {_count(profile.nodes)} executed nodes{fused}, {profile.total_ms:.2f} ms "
        f"profiled per inference (mean of {profile.runs} runs)",
        "",
        "| # | node | type | kernel / implementation | precision | time ms | share | count |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(profile.records[:top], 1):
        lines.append(
            f"| {rank} | {_short(r.name)} | {r.type} | {_short(r.impl, 48)} | {r.precision} | "
            f"{r.time_ms:.3f} | {profile.share(r):.1%} | {_count(r.count)} |"
        )
    lines += ["", "| type | count | time ms | share |", "|---|---|---|---|"]
    for s in summarize_by_type(profile.records):
        lines.append(f"| {s.type} | {_count(s.count)} | {s.time_ms:.3f} | {s.share:.1%} |")
    lines += ["", "| type | kernel / implementation | count | time ms | share |", "|---|---|---|---|---|"]
    for s in summarize_by_type(profile.records, by_impl=True)[:top]:
        lines.append(f"| {s.type} | {_short(s.impl, 48)} | {_count(s.count)} | {s.time_ms:.3f} | {s.share:.1%} |")
    return "\n".join(lines) + "\n"


def _write_text_atomic(text: str, path: Path) -> Path:
    """``text`` to a temporary file beside ``path``, then renamed over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_profile_json(profile: Profile, path: str | Path) -> Path:
    """All records, the by-type summary and the totals as JSON (written atomically)."""
    return _write_text_atomic(json.dumps(profile.to_dict(), indent=1) + "\n", Path(path))


def read_profile_json(path: str | Path) -> Profile:
    """The :class:`Profile` that :func:`write_profile_json` wrote."""
    data = json.loads(Path(path).read_text())
    try:
        names = {f.name for f in fields(OpRecord)}  # "share" is derived
        records = [OpRecord(**{k: v for k, v in r.items() if k in names}) for r in data["records"]]
        settings = dict(data.get("settings", {}))
        return Profile(data["backend"], int(data["runs"]), records, settings, int(data.get("not_run", 0)))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a profile written by write_profile_json ({err})") from err


def write_profile(profile: Profile, prefix: str | Path, top: int = 25) -> tuple[Path, Path]:
    """``prefix.md`` (the tables of :func:`format_table`) and ``prefix.json`` (every record)."""
    prefix = Path(prefix)
    markdown = _write_text_atomic(format_table(profile, top), prefix.with_name(prefix.name + ".md"))
    return markdown, write_profile_json(profile, prefix.with_name(prefix.name + ".json"))
