"""A webhook receiver for a laptop: verifies each delivery's signature and prints the event.

    .venv/bin/python examples/webhook_receiver.py whsec_... [port]

Register it as a target with ``http://127.0.0.1:<port>/`` (the platform must allow http and
loopback: CELERIAC_WEBHOOKS__ALLOW_HTTP=true and CELERIAC_WEBHOOKS__ALLOWED_CIDRS='["127.0.0.0/8"]',
see the README). Deliveries are at least once: the same ``webhook-id`` may arrive twice.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from celeriac.client.webhooks import InvalidSignature, verify


def main() -> None:
    secret = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 9000
    seen: set[str] = set()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                verify(secret, dict(self.headers.items()), body)
            except InvalidSignature as exc:
                print(f"refused: {exc}", flush=True)
                self.send_response(400)
                self.end_headers()
                return
            message_id = self.headers["webhook-id"]
            again = " (again: at-least-once delivery)" if message_id in seen else ""
            seen.add(message_id)
            event = json.loads(body)
            print(f"{message_id}{again}: {event['type']} {json.dumps(event['data'])}", flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per delivery is printed above

    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()


if __name__ == "__main__":
    main()
