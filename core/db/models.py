"""Tables. Times are epoch seconds in a DOUBLE: exact to the microsecond on SQLite and MySQL alike."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Double, Index, Integer, MetaData, String, Text, false, text
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
    # Triage (core/triage.py): unresolved / resolved / ignored. `regressed`: an event came after a resolve
    # (or after an ignore ran out) and reopened it; cleared by the next state change a person makes.
    state: Mapped[str] = mapped_column(String(16), default="unresolved", server_default=text("'unresolved'"))
    regressed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    state_changed_at: Mapped[float | None] = mapped_column(Double)
    ignore_until: Mapped[float | None] = mapped_column(Double)  # "ignored for 1 h": reopen after this time
    ignore_until_count: Mapped[int | None] = mapped_column(BigInteger)  # "until N more": reopen at this count
    # A reopen committed but its "regression" signal not yet known to be in Redis: re-sent (idempotently)
    # by the next batch that touches the group, so a worker crash between commit and XADD loses nothing.
    signal_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_error_groups_project_last_seen", "project_id", "last_seen"),
        Index("ix_error_groups_project_count", "project_id", "count"),
        Index("ix_error_groups_service", "service"),
        Index("ix_error_groups_last_seen", "last_seen"),  # retention: idle groups, oldest first
        Index("ix_error_groups_state_last_seen", "state", "last_seen"),
    )


class Sample(Base):
    """The last few events of a group (settings.samples_per_group), pruned by the scheduler."""

    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    received_at: Mapped[float] = mapped_column(Double, index=True)  # retention deletes by time, oldest first
    payload: Mapped[str] = mapped_column(LongText)


class AppliedBatch(Base):
    """Ledger of count batches already added to error_groups.count: re-applying one is a no-op."""

    __tablename__ = "applied_batches"
    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    applied_at: Mapped[float] = mapped_column(Double)
    events: Mapped[int] = mapped_column(BigInteger)


class GroupHour(Base):
    """Events per group per hour (hours since the epoch, Redis clock at ingest), for the group page's chart.
    Written by the count sync from the same batch and in the same transaction as error_groups.count, so the
    ledger makes it exact too; rows older than `hourly_retention_days` are pruned by the scheduler."""

    __tablename__ = "group_hours"
    project_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_group_hours_hour", "hour"),)


class ProjectQuota(Base):
    """Per-project limits (core/ratelimit/quota.py); NULL = the setting's default, 0 = no limit. Its own table
    (migration 0003) so it touches no other table; mirrored into Redis for the ingest script."""

    __tablename__ = "project_quotas"
    project_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    per_second: Mapped[int | None] = mapped_column(BigInteger)
    per_minute: Mapped[int | None] = mapped_column(BigInteger)
    new_groups_per_hour: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[float] = mapped_column(Double)


class AlertRule(Base):
    """A project's alert rule (core/alerts/): what fires it (kind, and for "threshold" N events in M
    minutes), where it goes (webhook URL, "json" or "slack" body) and the secret its deliveries are signed
    with. The secret is kept in clear because signing needs it; the API shows it once, at creation."""

    __tablename__ = "alert_rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[int | None] = mapped_column(BigInteger)
    window_minutes: Mapped[int | None] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2048))
    format: Mapped[str] = mapped_column(String(8))
    secret: Mapped[str] = mapped_column(String(64))
    cooldown: Mapped[float] = mapped_column(Double)
    created_at: Mapped[float] = mapped_column(Double)


class AlertDelivery(Base):
    """One row per delivery attempt (GET /api/alerts/deliveries): a delivery retried four times is five rows
    sharing its delivery_id."""

    __tablename__ = "alert_deliveries"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(32), index=True)
    rule_id: Mapped[int] = mapped_column(Integer)
    project_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    latency_ms: Mapped[float] = mapped_column(Double)
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | retrying | dead | refused
    created_at: Mapped[float] = mapped_column(Double, index=True)

    __table_args__ = (Index("ix_alert_deliveries_rule_id", "rule_id", "id"),)
