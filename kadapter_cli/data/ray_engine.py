"""`--engine ray`: the data stages (`parse`, `prepare-trex`) as Ray Data jobs, here or on a cluster.

A stage cuts its work into small items (a segment of input lines or CoNLL-U sentences, a dump
file) and Ray Data maps a worker over them with `map_batches`: a pool of actors when the worker
holds state (a parser, loaded once per actor), a pool of tasks otherwise. Every output row carries
the position of its input, because Ray Data does not keep order: the driver (this process) puts the
rows back in input order (`Reorder`) and writes the artifact with the same code as the local run,
so both give the same bytes. Nothing holds the whole corpus: the items are small descriptions of
the input, the workers read their part of the files themselves, and Ray Data streams the outputs.

A worker process that dies (killed, out of memory, a lost node) has its items run again: actors
are restarted and their calls retried, tasks retried, `RayOptions.max_retries` times each. The
`Ledger` counts the items started more than once, for the manifest. Ray is imported only here, and
only when a stage runs with `engine="ray"` (`pip install 'kadapter[ray]'`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from kadapter_cli.errors import BadInput, BadParameter, ParamText

ENGINES = ("local", "ray")
DEFAULT_ENGINE = "local"
INSTALL_HINT = "pip install 'kadapter[ray]'"
# Testing hook: a worker kills its own process (SIGKILL) right after its first output, once for the
# whole job (the first worker to create this marker file): how the tests kill a worker mid-run.
KILL_ONCE_ENV = "KADAPTER_RAY_KILL_ONCE"


@dataclass
class RayOptions:
    """How a stage runs on Ray (`engine="ray"`)."""

    address: str | None = None  # an existing cluster ("auto", "host:port"); None: a new local instance
    num_gpus_per_worker: float = 0.0  # GPUs each worker reserves; fractions share a GPU
    verbose: bool = False  # Ray's own per-operator progress bars and logs
    max_retries: int = 3  # times an item runs again after its worker died


def check_engine(engine: str, options: RayOptions | None, shard: tuple[int, int] | None) -> RayOptions:
    """The Ray options to use; `BadParameter` for an unknown engine or Ray options without `engine="ray"`."""
    if engine not in ENGINES:
        raise BadParameter("{engine} must be one of {engines}, got {value!r}", engine, engines=", ".join(ENGINES))
    options = options or RayOptions()
    if engine != "ray":
        if options.address is not None:
            raise BadParameter("{address} needs {engine:ray}", options.address)
        if options.num_gpus_per_worker:
            raise BadParameter("{num_gpus_per_worker} needs {engine:ray}", options.num_gpus_per_worker)
        return options
    _import_ray()
    if shard is not None:
        raise BadParameter("{shard} splits a job into runs you start yourself; {engine:ray} runs it whole: "
                           "use one or the other", shard)
    if (options.address or "").startswith("ray://"):  # Ray Data's executor needs a driver on a node of the cluster
        raise BadParameter(
            "{address:{value}}: Ray Data does not run through Ray Client (ray://): run this on a node of the "
            "cluster with {address:auto} (by hand, or as a Ray job: ray job submit)", options.address)
    if options.num_gpus_per_worker < 0:
        raise BadParameter("{num_gpus_per_worker} must be 0 or more, got {value}", options.num_gpus_per_worker)
    if options.max_retries < 0:
        raise BadParameter("{max_retries} must be 0 or more, got {value}", options.max_retries)
    return options


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BadInput(ParamText("{engine:ray}: the ray package is not installed; {hint}", hint=INSTALL_HINT)) from None
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[dict[str, Any]]:
    """Ray, connected: the caller's connection when this process already has one, else a new local
    instance on this machine's cores (shut down at the end), or the cluster at `options.address`.
    Yields a description of it for the manifest. Ray's own progress bars and logs stay quiet unless
    `options.verbose`."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"log_to_driver": options.verbose,
                                  "logging_level": logging.INFO if options.verbose else logging.ERROR}
        if options.address is None:
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=options.address or "local", **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            if options.address is None:
                raise BadInput(ParamText("{engine:ray}: cannot start a local Ray instance ({error})", error=e)) from None
            raise BadParameter("{address:{value}}: cannot connect to a Ray cluster ({error})", options.address,
                               error=e) from None
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.enable_operator_progress_bars
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    context.enable_progress_bars = context.enable_operator_progress_bars = options.verbose
    progress_logger = logging.getLogger("ray.data._internal.progress")
    quiet_filter = _NotOffMessage()
    if not options.verbose:
        data_logger.setLevel(logging.WARNING)  # not the INFO lines on each execution's start and end
        progress_logger.addFilter(quiet_filter)
    try:
        yield {"address": (options.address or "local") if started else "connected",
               "cpus": int(ray.cluster_resources().get("CPU", 0)),
               "gpus": float(ray.cluster_resources().get("GPU", 0))}
    finally:
        context.enable_progress_bars, context.enable_operator_progress_bars = saved
        data_logger.setLevel(saved_level)
        progress_logger.removeFilter(quiet_filter)
        if started:
            ray.shutdown()


