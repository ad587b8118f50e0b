"""patients and their identity mapping; platform restriction on notifications

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("app_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("person_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_patients_app_id_apps"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("app_id", "patient_id", name=op.f("pk_patients")),
    )
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("platform", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("platform")
    op.drop_table("patients")
