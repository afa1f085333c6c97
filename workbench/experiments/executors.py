"""Where shards are computed: in this process (``local``), or on Ray actors that each load the model once.

An executor takes the shards still to do and hands each finished one, as an Arrow table, to ``done``
(which writes it atomically); it never writes files itself, so resuming works the same for both.

``RayExecutor`` starts ``workers`` actors on a local Ray instance, or joins a running cluster
(``address="auto"`` or ``"ray://host:10001"``). With GPUs in the cluster each actor takes one
(``gpus_per_worker=1``): one actor per GPU. Each actor loads the model once and takes shards as it frees
up; a shard whose actor dies is given to another (the run stops only when every actor is gone). An
actor's results equal the local executor's: the same code computes the same shards.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from workbench.errors import ExperimentError, RayConnectionError
from workbench.experiments.runner import Shard, Work, compute_shard

Done = Callable[[Shard, pa.Table], None]
EXECUTORS = ("local", "ray")
RAY_TIMEOUT_S = 10.0  # how long joining a cluster may take to answer (WORKBENCH_RAY_TIMEOUT overrides)


class LocalExecutor:
    """Every shard in this process, in plan order."""

    name = "local"

    def describe(self) -> dict[str, Any]:
        return {"executor": "local"}

    def run(self, work: Work, shards: Sequence[Shard], done: Done) -> None:
        for shard in shards:
            done(shard, compute_shard(work, shard))


@dataclass
class WorkerInfo:
    device: str
    fingerprint: str
    pid: int
    node: str


class _Worker:
    """The body of a Ray actor: loads the model once, then computes whichever shards it is given."""

    def __init__(self, experiment, dataset, threads: int | None = None, crash_on: tuple[str, str] | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        from workbench.provenance import model_fingerprint

        self.model = experiment.model.load()
        self.work = Work.build(self.model, experiment, dataset)
        self.fingerprint = model_fingerprint(self.model)["sha256"]
        self.crash_on = crash_on

    def info(self) -> WorkerInfo:
        import socket

        return WorkerInfo(str(self.model.device), self.fingerprint, os.getpid(), socket.gethostname())

    def run(self, shard: Shard) -> pa.Table:
        if self.crash_on is not None and shard.id == self.crash_on[0] and not os.path.exists(self.crash_on[1]):
            open(self.crash_on[1], "w").close()  # the first actor to take this shard dies abruptly, once
            os._exit(1)
        return compute_shard(self.work, shard)


class RayExecutor:
    """Shards on Ray actors. ``crash_on=(shard_id, marker_path)`` makes the first actor that takes that
    shard exit abruptly (once, across the cluster): a fault injection for testing recovery."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        gpus_per_worker: float | None = None,
        cpus_per_worker: float = 1,
        crash_on: tuple[str, str] | None = None,
    ):
        if workers is not None and workers < 1:
            raise ExperimentError(f"--workers {workers}: run at least one worker.")
        self.workers = workers
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.crash_on = crash_on
        self.actors: list[Any] = []
        self.infos: list[WorkerInfo] = []
        self._started_ray = False
        self._key: tuple[Any, ...] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "executor": "ray",
            "workers": len(self.actors),
            "address": self.address,
            "gpus_per_worker": self.gpus_per_worker,
        }

    def start(self, experiment, dataset) -> list[WorkerInfo]:
        """Start (or join) Ray and the actors; each loads the model and reports its device and weights' hash.
        Started already for the same experiment and items, the running actors are kept."""
        ray = _import_ray()
        key = (experiment.analysis(), experiment.model, [item.id for item in dataset.items])
        if self.actors and self._key == key:
            return self.infos
        self._kill_actors()
        self._key = key
        if not ray.is_initialized():
            quiet = dict(log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
            if self.address:
                require_reachable(self.address)
                try:
                    ray.init(address=self.address, **quiet)
                except Exception as exc:  # noqa: BLE001 — Ray raises ConnectionError, RuntimeError, ValueError …
                    raise RayConnectionError(
                        f"Could not join the Ray cluster at {self.address} ({_first_line(exc)}): start it "
                        "(ray start --head) or check --address."
                    ) from None
            else:
                ray.init(
                    num_cpus=int(max(1, (self.workers or 1) * self.cpus_per_worker)),
                    runtime_env={"env_vars": _forwarded_env()},
                    **quiet,
                )
            self._started_ray = True
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        count = self.workers or (int(ray.cluster_resources().get("GPU", 0)) if gpus else 0) or 1
        worker = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=gpus, max_restarts=0)(_Worker)
        threads = max(1, int(self.cpus_per_worker))
        self.actors = [worker.remote(experiment, dataset, threads, self.crash_on) for _ in range(count)]
        try:
            self.infos = ray.get([actor.info.remote() for actor in self.actors])
        except Exception as exc:  # noqa: BLE001 — an actor that cannot load the model raises anything
            self.shutdown()
            raise ExperimentError(f"A Ray worker could not load the model: {_first_line(exc)}") from None
        return self.infos

    def run(self, work: Work, shards: Sequence[Shard], done: Done) -> None:
        ray = _import_ray()
        self.start(work.experiment, work.dataset)
        queue = list(shards)
        idle = list(self.actors)
        running: dict[Any, tuple[Any, Shard]] = {}
        failures: list[str] = []
        try:
            while queue or running:
                while queue and idle:
                    actor = idle.pop(0)
                    shard = queue.pop(0)
                    running[actor.run.remote(shard)] = (actor, shard)
                if not running:
                    raise ExperimentError(
                        f"Every Ray worker died ({'; '.join(failures[-2:])}): "
                        f"{len(queue)} shards left. Run the same command again to finish them."
                    )
                ready, _ = ray.wait(list(running), num_returns=1)
                ref = ready[0]
                actor, shard = running.pop(ref)
                try:
                    table = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    failures.append(_first_line(exc))
                    queue.insert(0, shard)  # retried on another actor; this one is gone
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise ExperimentError(
                        f"Shard {shard.id} failed on a Ray worker: {_first_line(exc.cause or exc)}"
                    ) from None
                idle.append(actor)
                done(shard, table)
        finally:
            self.shutdown()

    def _kill_actors(self) -> None:
        ray = _import_ray()
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(actor)
        self.actors = []

    def shutdown(self) -> None:
        ray = _import_ray()
        self._kill_actors()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False


