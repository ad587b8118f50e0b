"""broadcasts: user tags, broadcasts paged over the audience's devices, a broadcast recipient per delivery

A broadcast's message is one notification without a user (``notifications.user_id``
becomes nullable); each recipient device gets a delivery naming its user
(``deliveries.user_id``), closed ``cancelled`` when the broadcast is cancelled first.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OLD_DELIVERY_STATUSES = ("'pending', 'sending', 'retrying', 'sent', 'dead_token', 'rejected', 'failed', 'expired', "
                          "'unsupported'")
_NEW_DELIVERY_STATUSES = _OLD_DELIVERY_STATUSES + ", 'cancelled'"


def upgrade() -> None:
    op.create_table(
        "user_tags",
        sa.Column("app_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["app_id", "user_id"], ["enrollments.app_id", "enrollments.user_id"],
                                name=op.f("fk_user_tags_app_id_enrollments"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("app_id", "user_id", "tag", name=op.f("pk_user_tags")),
    )
    op.create_index("ix_user_tags_app_id_tag_user_id", "user_tags", ["app_id", "tag", "user_id"])
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("app_id", sa.Uuid(), nullable=False),
        sa.Column("notification_id", sa.Uuid(), nullable=False),
        sa.Column("tags_all", sa.JSON(), nullable=True),
        sa.Column("tags_any", sa.JSON(), nullable=True),
        sa.Column("platforms", sa.JSON(), nullable=True),
        sa.Column("rate_per_minute", sa.Integer(), nullable=True),
        sa.Column("audience_size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("cursor_user_id", sa.Uuid(), nullable=True),
        sa.Column("cursor_device_id", sa.Uuid(), nullable=True),
        sa.Column("deliveries_created", sa.Integer(), nullable=False),
        sa.Column("fanned_out_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_step_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("step_token", sa.Uuid(), nullable=True),
        sa.Column("final_counts", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('scheduled', 'sending', 'completed', 'cancelled')",
                           name=op.f("ck_broadcasts_status")),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_broadcasts_app_id_apps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["notification_id"], ["notifications.id"],
                                name=op.f("fk_broadcasts_notification_id_notifications"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broadcasts")),
        sa.UniqueConstraint("notification_id", name=op.f("uq_broadcasts_notification_id")),
    )
    op.create_index("ix_broadcasts_app_id_created_at", "broadcasts", ["app_id", "created_at"])
    op.create_index("ix_broadcasts_status_next_step_at", "broadcasts", ["status", "next_step_at"])
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("user_id", existing_type=sa.Uuid(), nullable=True)
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("user_id", sa.Uuid(), nullable=True))
        batch.drop_constraint(op.f("ck_deliveries_status"), type_="check")
        batch.create_check_constraint("status", f"status IN ({_NEW_DELIVERY_STATUSES})")


def downgrade() -> None:
    op.execute("DELETE FROM notifications WHERE user_id IS NULL")  # broadcasts' messages (and their deliveries)
    op.execute("UPDATE deliveries SET status = 'expired' WHERE status = 'cancelled'")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint(op.f("ck_deliveries_status"), type_="check")
        batch.create_check_constraint("status", f"status IN ({_OLD_DELIVERY_STATUSES})")
        batch.drop_column("user_id")
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("user_id", existing_type=sa.Uuid(), nullable=False)
    op.drop_index("ix_broadcasts_status_next_step_at", table_name="broadcasts")
    op.drop_index("ix_broadcasts_app_id_created_at", table_name="broadcasts")
    op.drop_table("broadcasts")
    op.drop_index("ix_user_tags_app_id_tag_user_id", table_name="user_tags")
    op.drop_table("user_tags")
