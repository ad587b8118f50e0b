"""The framework floor: a bare Flask app whose one view reads the JSON body and answers 200.

Served by the Procfile's own ``web:`` command (bench/front_door.py), it is what an
empty request costs on pushq's serving model; the accept path is measured against it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

app = Flask("floor")


@app.post("/push/send")
def send() -> tuple[dict[str, Any], int]:
    body = request.get_json()
    return {"notification_id": "00000000-0000-0000-0000-000000000000", "received": len(body or {})}, 200


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