def _forwarded_env() -> dict[str, str]:
    """What a local actor needs from this process's environment to import and size the same workbench."""
    keys = (
        "PYTHONPATH",
        "WORKBENCH_CACHE",
        "WORKBENCH_MEMORY_BUDGET",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_VERBOSITY",
        "OMP_NUM_THREADS",
    )
    return {k: os.environ[k] for k in keys if k in os.environ}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExperimentError("--executor ray needs Ray: pip install 'workbench[ray]' (or pip install ray).") from None
    return ray


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def ray_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("WORKBENCH_RAY_TIMEOUT", RAY_TIMEOUT_S)))
    except ValueError:
        return RAY_TIMEOUT_S


def require_reachable(address: str, timeout: float | None = None) -> None:
    """Refuse, in at most ``timeout`` seconds, a ``host:port`` or ``ray://host:port`` nothing answers at
    (``auto`` is found by Ray itself, from this machine's running instance)."""
    import socket

    timeout = ray_timeout() if timeout is None else timeout
    text = address.strip()
    if text == "auto" or text.startswith("local"):
        return
    hostport = text.split("://", 1)[1] if "://" in text else text
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayConnectionError(
            f"--address {address!r} is not a Ray address: use auto, host:port (the head's GCS port, 6379 by "
            "default) or ray://host:10001."
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = f"no answer in {timeout:g} s" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__
        raise RayConnectionError(
            f"Cannot reach the Ray cluster at {address} ({reason}): start it (ray start --head) or check --address."
        ) from None


def make_executor(name: str, workers: int | None = None, address: str | None = None):
    if name == "local":
        if workers not in (None, 1) or address:
            raise ExperimentError(
                "--workers and --address apply to --executor ray; the local executor runs in this process."
            )
        return LocalExecutor()
    if name == "ray":
        _import_ray()
        if address:
            require_reachable(address)  # before the model loads
        return RayExecutor(workers=workers, address=address)
    raise ExperimentError(f"Unknown executor {name!r}: use one of {', '.join(EXECUTORS)}.")
