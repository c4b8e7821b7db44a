"""Untrusted files run no one's code; a full disk or memory fails clearly (exit 2, one line).

- The code reads weights only through safetensors or `torch.load(weights_only=True)` and YAML
  only through `safe_load`: checked on the source itself, so a later change cannot slip one in.
- A `pytorch_model.bin` whose unpickling would run code is refused by `import-original`, and the
  code does not run (its marker file never appears).
- A full disk (ENOSPC) is exit 2 naming the output, which is left absent; running out of memory
  in training names the options to lower.
"""

from __future__ import annotations

import ast
import errno
import json
import os
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kadapter_cli"
CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"


# ---------------------------------------------------------------- the code itself


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, owner, name


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def unsafe_loads(source: str) -> list[str]:
    """Calls in `source` that could run code from a file: pickle, unsafe torch.load, unsafe YAML."""
    found = []
    for node, owner, name in _calls(ast.parse(source)):
        where = f"line {node.lineno}: {owner + '.' if owner else ''}{name}"
        if owner in ("pickle", "cPickle", "dill", "joblib", "marshal") and name in ("load", "loads", "Unpickler"):
            found.append(where)
        elif owner == "torch" and name == "load":
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(where + " without weights_only=True")
        elif owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load", "unsafe_load_all"):
            loader = _keyword(node, "Loader")
            if not (isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")):
                found.append(where + " without a safe Loader")
        elif owner in ("np", "numpy") and name == "load":
            flag = _keyword(node, "allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(where + " with allow_pickle=True")
        elif name in ("eval", "exec") and isinstance(node.func, ast.Name):
            found.append(where)
    return found


def test_the_checker_catches_each_unsafe_load():
    """The source check below can fail: each unsafe form is flagged, each safe one is not."""
    unsafe = ("import pickle, torch, yaml, numpy as np\n"
              "pickle.load(f)\npickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
              "yaml.load(t)\nyaml.load(t, Loader=yaml.FullLoader)\nyaml.unsafe_load(t)\n"
              "np.load(p, allow_pickle=True)\neval(s)\n")
    assert len(unsafe_loads(unsafe)) == 9
    safe = ("torch.load(p, map_location='cpu', weights_only=True)\nyaml.safe_load(t)\n"
            "yaml.load(t, Loader=yaml.SafeLoader)\njson.load(f)\nnp.load(p)\n")
    assert unsafe_loads(safe) == []


def test_the_package_has_no_unsafe_loads():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        problems = unsafe_loads(path.read_text(encoding="utf-8"))
        if problems:
            found[str(path.relative_to(PACKAGE.parent))] = problems
    assert found == {}


# ---------------------------------------------------------------- a checkpoint that would run code


class _RunsCode:
    """Unpickling this object calls `open(marker, "w")`: what an attack would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(params=["zip", "legacy"])
def evil_checkpoint(request, tmp_path) -> tuple[Path, Path]:
    """A `pytorch_model.bin` (zip or legacy pickle format) that would create `marker` when loaded."""
    import torch

    marker = tmp_path / "code-ran"
    state = {"adapter.0.down_project.weight": torch.zeros(2, 2), "payload": _RunsCode(marker)}
    path = tmp_path / "evil" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save(state, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, marker


def test_the_evil_checkpoint_really_runs_code_when_unpickled(evil_checkpoint):
    """The payload is live (so the refusal below means something): unpickling it as torch did
    before 2.6 creates the marker. The payload only opens a file under the test's tmp folder."""
    import torch

    path, marker = evil_checkpoint
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_import_original_refuses_a_checkpoint_that_would_run_code(evil_checkpoint, cli):
    path, marker = evil_checkpoint
    result = cli("import-original", "--fac", path)
    assert result.exit_code == 2, result.stderr
    assert f"error: {path}: refused to load" in result.stderr
    assert "Unsupported global: GLOBAL io.open" in result.stderr  # what was refused
    assert "weights_only` set to `False`" not in result.stderr  # and no advice to load it unsafely
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (cli.workdir / "adapters" / "fac").exists()


def test_import_original_refuses_a_file_that_is_not_a_checkpoint(cli, tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"<html>404 Not Found</html>")
    result = cli("import-original", "--fac", path)
    assert result.exit_code == 2
    assert f"error: {path}: not a PyTorch checkpoint" in result.stderr


def test_yaml_that_would_build_python_objects_is_refused(cli, tmp_path):
    """`!!python/object/apply` in a --config or pipeline file is not executed (safe_load)."""
    marker = tmp_path / "code-ran"
    payload = f"!!python/object/apply:builtins.open ['{marker}', 'w']"
    config = tmp_path / "evil.yaml"
    config.write_text(f"epochs: {payload}\n")
    result = cli("train-adapter", "--kind", "fac", "--config", config)
    assert result.exit_code == 2 and "malformed YAML" in result.stderr and str(config) in result.stderr
    pipeline = tmp_path / "evil-pipeline.yaml"
    pipeline.write_text(f"stages:\n  - name: a\n    command: parse\n    options:\n      seed: {payload}\n")
    result = cli("run", pipeline)
    assert result.exit_code == 2 and "malformed YAML" in result.stderr
    assert not marker.exists()


# ---------------------------------------------------------------- disk full


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_scratch_left(parent: Path, name: str) -> bool:
    return not [p for p in parent.glob(f".{name}*") if not p.name.endswith(".lock")]


def test_prepare_trex_out_of_disk_fails_clearly_and_leaves_no_output(cli, monkeypatch, tmp_path):
    import kadapter_cli.data.trex as trex

    monkeypatch.setattr(trex, "write_json", _enospc)  # relations.json, the last data file written
    result = cli("prepare-trex", CORPUS / "trex" / "good.json", "--min-count", "1")
    out = cli.workdir / "trex-rc"
    assert result.exit_code == 2, result.stderr
    assert f"error: {out}: no space left on device while writing it" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert _no_scratch_left(cli.workdir, "trex-rc")


def test_parse_out_of_disk_fails_clearly_and_leaves_no_output(cli, monkeypatch):
    import kadapter_cli.data.parsing as parsing

    monkeypatch.setattr(parsing, "write_manifest", _enospc)
    result = cli("parse", CORPUS / "conllu" / "good.conllu", "--parser", "conllu")
    out = cli.workdir / "parsed"
    assert result.exit_code == 2, result.stderr
    assert f"error: {out}: no space left on device while writing it (nothing was written there" in result.stderr
    assert not out.exists()
    assert _no_scratch_left(cli.workdir, "parsed")


def test_disk_full_outside_an_artifact_names_the_file(cli, monkeypatch, tmp_path):
    """A write outside `atomic_output` (here `convert figer-raw`'s file) still gives exit 2, not a bug report."""
    import kadapter_cli.tasks.figer as figer

    target = tmp_path / "figer" / "test.json"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(figer.os, "fsync", full)
    result = cli("convert", "figer-raw", CORPUS / "figer-raw" / "good.label", target)
    assert result.exit_code == 2, result.stderr
    assert f"error: no space left on device while writing {target}" in result.stderr
    assert "internal error" not in result.stderr
    assert not target.exists()
    assert not list(target.parent.glob(".*"))


# ---------------------------------------------------------------- training: disk full, out of memory


def _trex_rc(tmp_path: Path) -> Path:
    """A tiny `trex-rc/` artifact (two relations, a dozen examples)."""
    folder = tmp_path / "trex-rc"
    folder.mkdir()
    rows = []
    for i in range(12):
        relation = "P17" if i % 2 else "P131"
        rows.append({"id": f"d{i}", "docid": f"d{i}", "tokens": ["Paris", "is", "in", "France", str(i)],
                     "subj_start": 0, "subj_end": 0, "obj_start": 3, "obj_end": 3, "relation": relation,
                     "subj_label": "Q90", "obj_label": "Q142"})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[10:]))
    (folder / "relations.json").write_text(json.dumps(["P131", "P17"]))
    return folder


