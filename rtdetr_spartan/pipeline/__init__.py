"""End-to-end pipelines on generated data (``tools/quickstart.py``)."""

from rtdetr_spartan.pipeline.quickstart import SUMMARY_FILE, run_quickstart
from rtdetr_spartan.pipeline.settings import QuickstartSettings, default_settings, fast_settings

__all__ = ["SUMMARY_FILE", "QuickstartSettings", "default_settings", "fast_settings", "run_quickstart"]
