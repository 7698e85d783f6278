"""Config workspace: registry, YAML loading with includes and overrides, pure object building."""

from rtdetr_spartan.core.registry import lookup, register, registered_names
from rtdetr_spartan.core.workspace import ConfigError, create
from rtdetr_spartan.core.yaml_config import YAMLConfig, import_registered_modules
from rtdetr_spartan.core.yaml_utils import load_yaml, merge_dict, parse_overrides

__all__ = [
    "ConfigError",
    "YAMLConfig",
    "create",
    "import_registered_modules",
    "load_yaml",
    "lookup",
    "merge_dict",
    "parse_overrides",
    "register",
    "registered_names",
]
