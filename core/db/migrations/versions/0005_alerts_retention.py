"""Alert rules and their delivery attempts; the time indexes retention deletes by (samples.received_at,
error_groups.last_seen).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("threshold", sa.BigInteger, nullable=True),
        sa.Column("window_minutes", sa.Integer, nullable=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("cooldown", sa.Double, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_alert_rules_project_id", "alert_rules", ["project_id"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(32), nullable=False),
        sa.Column("rule_id", sa.Integer, nullable=False),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_alert_deliveries_delivery_id", "alert_deliveries", ["delivery_id"])
    op.create_index("ix_alert_deliveries_created_at", "alert_deliveries", ["created_at"])
    op.create_index("ix_alert_deliveries_rule_id", "alert_deliveries", ["rule_id", "id"])
    op.create_index("ix_samples_received_at", "samples", ["received_at"])
    op.create_index("ix_error_groups_last_seen", "error_groups", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_error_groups_last_seen", "error_groups")
    op.drop_index("ix_samples_received_at", "samples")
    op.drop_table("alert_deliveries")
    op.drop_table("alert_rules")
