"""Launched by tests/base/test_main_process.py under `accelerate launch`: each process writes
`<folder>/<rank>.json` with kadapter's answer to "which process is this?" beside Accelerate's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import PartialState

from kadapter_cli.processes import end_processes, exit_now, is_main_process, process_count, process_index

state = PartialState(cpu=True)  # joins the processes, as a stage's Accelerator does
(Path(sys.argv[1]) / f"{state.process_index}.json").write_text(json.dumps({
    "kadapter_index": process_index(), "kadapter_main": is_main_process(), "kadapter_processes": process_count(),
    "accelerate_index": state.process_index, "accelerate_main": state.is_main_process,
    "accelerate_processes": state.num_processes}))
state.wait_for_everyone()
if end_processes():  # leave the process group as the CLI does, or the interpreter's teardown may abort
    exit_now(0)