class _NotOffMessage(logging.Filter):
    """Drops Ray Data's warning that its progress bars are off: kadapter turned them off, and shows its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "progress_bars = True" not in record.getMessage()


class Ledger:
    """A tiny actor (no CPU) that counts how often each item was started: an item started twice was
    retried after its worker died."""

    def __init__(self) -> None:
        self.starts: dict[Any, int] = {}

    def started(self, key: Any) -> None:
        self.starts[key] = self.starts.get(key, 0) + 1

    def retried(self) -> int:
        return sum(n - 1 for n in self.starts.values())


@dataclass
class WorkerHooks:
    """What every worker calls: `started(key)` when it starts an item, `produced()` after each output."""

    ledger: Any = None  # a Ledger actor handle
    kill_once: str | None = None  # KILL_ONCE_ENV's marker file

    def started(self, key: Any) -> None:
        import ray

        try:
            ray.get(self.ledger.started.remote(key))
        except ray.exceptions.RayActorError:  # the ledger is lost: a count missing, not a reason to fail the job
            pass

    def produced(self) -> None:
        if self.kill_once is None:
            return
        try:
            os.close(os.open(self.kill_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def block_count(items: int, workers: int) -> int:
    """Blocks to cut `items` into: a multiple of the pool, so that no worker idles while others
    finish the last blocks, and as many as there are items (the smallest blocks) within that."""
    return max(items, 1) if items <= workers else workers * (items // workers)


def map_items(items: Sequence[dict], worker: Callable | type, *, workers: int, options: RayOptions,
              kwargs: dict[str, Any], stats: dict[str, Any]) -> Iterator[dict]:
    """Runs `worker` over `items`, one item a call, and yields its output batches (dicts of numpy
    arrays) as they come, in no particular order.

    `worker` is a class (a pool of `workers` actors, built with `kwargs`) or a function (a pool of
    `workers` tasks, called with `kwargs`); either way it also gets `hooks` (`WorkerHooks`). Fills
    `stats` with the pool, the blocks and the retries. A `BadInput` raised in a worker is raised
    here as it was.
    """
    ray = _import_ray()
    pool = max(1, min(workers, len(items)))
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node, which lives as long as the job does
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    ledger = ray.remote(num_cpus=0, scheduling_strategy=here)(Ledger).remote()
    hooks = WorkerHooks(ledger, os.environ.get(KILL_ONCE_ENV) or None)
    blocks = block_count(len(items), pool)
    actors = inspect.isclass(worker)
    args: dict[str, Any] = {
        "batch_size": 1,  # explicit, as GPU workers need: one item (a segment, a file) a call
        "batch_format": "numpy",
        "compute": ray.data.ActorPoolStrategy(size=pool) if actors else ray.data.TaskPoolStrategy(size=pool),
        "num_gpus": options.num_gpus_per_worker or None,
        ("fn_constructor_kwargs" if actors else "fn_kwargs"): {**kwargs, "hooks": hooks},
    }
    retries = ({"max_restarts": options.max_retries, "max_task_retries": options.max_retries} if actors
               else {"max_retries": options.max_retries})
    stats.update(workers=pool, blocks=blocks, num_gpus_per_worker=options.num_gpus_per_worker)
    dataset = ray.data.from_items(list(items), override_num_blocks=blocks)
    dataset = _map_batches(dataset, worker, args, retries)
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        yield from _unwrapped(batches)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the job when the caller stopped early (a bad record, --limit)
        stats["retries"] = ray.get(ledger.retried.remote())
        ray.kill(ledger)


def _map_batches(dataset, worker, args: dict[str, Any], retries: dict[str, Any]):
    """`dataset.map_batches(worker, **args)` with the retry budget. Ray ≥ 2.60 warns that these
    remote arguments will go (keeping its own default: retry actors forever), and a Ray without them
    gets that default: the driver's Ray must match the cluster's, so no upper bound is pinned."""
    import warnings

    accepts_remote_args = any(p.kind is inspect.Parameter.VAR_KEYWORD
                              for p in inspect.signature(dataset.map_batches).parameters.values())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return dataset.map_batches(worker, **args, **(retries if accepts_remote_args else {}))


def _unwrapped(batches: Iterator[dict]) -> Iterator[dict]:
    """The batches; a worker's `BadInput`, which Ray wraps in its own errors, is raised bare."""
    try:
        yield from batches
    except Exception as e:
        cause = _bad_input_in(e)
        if cause is None:
            raise
        raise BadInput(str(cause)) from None


def _bad_input_in(error: BaseException | None) -> BadInput | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, BadInput):
            return error
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


class Reorder:
    """Rows keyed 0, 1, 2, ... arriving in any order, and perhaps twice (a retried item) → in key
    order, each once. Holds only the rows that arrived ahead of their turn."""

    def __init__(self) -> None:
        self.next = 0
        self.pending: dict[int, Any] = {}

    def push(self, key: int, row: Any) -> Iterator[Any]:
        if key < self.next or key in self.pending:
            return
        self.pending[key] = row
        while self.next in self.pending:
            yield self.pending.pop(self.next)
            self.next += 1


def error_fields(error: BadInput) -> list:
    """A `BadInput` as plain values, to travel in an output row; `raise_error` raises it again."""
    return [error.message, error.path, error.record]


def raise_error(fields: Sequence) -> None:
    message, path, record = fields
    raise BadInput(message, path, record)
