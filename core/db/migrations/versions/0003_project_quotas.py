"""Per-project event quotas and new-group cap: a table of its own (project_quotas), one row per project
that overrides a default (NULL column = the setting's default, 0 = no limit).

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_quotas",
        sa.Column("project_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("per_second", sa.BigInteger, nullable=True),
        sa.Column("per_minute", sa.BigInteger, nullable=True),
        sa.Column("new_groups_per_hour", sa.BigInteger, nullable=True),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("project_quotas")
