from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rtdetr_spartan.core.yaml_utils import add_overrides_argument, load_yaml, merge_dict, parse_overrides


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_merge_dict_is_deep_and_pure():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    update = {"a": {"c": [3]}, "e": 2}
    merged = merge_dict(base, update)
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    merged["a"]["b"] = 99
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_include_relative_paths_later_files_win(tmp_path):
    write(tmp_path / "base" / "a.yml", "x: 1\nsection: {k1: 1, k2: 1}\n")
    write(tmp_path / "base" / "b.yml", "x: 2\nsection: {k2: 2}\n")
    top = write(tmp_path / "cfg" / "top.yml", "__include__: ['../base/a.yml', '../base/b.yml']\nsection: {k3: 3}\n")
    cfg = load_yaml(top)
    assert cfg == {"x": 2, "section": {"k1": 1, "k2": 2, "k3": 3}}


def test_nested_include_resolves_relative_to_including_file(tmp_path):
    write(tmp_path / "a" / "deep" / "leaf.yml", "leaf: true\n")
    write(tmp_path / "a" / "mid.yml", "__include__: deep/leaf.yml\nmid: 1\n")
    top = write(tmp_path / "top.yml", "__include__: [a/mid.yml]\n")
    assert load_yaml(top) == {"leaf": True, "mid": 1}


def test_missing_include_names_including_file(tmp_path):
    top = write(tmp_path / "top.yml", "__include__: [nope.yml]\n")
    with pytest.raises(FileNotFoundError, match=r"top\.yml includes 'nope\.yml'"):
        load_yaml(top)


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yml", "__include__: [b.yml]\n")
    write(tmp_path / "b.yml", "__include__: [a.yml]\n")
    with pytest.raises(ValueError, match="cycle"):
        load_yaml(tmp_path / "a.yml")


def test_invalid_yaml_names_file(tmp_path):
    bad = write(tmp_path / "bad.yml", "a: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yml"):
        load_yaml(bad)


def test_parse_overrides_yaml_typed():
    got = parse_overrides(["a.b=1", "a.c=[1, 2]", "d=false", "e.f=0.5", "g=name", "a.h={x: 1}"])
    assert got == {"a": {"b": 1, "c": [1, 2], "h": {"x": 1}}, "d": False, "e": {"f": 0.5}, "g": "name"}


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_parse_overrides_rejects_malformed(bad):
    with pytest.raises(ValueError, match="override"):
        parse_overrides([bad])


def test_the_overrides_option_collects_repeated_flags() -> None:
    parser = argparse.ArgumentParser()
    add_overrides_argument(parser, "epochs=3", subject="detector config")
    args = parser.parse_args(["-u", "a.b=1", "c=[1, 2]", "--update", "a.d=x"])
    assert parse_overrides(args.update) == {"a": {"b": 1, "d": "x"}, "c": [1, 2]}
    assert parser.parse_args([]).update == []
    assert "detector config overrides, e.g. -u epochs=3" in " ".join(parser.format_help().split())
