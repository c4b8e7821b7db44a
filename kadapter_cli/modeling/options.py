"""The model's choices and their defaults, torch-free: the modules that build the model use them,
and the command layer's flags take their defaults from here without importing torch (`--help`)."""

FUSION_MODES = ("concat", "add", "gated")
DEFAULT_FUSION = "concat"  # the paper's

# microsoft/K-Adapter's released checkpoints: the tap layers of its pretraining and fine-tuning
# scripts (not stored in the checkpoints), and the adapter names they are imported under (their kinds).
ORIGINAL_TAPS = (0, 11, 22)
ORIGINAL_NAMES = {"fac": "fac", "lin": "lin"}

# Adapters mask padded positions out of attention; the original's attend to them (`mask_padding=False`).
MASK_PADDING = True
