"""send options: priority, collapse key, badge, sound, url; truncation flag

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("priority", sa.String(length=8), nullable=False, server_default="normal"))
        batch.add_column(sa.Column("collapse_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("badge", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("sound", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("truncated", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_check_constraint("priority", "priority IN ('high', 'normal')")
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("priority", server_default=None)
        batch.alter_column("truncated", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_constraint("ck_notifications_priority", type_="check")
        for column in ("truncated", "url", "sound", "badge", "collapse_key", "priority"):
            batch.drop_column(column)
