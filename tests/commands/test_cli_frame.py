"""The CLI frame (global options, exit codes, error lines) and the artifacts module (manifests, atomic folders)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from kadapter_cli import __version__
from kadapter_cli.artifacts.io import iter_jsonl
from kadapter_cli.artifacts.layout import resolve_artifact
from kadapter_cli.artifacts.manifest import read_manifest, verify_files, write_manifest
from kadapter_cli.artifacts.output import atomic_output, partial_dir
from kadapter_cli.commands import _hoist_global_options
from kadapter_cli.errors import BadInput, OutputExists


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"kadapter {__version__}"


def test_console_script_help_and_version():
    exe = Path(sys.executable).parent / "kadapter"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"kadapter {__version__}"


def test_workdir_after_the_command_is_hoisted():
    assert _hoist_global_options(["inspect", "x", "--workdir", "W", "--json"]) == ["--workdir", "W", "inspect", "x", "--json"]
    assert _hoist_global_options(["run", "--debug", "p.yaml"]) == ["--debug", "run", "p.yaml"]
    assert _hoist_global_options(["run", "--", "--workdir"]) == ["run", "--", "--workdir"]


def _app_with(command):
    """A throwaway app with the real group class and callback, plus one command."""
    from kadapter_cli.commands import KadapterGroup, main_callback

    app = typer.Typer(cls=KadapterGroup, pretty_exceptions_enable=False)
    app.callback()(main_callback)
    app.command("boom")(command)
    return app


def test_bad_input_is_exit_2_with_one_line_and_no_traceback():
    from typer.testing import CliRunner

    def boom():
        raise BadInput("missing field 'sent'", "data/train.json", 7)

    result = CliRunner().invoke(_app_with(boom), ["boom"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: data/train.json, record 7 (counted from 0): missing field 'sent'"
    assert "Traceback" not in result.output


def test_internal_error_is_exit_1_and_debug_shows_traceback():
    from typer.testing import CliRunner

    def boom():
        raise ZeroDivisionError("division by zero")

    app = _app_with(boom)
    result = CliRunner().invoke(app, ["boom"])
    assert result.exit_code == 1
    assert "internal error: ZeroDivisionError" in result.stderr and "Traceback" not in result.stderr
    result = CliRunner().invoke(app, ["--debug", "boom"])
    assert result.exit_code == 1 and "Traceback" in result.stderr
    result = CliRunner(env={"KADAPTER_DEBUG": "1"}).invoke(app, ["boom"])
    assert "Traceback" in result.stderr


def test_atomic_output_refuses_existing_and_replaces_with_overwrite(tmp_path):
    final = tmp_path / "out"
    with atomic_output(final) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not final.exists()  # nothing visible until the block completes
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(OutputExists, match="overwrite=True"):
        with atomic_output(final):
            pass
    with atomic_output(final, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or lock left behind


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_resumable_output_keeps_partial_folder(tmp_path):
    final = tmp_path / "adapters" / "fac"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(final, resumable=True) as tmp:
            (tmp / "checkpoints").mkdir()
            raise KeyboardInterrupt
    assert partial_dir(final).joinpath("checkpoints").is_dir() and not final.exists()
    with atomic_output(final, resumable=True, resume=True) as tmp:
        assert (tmp / "checkpoints").is_dir()  # picked up again
    assert final.is_dir() and not partial_dir(final).exists()


def test_second_writer_is_refused(tmp_path):
    final = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(str(holder.pid))
        with pytest.raises(BadInput, match=f"pid {holder.pid}"):
            with atomic_output(final):
                pass
    finally:
        holder.kill()
        holder.wait()
    with atomic_output(final):  # the holder is gone: its stale lock no longer blocks
        pass


def test_manifest_round_trip_and_verification(tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"a": 1}\n')
    m = write_manifest(folder, "trex-rc", config={"seed": 42}, stats={"examples": 1}, command=["kadapter", "x"])
    assert set(m) == {"kind", "format_version", "kadapter_version", "created", "command", "config", "inputs", "files", "stats"}
    assert read_manifest(folder)["files"] == m["files"] and list(m["files"]) == ["train.jsonl"]
    verify_files(folder)
    (folder / "train.jsonl").write_text('{"a": 2}\n')
    with pytest.raises(BadInput, match="sha256 differs"):
        verify_files(folder)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(BadInput, match="no such artifact folder"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(BadInput, match="no manifest.json"):
        read_manifest(tmp_path)


def test_iter_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(BadInput) as e:
        list(iter_jsonl(path))
    assert str(e.value).startswith(f"{path}, line 3: malformed JSON")
    path.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(BadInput, match="UTF-8"):
        list(iter_jsonl(path))
    path.write_text("[1, 2]\n")
    with pytest.raises(BadInput, match="expected a JSON object"):
        list(iter_jsonl(path))


def test_resolve_artifact(tmp_path):
    assert resolve_artifact("fac", tmp_path, "adapters") == tmp_path / "adapters" / "fac"
    assert resolve_artifact("./fac", tmp_path, "adapters") == Path("./fac")
    assert resolve_artifact(str(tmp_path / "x"), "w", "adapters") == tmp_path / "x"


def test_merged_config_flags_override_file(tmp_path):
    from typer.testing import CliRunner

    from kadapter_cli.commands.common import merged_config

    seen = {}
    app = typer.Typer()

    @app.command()
    def train(
        ctx: typer.Context,
        epochs: int = typer.Option(3),
        lr: float = typer.Option(1e-5),
        seed: int = typer.Option(42),
        config: Path = typer.Option(None),
    ):
        seen.update(merged_config(ctx, config))

    @app.command()
    def other():  # a second command so `train` stays a named subcommand
        pass

    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 10\nlr: 0.001\n")
    result = CliRunner().invoke(app, ["train", "--config", str(cfg), "--lr", "0.5"])
    assert result.exit_code == 0, result.output
    assert seen == {"epochs": 10, "lr": 0.5, "seed": 42}
    cfg.write_text("epochz: 1\n")
    result = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert isinstance(result.exception, BadInput) and "unknown option 'epochz'" in str(result.exception)
