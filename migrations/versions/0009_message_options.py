"""message options: a notification's presentation options, an app's critical-alerts entitlement

``notifications.options`` holds shared.message_options.Options as JSON (NULL: none);
``apps.apns_critical_alerts`` says whether Apple granted the app critical alerts,
without which a send asking for interruption_level critical is refused.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("options", sa.JSON(), nullable=True))
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("apns_critical_alerts", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("apns_critical_alerts")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("options")
