"""Liveness and readiness endpoints for load balancers."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from credits import health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(health.status())


@bp.get("/")
def index() -> ResponseReturnValue:
    return jsonify({"service": "credits", "docs": "/healthz"})
