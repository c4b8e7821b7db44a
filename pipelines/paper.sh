#!/usr/bin/env bash
# The paper's full recipe (pipelines/paper.yaml) on one GPU, from data you already have.
#
#   TREX_DUMPS=/data/trex LIN_CORPUS=/data/bookcorpus-1m.txt TASKS=/data/tasks pipelines/paper.sh
#   pipelines/paper.sh --dry-run            # what would run and why (nothing is read or written)
#   pipelines/paper.sh --only train-fac     # one stage; finished stages are skipped anyway
#
# TREX_DUMPS  folder of T-REx JSON dumps (re-nlg_*.json[.gz])
# LIN_CORPUS  text file or folder, one sentence a line, for the lin adapter (parsed with Stanza)
# TASKS       folder holding openentity/, figer/ and tacred/, each with train.json, dev.json, test.json
# WORKDIR     where the artifacts go (default kadapter-work-paper; the lock file sits beside it)
# BACKBONE    Hugging Face id or local folder (default roberta-large)
#
# Extra arguments go to `kadapter run` (--dry-run, --force, --only STAGE, --set NAME=VALUE).
# The whole recipe is about a day on one H100; see the cost notes in paper.yaml.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${TREX_DUMPS:=data/trex}"
: "${LIN_CORPUS:=data/lin-corpus}"
: "${TASKS:=data/tasks}"
: "${WORKDIR:=kadapter-work-paper}"
: "${BACKBONE:=roberta-large}"

# `kadapter run` reads relative paths against the pipeline file's folder; these are the caller's.
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
TREX_DUMPS="$(abs "$TREX_DUMPS")"; LIN_CORPUS="$(abs "$LIN_CORPUS")"; TASKS="$(abs "$TASKS")"
WORKDIR="$(abs "$WORKDIR")"
if [ -e "$BACKBONE" ]; then BACKBONE="$(abs "$BACKBONE")"; fi  # a local folder, not a hub id

exec "${KADAPTER:-kadapter}" run "$here/paper.yaml" \
  --set "trex_dumps=$TREX_DUMPS" \
  --set "lin_corpus=$LIN_CORPUS" \
  --set "tasks=$TASKS" \
  --set "workdir=$WORKDIR" \
  --set "backbone=$BACKBONE" \
  "$@"
