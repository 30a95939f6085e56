"""`cifar10 preprocess`: archive -> data/prepared/{train,val,test}.safetensors and meta.json."""

from __future__ import annotations

import logging

from pipeline.data import preprocess
from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    note_overrides_unknown_to_dvc,
    read_params,
    run_as_script,
    stage_lock,
    user_errors,
)
from stages.paths import PREPARED, RAW_ARCHIVE

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Parse the archive into uint8 tensors, hold out a stratified validation split, compute mean/std."""
    with user_errors():
        params = read_params(params_file, overrides)
        with stage_lock("preprocess"):
            meta = preprocess(RAW_ARCHIVE, params.preprocess, PREPARED)
        counts = ", ".join(f"{name} {count}" for name, count in meta["counts"].items())
        logger.info("wrote %s: %s images", PREPARED, counts)
        note_overrides_unknown_to_dvc(params_file, overrides)


if __name__ == "__main__":
    run_as_script(command)
