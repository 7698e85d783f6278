from __future__ import annotations

import pytest

from rtdetr_spartan.core import ConfigError, create, register
from rtdetr_spartan.core.registry import lookup


@register()
class _WsLeaf:
    def __init__(self, size: int = 1, items: tuple[int, ...] = ()) -> None:
        self.size = size
        self.items = list(items)


@register()
class _WsShared:
    __share__ = ["num_classes"]

    def __init__(self, num_classes: int = 3, depth: int = 1) -> None:
        self.num_classes = num_classes
        self.depth = depth


@register()
class _WsParent:
    __inject__ = ["child", "other"]

    def __init__(self, child: object = None, other: object = None, scale: float = 1.0) -> None:
        self.child = child
        self.other = other
        self.scale = scale


@register()
def _ws_function(x: int) -> int:
    return x + 1


def test_build_by_name_uses_section():
    leaf = create("_WsLeaf", {"_WsLeaf": {"size": 4}})
    assert isinstance(leaf, _WsLeaf) and leaf.size == 4


def test_share_takes_top_level_value():
    built = create("_WsShared", {"num_classes": 7, "_WsShared": {"num_classes": 2, "depth": 5}})
    assert built.num_classes == 7 and built.depth == 5


def test_inject_by_name_and_by_typed_dict():
    cfg = {
        "_WsParent": {"child": "_WsLeaf", "other": {"type": "_WsShared", "depth": 9}},
        "_WsLeaf": {"size": 2},
        "_WsShared": {"depth": 1, "num_classes": 4},
    }
    parent = create("_WsParent", cfg)
    assert isinstance(parent.child, _WsLeaf) and parent.child.size == 2
    assert isinstance(parent.other, _WsShared) and parent.other.depth == 9 and parent.other.num_classes == 4


def test_registered_function_injected_as_itself():
    cfg = {"_WsParent": {"child": "_ws_function"}}
    assert create("_WsParent", cfg).child is _ws_function


def test_misspelled_argument_names_key_path():
    cfg = {"_WsParent": {"child": {"type": "_WsLeaf", "sise": 3}}}
    with pytest.raises(ConfigError, match=r"_WsParent\.child\.sise.*did you mean 'size'"):
        create("_WsParent", cfg)


def test_unknown_type_lists_close_names():
    with pytest.raises(ConfigError, match=r"_WsParent\.child.*no '_WsLeef'.*did you mean '_WsLeaf'"):
        create("_WsParent", {"_WsParent": {"child": "_WsLeef"}})


def test_injected_dict_without_type_is_an_error():
    with pytest.raises(ConfigError, match="needs a 'type'"):
        create("_WsParent", {"_WsParent": {"child": {"size": 1}}})


def test_building_is_pure_and_independent():
    cfg = {"_WsLeaf": {"size": 2, "items": [1, 2]}}
    first, second = create("_WsLeaf", cfg), create("_WsLeaf", cfg)
    first.items.append(3)
    assert second.items == [1, 2] and cfg == {"_WsLeaf": {"size": 2, "items": [1, 2]}}


def test_extra_runtime_arguments_win():
    assert create({"type": "_WsLeaf", "size": 1}, {}, size=5).size == 5


def test_duplicate_registration_rejected():
    class _WsLeaf:  # same name, other object
        pass

    with pytest.raises(KeyError, match="already registered"):
        register(_WsLeaf)
    assert lookup("_WsLeaf") is not _WsLeaf
