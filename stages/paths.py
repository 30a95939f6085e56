"""Where each stage reads and writes, relative to the repository root (where DVC runs commands).

dvc.yaml declares the same paths as deps and outs.
"""

from pathlib import Path

RAW_ARCHIVE = Path("data/raw/cifar-10-binary.tar.gz")
PREPARED = Path("data/prepared")
MODEL = Path("models/model.safetensors")
CHECKPOINT = Path("models/checkpoint/checkpoint.safetensors")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_LOG = Path("metrics/train_log.tsv")
EVAL_METRICS = Path("metrics/eval.json")
CONFUSION = Path("metrics/confusion.csv")
