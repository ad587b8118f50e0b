"""Every error the API answers, as JSON ``{"error", "message"}`` with its documented status."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify
from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from shared.errors import ServiceError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.extra = status, error, message, extra


def error_response(status: int, error: str, message: str, **extra: Any) -> Response:
    response = jsonify({"error": error, "message": message, **extra})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.error, exc.message, **exc.extra)

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError):
        response = error_response(exc.status, exc.code, exc.message, **exc.details)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError):
        return error_response(400, "validation_error", "Invalid request", fields=exc.normalized_messages())

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_unavailable(exc: redis.RedisError):
        # Quotas and rate limits must be exact: without Redis, refuse rather than guess.
        log.error("redis unavailable: %s", type(exc).__name__)
        response = error_response(503, "unavailable", "Service temporarily unavailable, try again")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError):
        # Parameters are never logged (hide_parameters): only the kind of failure.
        log.error("database unavailable: %s", type(exc.orig).__name__)
        response = error_response(503, "unavailable", "Service temporarily unavailable, try again")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError):
        # A bug rather than an outage (OperationalError has its own handler). Logged with the statement
        # only: parameters are hidden (hide_parameters) and the server's message is left out, since
        # PostgreSQL's DETAIL ("Failing row contains (...)") repeats the values.
        log.error("database error %s (SQLSTATE %s) in: %s", type(exc.orig).__name__,
                  getattr(exc.orig, "pgcode", None), exc.statement)
        return error_response(500, "internal_error", "Internal server error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Internal server error")
