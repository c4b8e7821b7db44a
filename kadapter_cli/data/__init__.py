"""Data preparation and encoding: T-REx, dependency parsing, LAMA facts, the probe corpus, and
records → sub-token ids (markers, segments, padding)."""
