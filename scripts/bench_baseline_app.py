"""Baseline for scripts/bench_switch.py: a bare endpoint doing one durable UPDATE per request, nothing else.

Served by the same gunicorn command line as the app (`gunicorn ... --pythonpath scripts bench_baseline_app:app`),
on the same stack (Flask, SQLAlchemy Core, psycopg, PostgreSQL with its default synchronous commit), so that
requests/s of the switch API ÷ requests/s of this endpoint measures what the app adds to the unavoidable cost
of one durable write. Reads CREDITS_DATABASE_URL; expects a table `bench_baseline (id, balance)`.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue


def _engine() -> sa.Engine:
    url = os.environ["CREDITS_DATABASE_URL"]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sa.create_engine(url, pool_size=10, max_overflow=10)


app = Flask(__name__)
engine = _engine()
DEBIT = sa.text("UPDATE bench_baseline SET balance = balance - 1 WHERE id = :id RETURNING balance")


@app.post("/debit")
def debit() -> ResponseReturnValue:
    row_id = request.args.get("id", type=int)
    if row_id is None:
        return jsonify(error="id is required"), 400
    with engine.begin() as conn:
        balance = conn.execute(DEBIT, {"id": row_id}).scalar()
    if balance is None:
        return jsonify(error="no such row"), 404
    return jsonify(id=row_id, balance=balance)
