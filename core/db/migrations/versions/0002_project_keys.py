"""PLACEHOLDER so that 0003 has its parent in this branch: the real 0002 (project_keys) comes from the
"stack" branch. When merging, keep THEIR file and drop this one.

Revision ID: 0002
"""

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
