"""`Task.read_records`: records given in memory are read as a file holding them is (docs/python-api.md), so
`KAdapterForTask.predict(records)` and `kadapter predict FILE` see the same records."""

from __future__ import annotations

import json

import pytest

from kadapter_cli.errors import BadInput
from kadapter_cli.tasks import TASKS, get_task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_in_memory_records_read_as_a_file_of_them(name, tmp_path):
    task = get_task(name)
    records = task.example_records
    assert records, f"task {name} shows no example record"
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    assert task.read_records(records, labeled=False) == get_task(name).read(path, labeled=False)


def test_a_bad_record_names_its_index():
    with pytest.raises(BadInput) as error:
        get_task("openentity").read_records([{"sent": "Paris .", "start": 0, "end": 5}, {"sent": "x"}], labeled=False)
    assert str(error.value).startswith("<records>, record 1 (counted from 0):")
    with pytest.raises(BadInput, match="no records"):
        get_task("tacred").read_records([], labeled=False)
