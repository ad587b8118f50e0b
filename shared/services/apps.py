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
