"""The Flask application factory."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from api.auth import TokenVerifier
from api.http import discard_session, finish_session, register_error_handlers
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from workers.celery_app import make_celery
from workers.dispatch import Dispatcher

MAX_BODY_BYTES = 1024 * 1024


@dataclass
class PushqState:
    """Everything the views need, built once per application."""

    settings: Settings
    verifier: TokenVerifier
    session_factory: sessionmaker[Session]
    dispatcher: Dispatcher


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    app = Flask("pushq")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    celery = make_celery(settings)
    app.extensions["pushq"] = PushqState(
        settings=settings,
        verifier=TokenVerifier(settings),
        session_factory=make_session_factory(make_engine(settings.database_url)),
        dispatcher=Dispatcher(celery, settings.delivery_chunk_size),
    )

    from api.openapi import bp as openapi_bp
    from api.views import bp as push_bp
    from api.health import bp as health_bp
    from api.patient_views import bp as patients_bp

    app.register_blueprint(push_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(patients_bp)
    app.register_blueprint(health_bp)
    app.after_request(finish_session)
    app.teardown_request(discard_session)
    register_error_handlers(app)
    return app
