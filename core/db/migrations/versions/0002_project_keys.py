"""Several ingest keys per project, stored as SHA-256 hashes; the plain-text projects.ingest_key goes.

Revision ID: 0002
"""

import hashlib
import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    keys = op.create_table(
        "project_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_project_keys_project_id", "project_keys", ["project_id"])
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, ingest_key FROM projects")).all()
    if rows:
        op.bulk_insert(keys, [{"project_id": pid, "key_hash": hashlib.sha256(str(key).encode()).hexdigest(),
                               "hint": str(key)[:4], "created_at": time.time()} for pid, key in rows])
    # batch mode: SQLite cannot drop a column in place (alembic copies the table); MariaDB alters it.
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("ingest_key")


def downgrade() -> None:
    # Keys cannot be recovered from their hashes: the column comes back holding the hash, so every
    # project must be given a new key after a downgrade.
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("ingest_key", sa.String(128), nullable=True))
    op.execute("UPDATE projects SET ingest_key = (SELECT MIN(key_hash) FROM project_keys "
               "WHERE project_keys.project_id = projects.id)")
    op.drop_table("project_keys")
