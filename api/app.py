"""The Flask application factory."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from api.auth import RevokedClients, TokenVerifier
from api.errors import register_error_handlers
from api.request_session import discard_session, finish_session
from broker.celery_app import make_celery
from broker.dispatch import Dispatcher
from shared import crypto
from shared.backlog import BackpressureReader
from shared.config import Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.guards import ClientAuthFailureLimiter, DailyQuota, QuotaPolicy, ReceiptLimiter, RegistrationLimiter
from shared.receipts import ReceiptTokens, derive_key
from shared.services.clients import revoked_client_ids


@dataclass
class PushqState:
    """Everything the views need, built once per application."""

    settings: Settings
    redis: redis.Redis  # quotas, rate limits, outcome announcements
    verifier: TokenVerifier
    session_factory: sessionmaker[Session]
    dispatcher: Dispatcher
    quota: QuotaPolicy
    registration_limiter: RegistrationLimiter
    client_auth_limiter: ClientAuthFailureLimiter
    token_hash_slots: threading.BoundedSemaphore  # scrypt runs at once in this process (PUSHQ_TOKEN_HASH_CONCURRENCY)
    backpressure: BackpressureReader  # the send answers' backlog headers, read once a second
    receipt_limiter: ReceiptLimiter  # POST /push/receipts per source address
    receipt_tokens: ReceiptTokens


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    crypto.configure(settings)  # tokens and vendor credentials are encrypted at rest
    app = Flask("pushq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    celery = make_celery(settings)
    guards_redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    # One connection per serving thread (PUSHQ_DB_POOL_SIZE, at least the gunicorn --threads).
    session_factory = make_session_factory(make_engine(settings.database_url, pool_size=settings.db_pool_size))

    def load_revoked_clients() -> frozenset[str]:
        with session_scope(session_factory) as session:
            return revoked_client_ids(session)

    app.extensions["pushq"] = PushqState(
        settings=settings,
        verifier=TokenVerifier(settings, revoked_clients=RevokedClients(load_revoked_clients)),
        session_factory=session_factory,
        dispatcher=Dispatcher(celery),
        redis=guards_redis,
        quota=QuotaPolicy(DailyQuota(guards_redis), settings.default_daily_quota),
        registration_limiter=RegistrationLimiter(
            guards_redis, settings.registration_limit, settings.registration_window_seconds
        ),
        client_auth_limiter=ClientAuthFailureLimiter(
            guards_redis, settings.token_failures_per_client, settings.token_failures_per_address,
            settings.token_failure_window_seconds,
        ),
        token_hash_slots=threading.BoundedSemaphore(settings.token_hash_concurrency),
        backpressure=BackpressureReader(guards_redis, settings.backpressure_threshold),
        receipt_limiter=ReceiptLimiter(guards_redis, settings.receipts_per_address_per_minute),
        receipt_tokens=ReceiptTokens(derive_key(settings.receipt_key, settings.token_hash_key)),
    )

    from api.broadcast_views import bp as broadcasts_bp
    from api.health import bp as health_bp
    from api.oauth import bp as oauth_bp
    from api.openapi import bp as openapi_bp
    from api.patient_views import bp as patients_bp
    from api.receipt_views import bp as receipts_bp
    from api.views import bp as push_bp
    from api.webhook_views import bp as webhooks_bp

    app.register_blueprint(push_bp)
    app.register_blueprint(broadcasts_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(patients_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(oauth_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(receipts_bp)
    from api.admin import bp as admin_bp
    from api.client_kit import bp as client_kit_bp

    # Pages, not API operations: left out of /openapi.json (api.endpoints.PAGES).
    app.register_blueprint(admin_bp)
    app.register_blueprint(client_kit_bp)
    from api.metrics import install_observability

    # Before finish_session: after-request hooks run in reverse, so request ids and HTTP metrics see
    # the final answer (a failed commit turns into a 503 there).
    install_observability(app)
    app.after_request(finish_session)
    app.teardown_request(discard_session)
    register_error_handlers(app)
    return app
