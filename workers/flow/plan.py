"""Which compute tasks a job's stage consists of. Every key is deterministic, so a
re-planned stage (redelivery, reconciler) finds the tasks it already has.

A row-wise analyzer (``rowwise`` in the registry, e.g. ``sentiment``) on a job cut into
more than one slice (``checkpoints["slices"]``, fixed when the job was accepted) runs as
one ``SLICE`` task per slice of the dataset's rows, then one ``MERGE`` task that joins
their results into the analyzer's result, in the same stage: the merge runs ``after`` its
slices have ended (ADR 0009). Every other analysis runs whole, as one ``ANALYZE`` task.
That fan-in is what a Celery chord does, but through the result backend, which loses it
with a Redis restart; like the stage join, it is kept in the task rows instead, so that a
redelivery or the reconciler finds it where it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from celeriac.platform.jobs.payload import chunk_key
from celeriac.platform.models import Job, JobStage
from celeriac.platform.settings import get_settings
from celeriac.platform.storage import job_blob_key


class Role(StrEnum):
    """What a task does with its plugin."""

    GENERATE = "generate"  # a dataset generator on one input chunk
    ANALYZE = "analyze"  # an analyzer on a whole dataset
    SLICE = "slice"  # a row-wise analyzer on one slice of a dataset's rows
    MERGE = "merge"  # joins the results of a row-wise analyzer's slices


@dataclass(frozen=True)
class PlannedTask:
    key: str
    stage: JobStage
    plugin: str
    plugin_version: str
    chunk: int | None  # GENERATE: the input chunk; SLICE: the slice
    input_key: str
    output_key: str
    role: Role
    slices: int = 1  # SLICE: how many slices the dataset's rows are cut into
    after: tuple[str, ...] = ()  # keys of the tasks that must end before this one runs

    @property
    def gives_result(self) -> bool:
        """Whether its output is an analysis of the result document."""
        return self.role in (Role.ANALYZE, Role.MERGE)

    @property
    def analyzer_and_dataset(self) -> tuple[str, str]:
        """Analysis tasks: the analyzer and the dataset it analyses."""
        _, analyzer, dataset, *_ = self.key.split("/")
        return analyzer, dataset


def dataset_prefix(job: Job, dataset: str) -> str:
    return job_blob_key(str(job.tenant_id), str(job.id), f"datasets/{dataset}") + "/"


def dataset_tasks(job: Job) -> list[PlannedTask]:
    """One task per (dataset generator x input chunk)."""
    chunks = int(job.checkpoints.get("payload", {}).get("chunks", 1))
    return [
        PlannedTask(
            key=f"datasets/{step['name']}/{index:05d}",
            stage=JobStage.DATASETS,
            plugin=step["name"],
            plugin_version=step.get("version", ""),
            chunk=index,
            input_key=chunk_key(job.payload_key, index),
            output_key=f"{dataset_prefix(job, step['name'])}{index:05d}.parquet",
            role=Role.GENERATE,
        )
        for step in job.pipeline["datasets"]
        for index in range(chunks)
    ]


def _accepts(analyzer: dict[str, Any], dataset: dict[str, Any]) -> bool:
    accepts = analyzer.get("accepts") or []
    return not accepts or dataset.get("produces") in accepts


def slice_count(job: Job) -> int:
    """Slices of a dataset's rows a row-wise analyzer runs on (1: it runs whole)."""
    return max(1, int(job.checkpoints.get("slices", 1)))


def chunk_records(job: Job) -> int:
    """Records in each payload chunk but the last (0: not recorded, a job accepted before
    the ingest wrote it)."""
    return int(job.checkpoints.get("payload", {}).get("chunk_records", 0))


def slice_rows(rows: int, index: int, slices: int) -> tuple[int, int]:
    """Slice ``index`` of ``slices``: rows ``[start, end)`` of a dataset of ``rows``."""
    return rows * index // slices, rows * (index + 1) // slices


def slice_chunks(start: int, end: int, per_chunk: int) -> range:
    """The chunks records ``[start, end)`` are in, with ``per_chunk`` records a chunk."""
    if end <= start:
        return range(0)
    return range(start // per_chunk, (end - 1) // per_chunk + 1)


def analysis_tasks(job: Job) -> list[PlannedTask]:
    """One task per (analyzer x dataset it accepts); a row-wise analyzer on a job with
    several slices: one per slice, then the merge.

    Whole analyses come first, then the slices, then the merges, and the stage's tasks are
    published in this order: the compute slots take the indivisible work first and the
    slices, many short pieces, fill in behind it, so that no long whole analysis is left
    to run alone at the end (with keywords after the slices, the bigjob's analysis stage
    took 3.35 s, not 3.0)."""
    tenant, job_id = str(job.tenant_id), str(job.id)
    slices = slice_count(job)
    tasks: list[PlannedTask] = []
    for analyzer in job.pipeline["analyzers"]:
        for dataset in job.pipeline["datasets"]:
            if not _accepts(analyzer, dataset):
                continue
            name, version = analyzer["name"], analyzer.get("version", "")
            key = f"analysis/{name}/{dataset['name']}"
            result = job_blob_key(tenant, job_id, f"analysis/{name}--{dataset['name']}.json")
            if not analyzer.get("rowwise") or slices == 1:
                tasks.append(
                    PlannedTask(
                        key,
                        JobStage.ANALYSIS,
                        name,
                        version,
                        None,
                        dataset_prefix(job, dataset["name"]),
                        result,
                        Role.ANALYZE,
                    )
                )
                continue
            parts = job_blob_key(tenant, job_id, f"analysis/{name}--{dataset['name']}") + "/"
            sliced = [
                PlannedTask(
                    f"{key}/{index:05d}",
                    JobStage.ANALYSIS,
                    name,
                    version,
                    index,
                    dataset_prefix(job, dataset["name"]),
                    f"{parts}{index:05d}.json",
                    Role.SLICE,
                    slices=slices,
                )
                for index in range(slices)
            ]
            tasks += sliced
            tasks.append(
                PlannedTask(
                    key,
                    JobStage.ANALYSIS,
                    name,
                    version,
                    None,
                    parts,
                    result,
                    Role.MERGE,
                    after=tuple(t.key for t in sliced),
                )
            )
    order = (Role.ANALYZE, Role.SLICE, Role.MERGE)
    return sorted(tasks, key=lambda t: order.index(t.role))  # stable: plan order within


def planned(job: Job, stage: JobStage) -> list[PlannedTask]:
    if stage is JobStage.DATASETS:
        return dataset_tasks(job)
    if stage is JobStage.ANALYSIS:
        return analysis_tasks(job)
    return []


def planned_task(job: Job, stage: JobStage, key: str) -> PlannedTask | None:
    """The planned task with that key (None for a row no longer in the plan)."""
    return next((p for p in planned(job, stage) if p.key == key), None)


def result_key(job: Job) -> str:
    return job_blob_key(str(job.tenant_id), str(job.id), "result.json")


def lease_seconds() -> float:
    """How long a compute run may last: the hard time limit, plus a margin."""
    return get_settings().workers.compute_hard_time_limit + 30.0
