"""Pipelines: stages of kadapter commands in a YAML file, variables, and the lock file that skips
unchanged stages."""
