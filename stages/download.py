"""`cifar10 download`: fetch data.url to data/raw/, verified against data.sha256."""

from __future__ import annotations

import logging

from pipeline.download import archive_matches, download
from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    StageRun,
    run_as_script,
    say_how_to_record,
    stage_lock,
    user_errors,
)
from stages.paths import RAW_ARCHIVE

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Fetch the CIFAR-10 binary archive (https, http, file:// or a path) and verify its SHA-256
    (params `data`)."""
    with user_errors():
        run = StageRun("download", params_file, overrides)
        with stage_lock("download"):
            run.begin()
            if archive_matches(RAW_ARCHIVE, run.params.data.sha256):  # what was made from it stays
                logger.info("%s already matches data.sha256; skipping", RAW_ARCHIVE)
                return
            with run.writing():  # the archive appears at its path only once its hash matches
                download(run.params.data, RAW_ARCHIVE)
        say_how_to_record("download")


if __name__ == "__main__":
    run_as_script(command)
