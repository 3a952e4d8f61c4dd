"""Stage one on a Dask cluster: every shard a task, one progress bar, the merge at the end.

``python -m lusfeat.extract --dask ADDRESS`` (an existing ``dask scheduler``) or ``--dask local:N``
(a ``LocalCluster`` of N single-task worker processes) runs :func:`extract_on_dask`. The client
plans the frames once and sends the table to the tasks; each task is
:func:`lusfeat.shards.extract_shard` on a worker, which must see the same data files, weights
and output folder at the same paths. A worker that dies loses nothing but its current block:
the scheduler gives the task to another worker (``distributed.scheduler.allowed-failures``
times), which resumes from the shard's ``.partial`` file. When every shard of a backbone is
complete the client merges them (:func:`lusfeat.shards.merge_shards`), so the client too sees
the output folder. Dask is an optional extra: ``pip install "lusfeat[dask]"``.

A worker process runs one shard at a time (TensorFlow and Keras keep process-wide state), with
``--threads`` TensorFlow threads (default: its cores; ``local:N``: the cores over N). See
docs/distributed.md for the measured choice of processes and threads.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lusfeat.backbones import BackboneSpec, WeightsSource, get_spec
from lusfeat.embed import ExtractionSummary, set_tf_threads
from lusfeat.errors import LusfeatError
from lusfeat.shards import MergeSummary, existing_output, extract_shard, merge_shards, shard_path, split_patients
from lusfeat.store import ExtractionConfig

TOPIC = "lusfeat-extract"
_ONE_AT_A_TIME = threading.Lock()  # one extraction per worker process: Keras' dtype policy and TF's threads are global


def require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as error:
        raise LusfeatError("--dask needs Dask's distributed scheduler: pip install \"lusfeat[dask]\" (or dask "
                           "distributed) on the client and every worker") from error


@dataclass
class BackboneResult:
    """One backbone's shards and merge, or what went wrong."""

    name: str
    summaries: list[ExtractionSummary] = field(default_factory=list)
    merge: MergeSummary | None = None
    errors: list[str] = field(default_factory=list)


def shard_task(frames: pd.DataFrame, backbone: str, source: WeightsSource, config: ExtractionConfig, out_path: str,
               index: int, count: int, batch_size: int, threads: int | None, overwrite: bool,
               topic: str) -> ExtractionSummary:
    """One shard, on a worker: resumes from its partial file, reports each stored block on ``topic``."""
    from lusfeat.manifest import file_sha256

    with _ONE_AT_A_TIME:
        if threads:
            set_tf_threads(threads)
        if source.keras_arg not in (None, "imagenet"):
            if not Path(source.keras_arg).is_file() or file_sha256(source.keras_arg) != config.weights:
                raise LusfeatError(f"worker {_worker_name()}: weights file {source.keras_arg} is missing or differs "
                                   "from the client's: give every worker the same weights at the same path")
        worker = _worker()

        def report(done: int, total: int) -> None:
            if worker is not None:
                worker.log_event(topic, {"backbone": backbone, "index": index, "count": count, "done": done,
                                         "total": total, "pid": os.getpid(), "worker": worker.address})

        try:
            return extract_shard(frames, get_spec(backbone), source, config, Path(out_path), index, count,
                                 batch_size=batch_size, overwrite=overwrite, progress=False, on_block=report)
        finally:
            import keras

            keras.backend.clear_session()


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _worker_name() -> str:
    worker = _worker()
    return worker.address if worker is not None else "(local)"