TRAIN_FAST = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu",
              "--cache-features", "off", "--save-every", "1", "--adapter-layers", "1")


def test_training_out_of_memory_names_the_options_to_lower(cli, monkeypatch, tmp_path, tiny_backbone):
    import torch

    from kadapter_cli.training.objectives import RelationObjective

    def oom(self, model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(RelationObjective, "loss", oom)
    result = cli("train-adapter", "--kind", "fac", "--data", _trex_rc(tmp_path), "--backbone", tiny_backbone,
                 *TRAIN_FAST)
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: out of memory during training step 1 (batch of 4 examples")
    for option in ("--batch-size", "--max-length", "--cache-budget"):
        assert option in line
    assert "Traceback" not in result.stderr
    assert not (cli.workdir / "adapters" / "fac").exists()


def test_training_out_of_disk_keeps_its_checkpoints_for_resume(cli, monkeypatch, tmp_path, tiny_backbone):
    """Disk full while saving the adapter at the end: exit 2, no adapter folder, and `--resume`
    (with space again) finishes from the kept checkpoint."""
    import kadapter_cli.stages.pretrain as pretrain

    data = _trex_rc(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(pretrain, "save_adapter", _enospc)
        result = cli("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, *TRAIN_FAST)
    out = cli.workdir / "adapters" / "fac"
    assert result.exit_code == 2, result.stderr
    assert f"error: {out}: no space left on device while writing it" in result.stderr
    assert "rerun with --resume" in result.stderr
    assert not out.exists()
    partial = out.parent / ".fac.partial"
    assert sorted(p.name for p in (partial / "checkpoints").iterdir())[-1] == "step-2"
    result = cli("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, *TRAIN_FAST,
                 "--resume")
    assert result.exit_code == 0, result.stderr
    assert "training already complete at step 2" in result.stderr
    from kadapter_cli.artifacts.manifest import verify_files

    verify_files(out)
    assert not partial.exists()
