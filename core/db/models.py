"""Tables. Times are epoch seconds in a DOUBLE: exact to the microsecond on SQLite and MySQL alike."""

from __future__ import annotations

from sqlalchemy import BigInteger, Double, Index, Integer, MetaData, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={"ix": "ix_%(table_name)s_%(column_0_N_name)s",
                                           "uq": "uq_%(table_name)s_%(column_0_N_name)s"})


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[float] = mapped_column(Double)


class ProjectKey(Base):
    """A project may have several ingest keys (rotation). Only the SHA-256 of a key is stored."""

    __tablename__ = "project_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(8))  # first characters, to tell keys apart in `project list`
    created_at: Mapped[float] = mapped_column(Double)


class ErrorGroup(Base):
    """One row per fingerprint. A row may first appear as a count-only placeholder (the sync job ran
    before a worker stored the group); the worker's upsert fills the NULL columns later."""

    __tablename__ = "error_groups"
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(255))
    service: Mapped[str | None] = mapped_column(String(128))
    level: Mapped[str | None] = mapped_column(String(16))
    first_seen: Mapped[float | None] = mapped_column(Double)
    last_seen: Mapped[float | None] = mapped_column(Double)
    count: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        Index("ix_error_groups_project_last_seen", "project_id", "last_seen"),
        Index("ix_error_groups_project_count", "project_id", "count"),
        Index("ix_error_groups_service", "service"),
    )


class Sample(Base):
    """The last few events of a group (settings.samples_per_group), pruned by the scheduler."""

    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    received_at: Mapped[float] = mapped_column(Double)
    payload: Mapped[str] = mapped_column(LongText)


class AppliedBatch(Base):
    """Ledger of count batches already added to error_groups.count: re-applying one is a no-op."""

    __tablename__ = "applied_batches"
    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    applied_at: Mapped[float] = mapped_column(Double)
    events: Mapped[int] = mapped_column(BigInteger)


class ProjectQuota(Base):
    """Per-project limits (core/ratelimit/quota.py); NULL = the setting's default, 0 = no limit. Its own table
    (migration 0003) so it touches no other table; mirrored into Redis for the ingest script."""

    __tablename__ = "project_quotas"
    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    per_second: Mapped[int | None] = mapped_column(BigInteger)
    per_minute: Mapped[int | None] = mapped_column(BigInteger)
    new_groups_per_hour: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[float] = mapped_column(Double)
