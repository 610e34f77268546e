"""Initial schema: projects, error groups, samples, applied count batches.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("ingest_key", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "error_groups",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("project_id", sa.Integer),
        sa.Column("message", sa.Text),
        sa.Column("error_type", sa.String(255)),
        sa.Column("service", sa.String(128)),
        sa.Column("level", sa.String(16)),
        sa.Column("first_seen", sa.Double),
        sa.Column("last_seen", sa.Double),
        sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_error_groups_project_last_seen", "error_groups", ["project_id", "last_seen"])
    op.create_index("ix_error_groups_project_count", "error_groups", ["project_id", "count"])
    op.create_index("ix_error_groups_service", "error_groups", ["service"])
    op.create_table(
        "samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(32), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("payload", LongText, nullable=False),
    )
    op.create_index("ix_samples_fingerprint", "samples", ["fingerprint"])
    op.create_table(
        "applied_batches",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("applied_at", sa.Double, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("applied_batches", "samples", "error_groups", "projects"):
        op.drop_table(table)
