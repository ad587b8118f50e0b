"""clicked action: which action button a Web Push notification's first click was on

``deliveries.clicked_action`` holds the action id the service worker reported with
its clicked receipt (NULL: a click on the notification itself, or no click).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("clicked_action", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("clicked_action")
