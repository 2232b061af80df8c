"""The tests' AWS: one moto server per test session (tests/aws_server.py) on 127.0.0.1,
spoken to over HTTP by the real boto3 code."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client

SERVER = Path(__file__).resolve().parent / "aws_server.py"
REGION = "us-east-1"
# moto accepts any credentials; these keep boto3 from looking for real ones anywhere.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class Aws:
    endpoint_url: str

    def kms(self) -> KMSClient:
        return boto3.client("kms", region_name=REGION, endpoint_url=self.endpoint_url)

    def s3(self) -> S3Client:
        return boto3.client(
            "s3",
            region_name=REGION,
            endpoint_url=self.endpoint_url,
            config=Config(s3={"addressing_style": "path"}),
        )

    def kms_calls(self) -> dict[str, int]:
        """KMS calls the server answered so far, by operation (all clients together)."""
        answer = httpx.get(f"{self.endpoint_url}/_celeriac/kms-calls", timeout=10)
        answer.raise_for_status()
        calls: dict[str, int] = answer.json()
        return calls

    def new_bucket(self) -> str:
        name = f"celeriac-test-{uuid.uuid4().hex[:16]}"
        self.s3().create_bucket(Bucket=name)
        return name

    @staticmethod
    def new_alias_prefix() -> str:
        """A prefix of a test's own, so that tests never share a tenant alias."""
        return f"alias/celeriac-test/{uuid.uuid4().hex[:12]}/tenant/"

    def settings_env(
        self, bucket: str | None = None, alias_prefix: str | None = None
    ) -> dict[str, str]:
        """CELERIAC_* variables (without the prefix) for KMS and, given a bucket, S3."""
        env = {
            "KEYS__PROVIDER": "kms",
            "KEYS__KMS_ENDPOINT_URL": self.endpoint_url,
            "KEYS__KMS_ALIAS_PREFIX": alias_prefix or self.new_alias_prefix(),
        }
        if bucket is not None:
            env |= {
                "BLOB__BACKEND": "s3",
                "BLOB__S3_BUCKET": bucket,
                "BLOB__S3_ENDPOINT_URL": self.endpoint_url,
            }
        return env


@contextmanager
def moto_server() -> Iterator[Aws]:
    """Start the server and set fake credentials in this process's environment (the
    workers the tests start inherit them); undo both at the end."""
    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    process = subprocess.Popen(
        [sys.executable, str(SERVER)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the moto server did not start (exit {process.poll()})")
        yield Aws(f"http://127.0.0.1:{int(port)}")
    finally:
        process.terminate()
        process.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
