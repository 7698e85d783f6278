"""Run logging: rank 0 reports to the console and OUTPUT_DIR/train.log, other ranks warnings only."""

from __future__ import annotations

import logging
from pathlib import Path

from rtdetr_spartan.misc.logger import LOG_FILE_NAME, close_logging, setup_logging


def test_rank0_writes_the_log_file(tmp_path: Path) -> None:
    before = logging.getLogger().level
    try:
        root = setup_logging(tmp_path)
        setup_logging(tmp_path)  # a second call replaces, not duplicates, the handlers
        logging.getLogger("rtdetr_spartan.test").info("hello %d", 1)
        logging.getLogger("rtdetr_spartan.test").debug("hidden")
        assert root.level == logging.INFO
    finally:
        close_logging()
    lines = (tmp_path / LOG_FILE_NAME).read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["hello 1"]
    assert logging.getLogger().level == before
    assert not [h for h in logging.getLogger().handlers if str(tmp_path) in str(getattr(h, "baseFilename", ""))]


def test_other_ranks_only_warn_and_write_no_file(tmp_path: Path) -> None:
    try:
        root = setup_logging(tmp_path, rank=1)
        assert root.level == logging.WARNING
    finally:
        close_logging()
    assert not (tmp_path / LOG_FILE_NAME).exists()
