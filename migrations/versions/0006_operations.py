"""operations: request ids on notifications, scheduled sends (send_at, scheduled and cancelled statuses)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_OLD_STATUSES = "'queued', 'sending', 'delivered', 'partially_delivered', 'failed', 'expired', 'no_devices'"
_NEW_STATUSES = _OLD_STATUSES + ", 'scheduled', 'cancelled'"


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        # The X-Request-Id of the request that created it: carried into task headers and log lines.
        batch.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
        # Fan out no earlier than this (None: at once); the scheduler releases it when due.
        batch.add_column(sa.Column("send_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint(op.f("ck_notifications_status"), type_="check")
        batch.create_check_constraint("status", f"status IN ({_NEW_STATUSES})")
        batch.create_index("ix_notifications_status_send_at", ["status", "send_at"])


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_index("ix_notifications_status_send_at")
        batch.drop_constraint(op.f("ck_notifications_status"), type_="check")
        batch.create_check_constraint("status", f"status IN ({_OLD_STATUSES})")
        batch.drop_column("send_at")
        batch.drop_column("request_id")
