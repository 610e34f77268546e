"""Triage: group states (unresolved / resolved / ignored, regressed flag) on error_groups, and the hourly
count buckets of the group page's chart (group_hours).

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("error_groups") as batch:
        batch.add_column(sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'unresolved'")))
        batch.add_column(sa.Column("regressed", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("state_changed_at", sa.Double, nullable=True))
        batch.add_column(sa.Column("ignore_until", sa.Double, nullable=True))
        batch.add_column(sa.Column("ignore_until_count", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("signal_pending", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_error_groups_state_last_seen", "error_groups", ["state", "last_seen"])
    op.create_table(
        "group_hours",
        sa.Column("project_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("hour", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_group_hours_hour", "group_hours", ["hour"])


def downgrade() -> None:
    op.drop_table("group_hours")
    op.drop_index("ix_error_groups_state_last_seen", table_name="error_groups")
    with op.batch_alter_table("error_groups") as batch:
        for name in ("signal_pending", "ignore_until_count", "ignore_until", "state_changed_at", "regressed",
                     "state"):
            batch.drop_column(name)
