"""What tenant encryption costs: envelope throughput in one process, and the 100,000-record
job with encryption on (AWS KMS through boto3, on a local moto server) next to the same job
with encryption off, with the KMS calls each job made.

Run from the repository root (needs PostgreSQL and Redis on 127.0.0.1)::

    flock /tmp/celeriac-bench.lock .venv/bin/python -m bench.crypto [--records 100000]
        [--runs 2] [--sizes 1024,65536,1048576,16777216] [--repeats 7] [--skip-job]

1. **Envelope throughput** (in process): ``Envelope.encrypt`` / ``decrypt`` of random bytes
   of each size under a local keyring (the data key cached, as in a worker: this is the
   AES-256-GCM + HKDF + framing cost), median MB/s of ``--repeats``.
2. **The job** (bigjob.py's records, pipeline and machinery; chunk 5,000 records): two
   environments built one after the other in the same run, each with ``--runs`` measured
   jobs after a 1,000-record warm-up:

   * ``encrypted``: ``CELERIAC_KEYS__PROVIDER=kms`` against tests/aws_server.py (moto on
     127.0.0.1, which counts the KMS calls it answers); blobs on the local disk;
   * ``clear``: the workers with ``--include bench.clear_blobs`` and the API run as
     ``python -m bench.clear_blobs api`` (bench/clear_blobs.py: a patch the product never
     ships), the blob cache off: the same blobs, unencrypted.

   In the encrypted environment a 100-record job and then (processes restarted) one
   ``--records`` job run first on fresh processes, so that the KMS calls of a small and a
   large job from empty caches show side by side; the measured runs follow, warm.

Environments as bigjob.py's (database ``celeriac_bench_crypto``, Redis dbs 2 and 3, a
scratch directory), removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

from bench.bigjob import Run, make_records, measured_job, one_job
from bench.kit.cli import BenchError, install_signal_handlers, note, run_main
from bench.kit.env import environment
from bench.kit.procs import REPO
from bench.kit.report import summary

sys.path.insert(0, str(REPO / "tests"))
from celeriac.platform.crypto import Envelope, LocalKeyring

from aws_support import Aws, moto_server

DATABASE = "celeriac_bench_crypto"
CHUNK_RECORDS = 5000
MB = 1e6


# --- 1. envelope throughput -----------------------------------------------------------------


def envelope_throughput(sizes: list[int], repeats: int, scratch: Path) -> None:
    keyring = LocalKeyring(scratch / "keyring.json")
    keyring.create_tenant_key("bench")
    envelope = Envelope(keyring)
    envelope.encrypt("bench", b"warm")  # the data key is now cached, as in a busy worker
    print(
        "\nenvelope (AES-256-GCM, 1 MiB segments, HKDF per object), in process, "
        f"median of {repeats}:"
    )
    print(f"{'size':>12}{'encrypt MB/s':>14}{'decrypt MB/s':>14}{'overhead B':>12}")
    for size in sizes:
        data = os.urandom(size)
        context = {"blob_key": "tenants/bench/jobs/j/x"}
        enc, dec = [], []
        blob = b""
        for _ in range(repeats):
            start = time.perf_counter()
            blob = envelope.encrypt("bench", data, context)
            enc.append(time.perf_counter() - start)
            start = time.perf_counter()
            envelope.decrypt("bench", blob, context)
            dec.append(time.perf_counter() - start)
        print(
            f"{size:>12}{size / statistics.median(enc) / MB:>14.0f}"
            f"{size / statistics.median(dec) / MB:>14.0f}{len(blob) - size:>12}"
        )


# --- 2. the job, encrypted and clear ------------------------------------------------------


def job_runs(
    label: str,
    extra: dict[str, str],
    clear: bool,
    data: bytes,
    small: bytes | None,
    args: argparse.Namespace,
    aws: Aws | None,
) -> tuple[list[Run], dict[str, dict[str, int]]]:
    calls: dict[str, dict[str, int]] = {}
    runs: list[Run] = []
    settings = {
        "CELERIAC_API__MAX_BODY_BYTES": str(max(10 * 1024 * 1024, int(len(data) * 1.2))),
        "CELERIAC_JOBS__CHUNK_RECORDS": str(CHUNK_RECORDS),
        "CELERIAC_WORKERS__COMPUTE_MAX_TASKS_PER_CHILD": "1000000",
        **extra,
    }
    with environment(f"crypto-{label}", DATABASE, "WARNING", settings) as env:
        headers = {"Authorization": f"Bearer {env.api_key}"}

        def start() -> tuple[httpx.Client, dict[int, str]]:
            hook = ["bench.clear_blobs"] if clear else []
            workers = env.start_workers(include=hook, concurrency={"compute": 2})
            api = env.start_api(entry=hook[0] if clear else "celeriac.platform.cli")
            groups = {api.pid: "api", **{w.pid: pool for pool, w in workers.items()}}
            client = httpx.Client(base_url=env.api_url, headers=headers, timeout=600)
            return client, groups

        def counted(client: httpx.Client, records: bytes, what: str) -> None:
            assert aws is not None
            before = aws.kms_calls()
            one_job(env, client, records, Run(CHUNK_RECORDS, 0))
            calls[what] = _delta(before, aws.kms_calls())

        client, groups = start()
        if aws is not None and small is not None:
            # Each count starts from fresh processes: empty data key caches.
            counted(client, small, "100 records, cold processes")
            client.close()
            env.stop_all()
            client, groups = start()
            counted(client, data, f"{args.records} records, cold processes")
        else:
            one_job(env, client, make_records(1000), Run(CHUNK_RECORDS, 0))
        try:
            for index in range(1, args.runs + 1):
                before = aws.kms_calls() if aws is not None else {}
                run = measured_job(env, client, data, Run(CHUNK_RECORDS, index), groups)
                if run.state != "succeeded":
                    raise BenchError(f"{label} job {run.job_id} ended {run.state}")
                runs.append(run)
                note(f"  {label} run {index}: {run.total:.2f} s")
                if aws is not None:
                    calls[f"{args.records} records, warm run {index}"] = _delta(
                        before, aws.kms_calls()
                    )
        finally:
            client.close()
    return runs, calls


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {op: n - before.get(op, 0) for op, n in after.items() if n - before.get(op, 0)}


def run(args: argparse.Namespace) -> bool:
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"celeriac-bench-crypto-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        envelope_throughput(args.sizes, args.repeats, scratch)
    finally:
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()
    if args.skip_job:
        return True
    note(f"generating {args.records} records ...")
    data = make_records(args.records)
    small = make_records(100)
    with moto_server() as aws:
        encrypted, calls = job_runs(
            "encrypted",
            {"CELERIAC_KEYS__PROVIDER": "kms", "CELERIAC_KEYS__KMS_ENDPOINT_URL": aws.endpoint_url},
            False,
            data,
            small,
            args,
            aws,
        )
    clear, _ = job_runs(
        "clear",
        {"CELERIAC_CACHE__BLOBS": "off"},
        True,
        data,
        None,
        args,
        None,
    )

    print(
        f"\n{args.records}-record job ({len(data) / MB:.1f} MB NDJSON, chunk {CHUNK_RECORDS}, "
        f"bigjob's pipeline), median of {args.runs} run(s) each, same bench run:"
    )
    print(f"{'blobs':<34}{'total s':>9}{'datasets s':>12}{'analysis s':>12}{'records/s':>11}")
    medians = {}
    for label, runs in (
        ("encrypted (KMS on moto, cached)", encrypted),
        ("clear (benchmark only)", clear),
    ):
        total = statistics.median(r.total for r in runs)
        datasets = statistics.median(r.segments()["datasets"] for r in runs)
        analysis = statistics.median(r.segments()["analysis"] for r in runs)
        medians[label] = total
        print(
            f"{label:<34}{total:>9.2f}{datasets:>12.2f}{analysis:>12.2f}"
            f"{args.records / total:>11.0f}"
        )
    on, off = medians.values()
    summary(
        "crypto",
        f"{args.records}-record job, encrypted",
        on,
        "s",
        baseline=f"clear {off:.2f} s",
        ratio=on / off,
    )
    print(
        f"encryption overhead: {on - off:+.2f} s ({100 * (on - off) / off:+.1f}% of the clear job)"
    )
    print(
        "\nKMS calls per job (counted by the moto server; API + 3 pools, compute prefork -c 2;"
        " data key cache TTL 300 s):"
    )
    for job, ops in calls.items():
        described = ", ".join(f"{op} {n}" for op, n in sorted(ops.items())) or "none"
        print(f"  {job:<40} {described}")
    return True


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2, help="measured jobs per environment")
    parser.add_argument("--sizes", default="1024,65536,1048576,16777216")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-job", action="store_true", help="only the envelope throughput")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.records <= 0 or args.runs <= 0 or args.repeats <= 0 or not args.sizes:
        parser.error("--records, --runs, --repeats and --sizes must be positive")
    return args


def main() -> None:
    install_signal_handlers()
    run_main("crypto", _parse_args, run, (BenchError,), "processes stopped, database dropped")


if __name__ == "__main__":
    main()
