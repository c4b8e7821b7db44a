"""Experiment tracking (`--report-to tensorboard|wandb|mlflow|aim|all|none`) through Accelerate's
tracker API: the loop hands its log lines and dev metrics to `RunTracker`, which hands them to the
trackers Accelerate runs (on the main process only).

What a run sends: at every `train_log.jsonl` line, `train/loss`, `train/lr`, `train/grad_norm`,
`train/examples_per_s`, `train/tokens_per_s`, `train/mfu` (on GPUs whose peak is known) and the
rest of the line; at every dev evaluation, `dev/<metric>`; at the start, the effective
configuration as hyper-parameters.

The trackers write under `<artifact>/tracking/` unless `--tracking-dir` says otherwise: while the
run trains that is inside the artifact's hidden `.partial` folder, so the tracker's files arrive
with the artifact, atomically, and are listed in its manifest. Tracking never changes what a run
computes: every tracker call runs with the RNG states saved and restored around it, and a resumed
run continues the same tracker run (TensorBoard purges the steps after the checkpoint; wandb and
MLflow reopen the run whose id the first start recorded).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

from kadapter_cli.errors import BadParameter
from kadapter_cli.processes import is_main_process

TRACKERS = ("tensorboard", "wandb", "mlflow", "aim")
# The module each tracker needs (tensorboard: torch's SummaryWriter writes the files, the
# tensorboard package provides the format).
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim"}
TRACKING_DIR = "tracking"
PROJECT = "kadapter"
_RUN_IDS = "run-ids.json"  # tracker run ids of this artifact, so that --resume reopens the same runs
INSTALL_HINT = "pip install kadapter[tracking]"


def tracking_location(config, run_dir: Path) -> tuple[str, Path]:
    """`(run name, tracker folder)`: `--run-name` or the artifact's name; `--tracking-dir` or
    `<artifact>/tracking` (inside the artifact's `.partial` folder while it trains)."""
    name = run_dir.name
    if name.startswith(".") and name.endswith(".partial"):
        name = name[1:-len(".partial")]
    folder = Path(config.tracking_dir) if config.tracking_dir else run_dir / TRACKING_DIR
    return config.run_name or name, folder


def is_installed(tracker: str) -> bool:
    return importlib.util.find_spec(_MODULES[tracker]) is not None


def parse_report_to(value: str | None) -> list[str]:
    """`--report-to` → tracker names: `none`, `all` (every installed one), or a comma-separated list.

    `BadInput` for an unknown name, and for a tracker whose package is missing (naming the extra).
    """
    names = [v.strip().lower() for v in (value or "none").split(",") if v.strip()]
    if not names or names == ["none"]:
        return []
    if names == ["all"]:
        installed = [t for t in TRACKERS if is_installed(t)]
        if not installed:
            raise BadParameter("{report_to:{value}}: none of {trackers} is installed; {hint}", value,
                               trackers=", ".join(TRACKERS), hint=INSTALL_HINT)
        return installed
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise BadParameter("{report_to:{value}}: unknown tracker {unknown!r} (choose from {trackers}, all, none)",
                           value, unknown=unknown[0], trackers=", ".join(TRACKERS))
    missing = [n for n in names if not is_installed(n)]
    if missing:
        raise BadParameter("{report_to:{missing}}: the {package} package is not installed; {hint}", value,
                           missing=missing[0], package=_MODULES[missing[0]], hint=INSTALL_HINT)
    return list(dict.fromkeys(names))


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A flat mapping trackers accept (str, int, float, bool): nested keys dotted, lists joined."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(str(v) for v in value)
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = "none" if value is None else value
        else:
            flat[name] = str(value)
    return flat


def scalars(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of a log record, under `prefix/` (booleans and nested values left out)."""
    return {f"{prefix}/{k}": float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Runs a block with every RNG state (torch, CUDA, Python, NumPy) restored after it."""
    from kadapter_cli.training.rng import rng_state, set_rng_state

    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


class RunTracker:
    """The trackers of one `train()` call. With `--report-to none` every method does nothing."""

    def __init__(self, report_to: str | None, run_name: str, tracking_dir: Path, hparams: dict[str, Any],
                 resume_step: int | None):
        self.names = parse_report_to(report_to)
        self.run_name = run_name
        self.dir = Path(tracking_dir)
        self.hparams = hyperparameters(hparams)
        self.accelerator = None
        self.resumed = resume_step is not None
        self._ids = self._read_ids() if self.resumed else {}
        if "wandb" in self.names and not self._ids.get("wandb"):
            self._ids["wandb"] = secrets.token_hex(4)  # not `random`: a tracker must not move the run's RNG
        self.trackers = [self._make(name, resume_step) for name in self.names]
        self.is_main = False

    def _make(self, name: str, resume_step: int | None):
        from accelerate import tracking

        if name == "tensorboard":
            # Steps after the checkpoint were logged by the interrupted run and will be logged again.
            purge = {} if resume_step is None else {"purge_step": resume_step + 1}
            return tracking.TensorBoardTracker(self.run_name, self.dir, **purge)
        if name == "wandb":
            return tracking.WandBTracker(PROJECT, name=self.run_name, dir=str(self.dir), id=self._ids["wandb"],
                                         resume="allow")
        if name == "mlflow":
            return tracking.MLflowTracker(PROJECT, str(self.dir / "mlflow-artifacts"), run_id=self._ids.get("mlflow"),
                                          run_name=self.run_name)
        return tracking.AimTracker(self.run_name, str(self.dir))

    def start(self, accelerator) -> None:
        """Opens the tracker runs and stores the hyper-parameters (after Accelerate holds the trackers)."""
        self.accelerator = accelerator
        self.is_main = is_main_process()
        if not self.trackers:
            return
        with preserved_rng():
            if self.is_main:
                self.dir.mkdir(parents=True, exist_ok=True)
            if "mlflow" in self.names and not os.environ.get("MLFLOW_TRACKING_URI"):
                import mlflow

                # A local file store in the tracker folder (MLflow 3 asks for an opt-in to it); a
                # server or database given in MLFLOW_TRACKING_URI wins.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri(self.dir.resolve().as_uri())
            try:
                accelerator.init_trackers(PROJECT)
            except Exception as e:  # noqa: BLE001 - a tracker's own failure (no network, bad URI) is the user's to fix
                self._close_started()
                hint = "; wandb without network needs WANDB_MODE=offline" if "wandb" in self.names else ""
                reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise BadParameter("{report_to:{value}}: a tracker did not start ({error}: {reason}){hint}",
                                   ",".join(self.names), error=type(e).__name__, reason=reason, hint=hint) from e
            for tracker in accelerator.trackers:
                # MLflow refuses to store a parameter twice: a reopened run keeps its first start's.
                if not (self.resumed and tracker.name == "mlflow"):
                    tracker.store_init_configuration(self.hparams)
            mlflow_tracker = next((t for t in self.trackers if t.name == "mlflow"), None)
            if self.is_main and mlflow_tracker is not None:
                self._ids["mlflow"] = mlflow_tracker.active_run.info.run_id
            if self.is_main and self._ids:
                (self.dir / _RUN_IDS).write_text(json.dumps(self._ids, indent=2) + "\n", encoding="utf-8")

    def log_train(self, record: dict[str, Any], step: int) -> None:
        self._log(scalars({k: v for k, v in record.items() if k != "step"}, "train"), step)

    def log_dev(self, metrics: dict[str, Any], step: int) -> None:
        self._log(scalars(metrics, "dev"), step)

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.trackers and self.accelerator is not None and values:
            with preserved_rng():
                self.accelerator.log(values, step=step)

    def finish(self) -> None:
        """Closes every tracker run (files complete before the artifact's manifest is written).

        Not `Accelerator.end_training()`: that also ends the process group, which evaluation after
        training still needs under several processes.
        """
        if self.accelerator is None:
            return
        with preserved_rng():
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers = []
        self.accelerator = None

    def _close_started(self) -> None:
        """After a failed start: closes the trackers that did start, ignoring those that did not."""
        for tracker in self.accelerator.trackers:
            try:
                tracker.finish()
            except Exception:  # noqa: BLE001 - never started: nothing to close
                pass
        self.accelerator.trackers = []
        self.accelerator = None

    def _read_ids(self) -> dict[str, str]:
        try:
            return json.loads((self.dir / _RUN_IDS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
