"""Which compute tasks a job's stage consists of. Every key is deterministic, so a
re-planned stage (redelivery, reconciler) finds the tasks it already has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celeriac.platform.jobs.payload import chunk_key
from celeriac.platform.models import Job, JobStage
from celeriac.platform.storage import job_blob_key


@dataclass(frozen=True)
class PlannedTask:
    key: str
    stage: JobStage
    plugin: str
    plugin_version: str
    chunk: int | None
    input_key: str
    output_key: str


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
        )
        for step in job.pipeline["datasets"]
        for index in range(chunks)
    ]


def _accepts(analyzer: dict[str, Any], dataset: dict[str, Any]) -> bool:
    accepts = analyzer.get("accepts") or []
    return not accepts or dataset.get("produces") in accepts


def analysis_tasks(job: Job) -> list[PlannedTask]:
    """One task per (analyzer x dataset it accepts)."""
    tenant, job_id = str(job.tenant_id), str(job.id)
    return [
        PlannedTask(
            key=f"analysis/{analyzer['name']}/{dataset['name']}",
            stage=JobStage.ANALYSIS,
            plugin=analyzer["name"],
            plugin_version=analyzer.get("version", ""),
            chunk=None,
            input_key=dataset_prefix(job, dataset["name"]),
            output_key=job_blob_key(
                tenant, job_id, f"analysis/{analyzer['name']}--{dataset['name']}.json"
            ),
        )
        for analyzer in job.pipeline["analyzers"]
        for dataset in job.pipeline["datasets"]
        if _accepts(analyzer, dataset)
    ]


def planned(job: Job, stage: JobStage) -> list[PlannedTask]:
    if stage is JobStage.DATASETS:
        return dataset_tasks(job)
    if stage is JobStage.ANALYSIS:
        return analysis_tasks(job)
    return []


def result_key(job: Job) -> str:
    return job_blob_key(str(job.tenant_id), str(job.id), "result.json")
