"""Config workspace: registry, YAML loading with includes and overrides, pure object building.

core knows no other package: the names a config builds are registered by importing the package
(``rtdetr_spartan/__init__.py`` imports every registering subpackage).
"""

from rtdetr_spartan.core.registry import lookup, register, registered_names
from rtdetr_spartan.core.workspace import ConfigError, create
from rtdetr_spartan.core.yaml_config import YAMLConfig
from rtdetr_spartan.core.yaml_utils import add_overrides_argument, load_yaml, merge_dict, parse_overrides

__all__ = [
    "ConfigError",
    "add_overrides_argument",
    "YAMLConfig",
    "create",
    "load_yaml",
    "lookup",
    "merge_dict",
    "parse_overrides",
    "register",
    "registered_names",
]
