"""Defaults of the public encoding calls, torch-free: `kadapter encode`'s flags take them from here."""

ENCODE_POOL = "cls"  # one vector per text for a features file: the first token's
ENCODE_BATCH_SIZE = 32  # texts per batch (the features do not depend on it)
