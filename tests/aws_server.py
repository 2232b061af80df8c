"""A moto server for the tests, on 127.0.0.1, with one thing real KMS does and moto 5.2
does not: refusing a disabled or pending-deletion key.

Run as ``python tests/aws_server.py``; prints the port it listens on, then serves until
killed. The tests' boto3 code talks to it over HTTP like to AWS (nothing in boto3 is
patched). moto's KMS answers ``Decrypt`` and ``GenerateDataKey`` whatever the key's state;
AWS answers ``DisabledException`` for a disabled key and ``KMSInvalidStateException`` for
one pending deletion. The middleware below gives those answers, from moto's own record of
the key's state, so that crypto-shredding is tested against the errors production sees.
(moto's ``RotateKeyOnDemand`` records a rotation without new key material; the tests say
which property they prove on which backend.)

It also counts the KMS calls it answers, by operation: ``GET /_celeriac/kms-calls`` returns
them as JSON (``tests/workers/test_no_plaintext.py`` and ``bench/crypto.py`` read it).
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.kms.models import kms_backends
from moto.kms.utils import _deserialize_ciphertext_blob
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

_CHECKED = {"TrentService.Decrypt", "TrentService.GenerateDataKey", "TrentService.Encrypt"}
COUNTER_PATH = "/_celeriac/kms-calls"
_REGION = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/kms/")


class KeyStateEnforcement:
    """WSGI middleware: KMS calls on a key that may not be used get AWS's error."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == COUNTER_PATH:
            with self._lock:
                payload = json.dumps(dict(self.calls)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [payload]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("TrentService."):
            with self._lock:
                self.calls[target.removeprefix("TrentService.")] += 1
        if target in _CHECKED:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
            refusal = self._refusal(target, body, environ.get("HTTP_AUTHORIZATION", ""))
            if refusal is not None:
                code, message = refusal
                payload = json.dumps({"__type": code, "message": message}).encode()
                start_response(
                    "400 Bad Request",
                    [
                        ("Content-Type", "application/x-amz-json-1.1"),
                        ("Content-Length", str(len(payload))),
                    ],
                )
                return [payload]
        return self.app(environ, start_response)

    @staticmethod
    def _refusal(target: str, body: bytes, authorization: str) -> tuple[str, str] | None:
        match = _REGION.search(authorization)
        backend = kms_backends[DEFAULT_ACCOUNT_ID][match.group(1) if match else "us-east-1"]
        try:
            request = json.loads(body)
            if target == "TrentService.Decrypt":
                blob = base64.b64decode(request["CiphertextBlob"])
                key_id = _deserialize_ciphertext_blob(blob).key_id
            else:
                key_id = backend.any_id_to_key_id(request["KeyId"])
            key = backend.keys[key_id]
        except Exception:  # let moto give its own answer to whatever this is
            return None
        if key.key_state == "Disabled":
            return "DisabledException", f"{key.arn} is disabled."
        if key.key_state == "PendingDeletion":
            return "KMSInvalidStateException", f"{key.arn} is pending deletion."
        return None


def main() -> None:
    app = KeyStateEnforcement(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    # T201: the port, for the parent process to read.
    print(server.server_address[1], flush=True)  # noqa: T201
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
