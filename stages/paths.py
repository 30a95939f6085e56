"""Where each stage reads and writes, relative to the repository root (where DVC runs commands).

dvc.yaml declares the same paths as deps and outs, except the two folders of run state below,
which are git-ignored and which DVC neither caches nor removes.
"""

from pathlib import Path

RAW_ARCHIVE = Path("data/raw/cifar-10-binary.tar.gz")
PREPARED = Path("data/prepared")
MODEL = Path("models/model.safetensors")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_LOG = Path("metrics/train_log.tsv")
EVAL_METRICS = Path("metrics/eval.json")
CONFUSION = Path("metrics/confusion.csv")
PLOTS = Path("plots")  # PNG pictures of the run, written by `cifar10 plots`
CHECKPOINTS = Path("checkpoints")  # one file per interrupted run (params and data), for resuming
LOCKS = Path(".cifar10")  # one lock file per stage: one run of a stage at a time in this workspace
