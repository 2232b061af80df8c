"""The baseline of ``bench/ingest.py``: FastAPI under uvicorn doing nothing but the HTTP
work. ``POST /v1/jobs`` parses the JSON body into a dict and returns it with 202.

Run it as a script: uvicorn gets the options ``celeriac api`` gives it (an app factory,
the same worker count, ``log_config=None``, proxy headers, uvicorn's default loop and HTTP
implementation, logging at WARNING), so the two servers differ only in the application.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Body, FastAPI, status
from fastapi.responses import JSONResponse


def create_app() -> FastAPI:
    app = FastAPI(title="echo")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/jobs", status_code=status.HTTP_202_ACCEPTED)
    async def submit_job(body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
        return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # What configure_logging does for `celeriac api` at CELERIAC_LOG__LEVEL=WARNING.
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        "echo_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        proxy_headers=True,
        app_dir=str(Path(__file__).resolve().parent),
    )


if __name__ == "__main__":
    main()
