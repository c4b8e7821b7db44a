"""Artifacts: the self-describing folders stages write and later stages read (files, manifests,
atomic outputs, where they live in a workdir, model cards)."""
