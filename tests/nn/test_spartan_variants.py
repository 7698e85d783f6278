"""Any SpaRTAN variant from config (a name or {depths, widths, expand_ratios}): the reference's
state-dict names and shapes, its outputs (the reference formulation as oracle) and errors that
name the bad field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.nn.backbones.spartan import VARIANTS, SpaRTAN, SpaRTANClassifier, SpaRTANVariant
from rtdetr_spartan.nn.reparameterize import ExportForm, reparameterize_model
from rtdetr_spartan.testing.spartan_reference import ReferenceStyleSpaRTAN
from tests.nn.spartan_helpers import randomize
from tests.parity_utils import load_spec

# odd expand ratios (3, 5: odd group sizes), a wider stem (48 > 32), 6 (even groups > 2), 2 (one pair)
VARIANT_CONFIGS: dict[str, dict[str, Any]] = {
    "wide_stem_odd": {"depths": [1, 1, 2, 1], "widths": [48, 64, 96, 128], "expand_ratios": [3, 2, 3, 4]},
    "narrow_even": {"depths": [1, 2, 1, 1], "widths": [16, 32, 64, 64], "expand_ratios": [2, 5, 2, 6]},
    "deep_late": {"depths": [2, 1, 3, 2], "widths": [40, 80, 160, 200], "expand_ratios": [2, 3, 5, 2]},
}


def reference_state_dict_shapes(depths: list[int], widths: list[int], ratios: list[int], classes: int) -> dict:
    """The reference classifier's state-dict names and shapes, written from its constructor
    (stem conv.0/conv.1, one flat ``layers`` list of blocks and downsamples, ``linear``)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    def conv_bn(prefix: str, cin: int, cout: int, k: int, groups: int = 1, norm: bool = True) -> None:
        shapes[f"{prefix}.conv.weight"] = (cout, cin // groups, k, k)
        if norm:
            bn(f"{prefix}.norm", cout)

    def se(prefix: str, c: int, s: int) -> None:
        shapes.update({f"{prefix}.squeeze.weight": (s, c, 1, 1), f"{prefix}.squeeze.bias": (s,)})
        shapes.update({f"{prefix}.expand.weight": (c, s, 1, 1), f"{prefix}.expand.bias": (c,)})

    conv_bn("conv.0", 3, widths[0] // 2, 3)
    conv_bn("conv.1", widths[0] // 2, widths[0], 3)
    index = 0
    for stage, (depth, c, r) in enumerate(zip(depths, widths, ratios)):
        grouped = stage >= len(depths) // 2
        h, e = c // 2, c * r
        for _ in range(depth):
            p = f"layers.{index}"
            shapes.update({f"{p}.scale_1": (1, c, 1, 1), f"{p}.scale_2": (1, c, 1, 1)})
            shapes.update({f"{p}.smixer.gamma": (1, h, 1, 1), f"{p}.smixer.proj_in.weight": (h, c, 1, 1)})
            shapes[f"{p}.smixer.proj_in.bias"] = (h,)
            conv_bn(f"{p}.smixer.h_conv", h, h, 3, h if grouped else 1)
            conv_bn(f"{p}.smixer.l_conv.0", h, h, 3, h if grouped else 1, norm=False)
            conv_bn(f"{p}.smixer.l_conv.1", h, h, 3, h if grouped else 1)
            se(f"{p}.smixer.h_attn", h, h // 4)
            se(f"{p}.smixer.l_attn", h, h // 4)
            shapes.update({f"{p}.smixer.proj_out.weight": (c, c, 1, 1), f"{p}.smixer.proj_out.bias": (c,)})
            shapes[f"{p}.cmixer.complex"] = (1, 1, 1, e // 2, 2)  # own parameters come first
            shapes.update({f"{p}.cmixer.theta.weight": (e, c, 1, 1), f"{p}.cmixer.theta.bias": (e,)})
            shapes.update({f"{p}.cmixer.proj.weight": (e, c, 1, 1), f"{p}.cmixer.proj.bias": (e,)})
            conv_bn(f"{p}.cmixer.conv", e, e, 3, c if grouped else e)
            se(f"{p}.cmixer.attn", e, c // 4)
            shapes.update({f"{p}.cmixer.proj_out.weight": (c, e, 1, 1), f"{p}.cmixer.proj_out.bias": (c,)})
            for norm in ("norm_1", "norm_2"):
                shapes.update({f"{p}.{norm}.weight": (c,), f"{p}.{norm}.bias": (c,)})
            index += 1
        if stage < len(depths) - 1:
            conv_bn(f"layers.{index}", c, widths[stage + 1], 2)
            index += 1
    shapes.update({"linear.weight": (classes, widths[-1]), "linear.bias": (classes,)})
    return shapes


def test_oracle_gives_the_published_spartan_t_state_dict() -> None:
    entries, _ = load_spec("spartan_t_cls")
    t = VARIANTS["T"]
    expected = reference_state_dict_shapes(list(t.depths), list(t.widths), list(t.expand_ratios), 1000)
    assert {name: tuple(shape) for name, shape, _ in entries} == expected


@pytest.mark.parametrize("name", list(VARIANT_CONFIGS))
def test_variant_has_reference_names_and_matches_the_reference(name: str) -> None:
    cfg = VARIANT_CONFIGS[name]
    classifier = SpaRTANClassifier(cfg, num_classes=7)
    expected = reference_state_dict_shapes(cfg["depths"], cfg["widths"], cfg["expand_ratios"], 7)
    got = {k: tuple(v.shape) for k, v in classifier.state_dict().items()}
    assert list(got) == list(expected) and got == expected  # names, order and shapes
    backbone = randomize(SpaRTAN(cfg, return_idx=(0, 1, 2, 3)), seed=1)
    assert backbone.out_channels == cfg["widths"] and backbone.out_strides == [4, 8, 16, 32]
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    for train in (True, False):  # batch statistics, then running statistics
        backbone.train(train)
        with torch.no_grad():
            want = ReferenceStyleSpaRTAN(backbone)(x)
            got_maps = backbone(x)
        for a, b in zip(got_maps, want, strict=True):
            assert (a - b).abs().max() < 1e-4
    with torch.no_grad():
        for converted in (
            reparameterize_model(backbone, inplace=False),
            reparameterize_model(backbone, export=ExportForm(True), inplace=False),
        ):
            for a, b in zip(converted(x), want, strict=True):
                assert (a - b).abs().max() < 1e-4


def test_variant_from_yaml(tmp_path: Path) -> None:
    cfg = VARIANT_CONFIGS["wide_stem_odd"]
    path = tmp_path / "variant.yml"
    path.write_text(
        "model: SpaRTANClassifier\nnum_classes: 5\nSpaRTANClassifier:\n  variant:\n"
        + "".join(f"    {key}: {value}\n" for key, value in cfg.items())
        + "    drop_path_rate: 0.2\n"
    )
    model = YAMLConfig(path).model
    assert isinstance(model, SpaRTANClassifier)
    assert model.variant == SpaRTANVariant(
        tuple(cfg["depths"]), tuple(cfg["widths"]), tuple(cfg["expand_ratios"]), drop_path_rate=0.2
    )
    assert model.linear.weight.shape == (5, 128)
    assert SpaRTAN("T").variant == VARIANTS["T"] == SpaRTANVariant.from_config(VARIANTS["T"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"depths": [1, 1, 1]}, r"one entry per stage, got lengths \{'depths': 3, 'widths': 4"),
        (
            {"widths": [32, 60, 128, 256]},
            r"SpaRTAN\.variant\.widths\[1\]=60: expected a positive integer divisible by 8",
        ),
        ({"expand_ratios": [4, 1, 2, 2]}, r"SpaRTAN\.variant\.expand_ratios\[1\]=1: expected an integer > 1"),
        ({"expand_ratios": [4, 2.5, 2, 2]}, r"expand_ratios\[1\]=2\.5: expected an integer > 1"),
        ({"depths": [3, 0, 12, 2]}, r"SpaRTAN\.variant\.depths\[1\]=0: expected an integer >= 1"),
        ({"width": [32]}, r"unknown keys \['width'\]"),
        ({"widths": 32}, r"SpaRTAN\.variant\.widths=32: expected a list"),
    ],
    ids=["unequal_lengths", "width_not_multiple_of_8", "ratio_1", "ratio_float", "depth_0", "typo", "scalar"],
)
def test_bad_variant_is_a_config_error_naming_field_and_value(change: dict[str, Any], message: str) -> None:
    cfg = {"depths": [3, 3, 12, 2], "widths": [32, 64, 128, 256], "expand_ratios": [4, 4, 2, 2], **change}
    for build in (SpaRTAN, SpaRTANClassifier):
        with pytest.raises(ConfigError, match=message):
            build(cfg)
