"""Apps (tenants): creation and lookup."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from shared.errors import AppNotFound
from shared.models import App
from shared.vapid import generate_vapid_key_pair


def create_app(session: Session, name: str, vapid_subject: str = "mailto:push@example.com") -> App:
    """Create an app with a fresh VAPID key pair for Web Push."""
    if not vapid_subject.startswith(("mailto:", "https:")):
        raise ValueError("vapid_subject must start with mailto: or https:")
    keys = generate_vapid_key_pair()
    app = App(
        name=name,
        vapid_private_key=keys.private_pem,
        vapid_public_key=keys.public_key,
        vapid_subject=vapid_subject,
        apns_use_sandbox=False,
    )
    session.add(app)
    session.flush()
    return app


def get_app(session: Session, app_id: uuid.UUID) -> App:
    app = session.get(App, app_id)
    if app is None:
        raise AppNotFound()
    return app


def set_apns_credentials(
    session: Session,
    app_id: uuid.UUID,
    *,
    private_key_pem: str,
    key_id: str,
    team_id: str,
    bundle_id: str,
    use_sandbox: bool,
) -> App:
    """Store an app's APNs token-auth key (the .p8 file's PEM text), key id, team id and topic."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key_pem.encode(), password=None)
    except ValueError as exc:
        raise ValueError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("an APNs key is an EC P-256 (ES256) key")
    if not (key_id.isalnum() and len(key_id) == 10 and team_id.isalnum() and len(team_id) == 10):
        raise ValueError("APNs key id and team id are 10 alphanumeric characters")
    app = get_app(session, app_id)
    app.apns_private_key = private_key_pem
    app.apns_key_id = key_id
    app.apns_team_id = team_id
    app.apns_bundle_id = bundle_id
    app.apns_use_sandbox = use_sandbox
    return app


GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_FCM_BASE_URL = "https://fcm.googleapis.com"


def allowed_fcm_token_uris(fcm_base_url: str = GOOGLE_FCM_BASE_URL) -> tuple[str, ...]:
    """Where a service account's ``token_uri`` may point: Google's token endpoint, or the
    ``/token`` of a configured PUSHQ_FCM_BASE_URL (a stand-in or proxy serves both there)."""
    configured = fcm_base_url.rstrip("/")
    if configured == GOOGLE_FCM_BASE_URL:
        return (GOOGLE_TOKEN_URI,)
    return (GOOGLE_TOKEN_URI, configured + "/token")


def set_fcm_credentials(
    session: Session,
    app_id: uuid.UUID,
    service_account_json: str,
    project_id: str | None = None,
    *,
    fcm_base_url: str = GOOGLE_FCM_BASE_URL,
) -> App:
    """Store an app's Firebase service-account key; the project defaults to the key's own.

    The workers POST a signed assertion to the key's ``token_uri``: a key file
    pointing it anywhere else (an internal address, a server that collects
    assertions) would make them send requests there, so only
    :func:`allowed_fcm_token_uris` is accepted (``fcm_base_url`` is PUSHQ_FCM_BASE_URL).
    """
    import json

    try:
        info = json.loads(service_account_json)
    except ValueError:
        raise ValueError("the service account key is not JSON") from None
    if not isinstance(info, dict):
        raise ValueError("the service account key is not a JSON object")
    missing = {"type", "client_email", "private_key", "private_key_id", "token_uri"} - set(info)
    if info.get("type") != "service_account" or missing:
        raise ValueError(f"not a service-account key (missing: {sorted(missing)})")
    allowed = allowed_fcm_token_uris(fcm_base_url)
    if info["token_uri"] not in allowed:
        raise ValueError(f"the service account's token_uri must be {' or '.join(allowed)}")
    project = project_id or info.get("project_id")
    if not project:
        raise ValueError("no project id given and none in the key")
    app = get_app(session, app_id)
    app.fcm_service_account = service_account_json
    app.fcm_project_id = project
    return app


def list_apps(session: Session) -> list[App]:
    """Every app, oldest first (operators' listing; apps are few)."""
    from sqlalchemy import select

    return list(session.scalars(select(App).order_by(App.created_at, App.id)))


def set_daily_quota(session: Session, app_id: uuid.UUID, daily_quota: int | None) -> App:
    """Set the app's notifications per UTC day; None falls back to PUSHQ_DEFAULT_DAILY_QUOTA.

    Takes effect with the next send: the day's count in Redis is kept, so lowering
    the quota below what was used today refuses the rest of the day's sends.
    """
    if daily_quota is not None and daily_quota < 0:
        raise ValueError("a daily quota is 0 or more")
    app = get_app(session, app_id)
    app.daily_quota = daily_quota
    session.flush()
    return app


def set_apns_critical_alerts(session: Session, app_id: uuid.UUID, enabled: bool) -> App:
    """Record whether Apple granted the app the critical-alerts entitlement.

    Only then does a send to iOS with ``interruption_level: critical`` pass the
    accept check; without the entitlement Apple would deliver it as an ordinary
    alert, which is the silent misbehaviour the check prevents.
    """
    app = get_app(session, app_id)
    app.apns_critical_alerts = enabled
    session.flush()
    return app


def rotate_vapid_key(session: Session, app_id: uuid.UUID) -> App:
    """Give the app a new VAPID key pair; returns the app with its new public key.

    Browser subscriptions are bound to the public key they were made with
    (``applicationServerKey``): push services refuse pushes signed with another
    one, so every browser must subscribe again with the new key and register the
    new subscription. Devices registered before keep failing until then (their
    pushes end ``rejected``). Moving ``updated_at`` makes every worker drop its
    cached credentials of the app.
    """
    app = get_app(session, app_id)
    keys = generate_vapid_key_pair()
    app.vapid_private_key = keys.private_pem
    app.vapid_public_key = keys.public_key
    session.flush()
    return app
