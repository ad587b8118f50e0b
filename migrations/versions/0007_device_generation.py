"""device generation: a delivery is pushed only to the device as it was when it was created

``devices.generation`` moves on when a device is registered by another user or
re-enabled after being disabled; ``deliveries.device_generation`` keeps the value
the fan-out saw, and the claim closes a delivery whose device has moved on.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows start at 0 on both sides, so open deliveries stay pushable. The defaults stay:
    # a row inserted without the column (a script, an older process during a rolling deploy) is
    # generation 0, not a NOT NULL error.
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("device_generation", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("device_generation")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("generation")
