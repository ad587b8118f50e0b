"""batched pipeline: a claim token per delivery chunk, apps.updated_at for credential caches,
a flag on notifications whose first outcomes a caller waits for

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        # Which claim a delivery is held by: outcomes are written only for the claim that pushed.
        batch.add_column(sa.Column("claim_token", sa.Uuid(), nullable=True))
    with op.batch_alter_table("apps") as batch:
        # Workers cache decrypted credentials per app and drop them when this moves.
        batch.add_column(
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())
        )
    with op.batch_alter_table("apps") as batch:
        batch.alter_column("updated_at", server_default=None)
    with op.batch_alter_table("notifications") as batch:
        # Workers announce these notifications' outcomes (Redis pub/sub) to the API call waiting for them.
        batch.add_column(sa.Column("notify_outcomes", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("notify_outcomes", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("notify_outcomes")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("updated_at")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("claim_token")
