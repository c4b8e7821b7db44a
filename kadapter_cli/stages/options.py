"""Defaults of the stages' own options, torch-free: the stages use them, and the command layer's
flags (and `kadapter run`'s default paths) take them from here without importing torch (`--help`)."""

LIN_HEADS = ("pointer", "original")  # the lin adapter's pretraining head: biaffine pointer, or the original's
DEFAULT_LIN_HEAD = "pointer"

EVAL_SPLIT = "test"  # the split `evaluate` scores
EVAL_BATCH_SIZE = 32  # examples per batch of evaluate and predict

LAMA_TOP_K = 10  # predicted tokens kept per fact in the LAMA predictions files
LAMA_BATCH_SIZE = 64  # LAMA queries per batch