def start_client(address: str, threads: int | None):
    """A ``distributed.Client`` on ``address``, or on a new ``LocalCluster`` for ``local:N``; and its worker count."""
    require_dask()
    from distributed import Client, LocalCluster

    if not logging.getLogger("lusfeat").isEnabledFor(logging.DEBUG):
        # Dask's own start, stop and worker-restart notices; -v shows them.
        for name in ("distributed", "tornado", "bokeh"):
            logging.getLogger(name).setLevel(logging.ERROR)

    if address.startswith("local:"):
        text = address.removeprefix("local:")
        if not text.isdigit() or int(text) < 1:
            raise LusfeatError(f"--dask {address}: give local:N with N >= 1 worker processes, or a scheduler address")
        workers = int(text)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        per_worker = threads or max(1, cores // workers)
        env = {"TF_NUM_INTRAOP_THREADS": str(per_worker), "TF_NUM_INTEROP_THREADS": str(per_worker),
               "OMP_NUM_THREADS": str(per_worker), "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               scheduler_kwargs={"dashboard": False}, silence_logs=logging.ERROR, env=env)
        return Client(cluster), workers
    try:
        client = Client(address, timeout="30s")
    except (OSError, TimeoutError) as error:
        raise LusfeatError(f"--dask {address}: no Dask scheduler answers there ({error}); start one with "
                           "`dask scheduler` and workers with `dask worker ADDRESS --nthreads 1`") from error
    return client, len(client.scheduler_info().get("workers", {}))


def extract_on_dask(address: str, jobs: list[tuple[BackboneSpec, WeightsSource, ExtractionConfig, Path]],
                    frames: pd.DataFrame, *, shards: int | None = None, batch_size: int = 32,
                    threads: int | None = None, overwrite: bool = False, progress: bool = True,
                    on_event: Callable[[dict[str, Any]], None] | None = None, client=None) -> list[BackboneResult]:
    """Extract every ``(spec, source, config, out_path)`` job in ``shards`` shards on a Dask cluster, then merge each.

    ``shards`` defaults to the number of workers (at most one per patient). ``on_event`` gets every
    progress message (backbone, shard index, frames done, worker pid) in the client. ``client``, when
    given, is used instead of connecting to ``address``.
    """
    from tqdm.auto import tqdm

    results = {str(out_path): BackboneResult(spec.name)
               for spec, _, config, out_path in jobs}
    todo = []
    for job in jobs:  # before any cluster: a finished file needs none, one of other settings is kept
        result, out_path, config = results[str(job[3])], Path(job[3]), job[2]
        existing = "" if overwrite else existing_output(out_path, config, frames)
        if existing == "same":
            result.merge = MergeSummary(out_path, len(frames), 0, 0.0, "up to date")
        elif existing:
            result.errors.append(f"{out_path} exists with other settings or frames; it is kept: pass --overwrite "
                                 "to replace it, or choose another --out folder")
        else:
            todo.append(job)
    jobs = todo
    if not jobs:
        return list(results.values())
    own_client = client is None
    if own_client:
        client, workers = start_client(address, threads)
    else:
        workers = len(client.scheduler_info().get("workers", {}))
    try:
        patients = frames["patient_id"].nunique()
        count = shards or max(1, min(workers, patients))
        split_patients(frames, count)  # refuse an impossible count before any task
        topic = f"{TOPIC}-{uuid.uuid4().hex[:12]}"
        done: dict[tuple[str, int], int] = {}
        lock = threading.Lock()
        # One bar for the whole job: each shard's own frames stored (the neighbours a shard computes
        # for exact batches are not counted).
        bar = tqdm(total=len(frames) * len(jobs), unit="frame", desc=f"extract ({count} shards)",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)

        def follow(event) -> None:
            message = event[1] if isinstance(event, tuple) else event
            with lock:
                done[(message["backbone"], message["index"])] = message["done"]
                bar.n = sum(done.values())
                bar.refresh()
            if on_event is not None:
                on_event(message)

        client.subscribe_topic(topic, follow)
        table = client.scatter(frames, broadcast=False, hash=False)
        futures = {}
        for spec, source, config, out_path in jobs:
            name = spec.name
            for index in range(1, count + 1):
                future = client.submit(shard_task, table, spec.name, source, config, str(out_path), index, count,
                                       batch_size, threads, overwrite, topic, pure=False,
                                       key=f"lusfeat-{name}-shard-{index}-of-{count}-{topic[-12:]}")
                futures[future] = (out_path, index)
        from distributed import as_completed

        try:
            for future in as_completed(list(futures)):
                out_path, index = futures[future]
                result = results[str(out_path)]
                try:
                    result.summaries.append(future.result())
                except LusfeatError as error:
                    result.errors.append(f"shard {index}/{count}: {error}")
                except Exception as error:  # noqa: BLE001 - a task's crash is reported, the other shards go on
                    result.errors.append(f"shard {index}/{count}: {type(error).__name__}: {error} (rerun the same "
                                         "command to resume it)")
        except BaseException:
            client.cancel(list(futures))
            raise
        finally:
            bar.close()
            client.unsubscribe_topic(topic)
        for _, _, _, out_path in jobs:
            result = results[str(out_path)]
            if result.errors or result.merge is not None:
                continue
            try:
                paths = [shard_path(out_path, index, count) for index in range(1, count + 1)]
                result.merge = merge_shards(out_path, paths, overwrite=overwrite)
            except LusfeatError as error:
                result.errors.append(f"merge: {error}")
        for result in results.values():
            result.summaries.sort(key=lambda summary: str(summary.path))
        return list(results.values())
    finally:
        if own_client:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
