"""The database tables. A plan is stored whole as its JSON document, versioned for optimistic locking."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _sqlite_utc_text(value: datetime | None) -> str | None:
    """The text SQLite's DATETIME stores for an aware instant: UTC, `YYYY-MM-DD HH:MM:SS.ffffff`, no zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no zone of its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        """Store the instant in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC)

    def bind_processor(self, dialect: Any) -> Any:
        """On SQLite, one step to the stored text (what process_bind_param and SQLite's DATETIME make in two,
        for a few of the intake's statements' CPU); elsewhere SQLAlchemy's own."""
        if dialect.name == "sqlite":
            return _sqlite_utc_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        """Give back an aware datetime."""
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention so migrations name constraints predictably."""

    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class PlanRow(Base):
    """One shared plan, its JSON document and its version."""

    __tablename__ = "plans"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    # Not indexed: the console's search compares lower(patient_mrn), which no index of the column serves, and
    # the index cost every new plan a random page written and read (migration 0019).
    patient_mrn: Mapped[str] = mapped_column(sa.String(128))
    version: Mapped[int] = mapped_column(sa.Integer)
    document: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # A new plan whose id equals another's but for case is refused (migration 0014 says why).
    __table_args__ = (sa.Index("ix_plans_id_folded", sa.func.lower(id)),)


class InboundEventRow(Base):
    """A team event as received: its sender and webhook id are the idempotency key, its answer is replayed."""

    __tablename__ = "inbound_events"

    # Webhook ids are the sender's own (Standard Webhooks), so two senders may use the same one.
    sender: Mapped[str] = mapped_column(sa.String(64), primary_key=True, server_default="default")
    webhook_id: Mapped[str] = mapped_column(sa.String(256), primary_key=True)
    event_type: Mapped[str] = mapped_column(sa.String(64))
    plan_id: Mapped[str] = mapped_column(sa.String(128))  # not indexed: no query asks by it (migration 0015)
    body_sha256: Mapped[str] = mapped_column(sa.String(64))
    body: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    response_status: Mapped[int] = mapped_column(sa.Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    # On PostgreSQL the table has one more column, intake_xid (migration 0017, read by GET /metrics), left out of
    # the model on purpose: the intake's INSERT names every column here and would store NULL over its default.


class OutboxRow(Base):
    """Work for the FHIR push worker, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox"
    # One plan's work is done by one worker at a time: at most one held entry per plan, so two workers
    # never push or re-read the same plan at once (a claim that loses the race fails on this index).
    __table_args__ = (
        sa.Index(
            "uq_outbox_held_plan",
            "plan_id",
            unique=True,
            sqlite_where=sa.text("status = 'pending' AND claimed_at IS NOT NULL"),
            postgresql_where=sa.text("status = 'pending' AND claimed_at IS NOT NULL"),
        ),
        # The claim walks the pending entries oldest first and stops at the first it may take. On PostgreSQL
        # this index holds only pending entries, in id order, so a claim neither reads the done ones nor
        # sorts the queue (ix_outbox_status keeps equal statuses in heap order). SQLite needs none: its
        # status index keeps equal statuses in rowid order already.
        sa.Index("ix_outbox_pending", "id", postgresql_where=sa.text("status = 'pending'")).ddl_if(
            dialect="postgresql"
        ),
        {"sqlite_autoincrement": True},  # ids are never reused (migration 0013)
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    subject_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    event_id: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    # Not indexed: the claim keeps off such an index on purpose, and no other query asks by it (migration 0019).
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set while a worker holds the entry (its lease runs to next_attempt_at), cleared when it is done
    # or waits for a retry: an in-flight re-read must not absorb a newer notification.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FhirLinkRow(Base):
    """Where one internal thing lives on the FHIR server: resource id and last version seen."""

    __tablename__ = "fhir_links"
    # A resource the server's history says was deleted is traced to the plans linking it (migration 0018).
    __table_args__ = (sa.Index("ix_fhir_links_resource", "resource_type", "fhir_id"),)

    plan_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    local_key: Mapped[str] = mapped_column(sa.String(160), primary_key=True)
    resource_type: Mapped[str] = mapped_column(sa.String(64))
    fhir_id: Mapped[str] = mapped_column(sa.String(64))
    version_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The version of the server's delete of this resource a pull was already made for, the link kept (its plan's
    # CarePlan was gone too): an incremental pull does not trace that delete again ("" when it named no version).
    deleted_version: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)


class SyncStateRow(Base):
    """Where a plan stands with the FHIR server: the last synced snapshot (the merge base) and status."""

    __tablename__ = "sync_state"

    plan_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    base_document: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    pushed_hash: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    last_pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_pulled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    last_outcome: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    # Set just before a push is sent, cleared once its outcome is recorded: still set means the
    # server may hold what the plan's links and merge base do not know about yet.
    push_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    push_sent_document: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)  # what it sent
    # The last plan_history sequence a successful push carried: the next push's Provenance names the
    # senders and members of the team changes after it (service.sync.provenance).
    provenance_through: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)


class ConflictRow(Base):
    """A field both sides changed since the last sync: base, ours and theirs, until someone resolves it."""

    __tablename__ = "sync_conflicts"
    __table_args__ = ({"sqlite_autoincrement": True},)  # ids are never reused (migration 0013)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    path: Mapped[str] = mapped_column(sa.String(512))
    base: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    ours: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    theirs: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    resolution: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Where the EHR's side (`theirs`) came from, as the pull read it (all null when not known): the resource
    # and version that carried it, its meta.lastUpdated, and who made that change as FHIR says it (meta.source:
    # a URI, never a name).
    ehr_resource_type: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    ehr_resource_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    ehr_version: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    ehr_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ehr_changed_by: Mapped[str | None] = mapped_column(sa.String(512), nullable=True)


class SyncCursorRow(Base):
    """A named position in the FHIR server's history, e.g. the instant of the last successful pull."""

    __tablename__ = "sync_cursors"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(64))


class SubscriptionRow(Base):
    """A team system that wants plan changes POSTed to it, signed with its own secret."""

    __tablename__ = "subscriptions"
    __table_args__ = ({"sqlite_autoincrement": True},)  # ids are never reused (migration 0013)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(sa.String(2048))
    event_types: Mapped[list[str]] = mapped_column(sa.JSON)
    secret: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    description: Mapped[str | None] = mapped_column(sa.String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # "best-effort": a dead delivery stops holding back its plan's later ones; "strict": it holds them back
    # until it is replayed or skipped.
    ordering: Mapped[str] = mapped_column(sa.String(16), default="best-effort", server_default="best-effort")
    # The secret a rotation replaced: deliveries are signed with it too until previous_secret_until (migration 0016).
    previous_secret: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DeliveryRow(Base):
    """One plan change for one subscription: its signed payload, and the log of its delivery attempts."""

    __tablename__ = "deliveries"
    __table_args__ = (
        sa.UniqueConstraint("subscription_id", "plan_id", "sequence", name="uq_deliveries_order"),
        {"sqlite_autoincrement": True},  # ids are never reused (migration 0013)
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    subscription_id: Mapped[int] = mapped_column(sa.ForeignKey("subscriptions.id", ondelete="CASCADE"))
    plan_id: Mapped[str] = mapped_column(sa.String(128))
    sequence: Mapped[int] = mapped_column(sa.Integer)
    event_type: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    webhook_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    attempt_log: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # in flight until next_attempt_at
    attempts_before_replay: Mapped[int] = mapped_column(sa.Integer, server_default="0")  # see DeliveryRepository


class PlanSequenceRow(Base):
    """The number of the last change recorded for a plan; each change takes the next one."""

    __tablename__ = "plan_sequences"
    __table_args__ = ({"sqlite_with_rowid": False},)  # read and written by its key only (migration 0015)

    plan_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(sa.Integer)


class ConsoleSessionRow(Base):
    """A signed-in console session, known by a digest of the id its cookie carries; signing out deletes it."""

    __tablename__ = "console_sessions"

    id_digest: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AuthFailureRow(Base):
    """Failed API keys from one client address, or with one key prefix, in the current counting window.

    Instants are Unix seconds: the row is read on every API request, by a plain statement.
    """

    __tablename__ = "auth_failures"

    scope: Mapped[str] = mapped_column(sa.String(80), primary_key=True)  # "address:…" or "key:<keyed digest>"
    window_start: Mapped[float] = mapped_column(sa.Float)
    failures: Mapped[int] = mapped_column(sa.Integer)
    blocked_until: Mapped[float] = mapped_column(sa.Float)  # 0 when not blocked


class PlanHistoryRow(Base):
    """One accepted change of a plan, in order: from the team (sender, event type and id, members named) or
    from the EHR (the resource pulled and its version), with the plan paths it changed. Ids, types and
    paths only: never a value from the plan."""

    __tablename__ = "plan_history"
    # A rowid table with its key in an index of its own, not WITHOUT ROWID: its rows, whole in that layout's
    # interior pages, made a tree five levels deep by 40,000 changes (migration 0020).

    plan_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    sequence: Mapped[int] = mapped_column(sa.Integer, primary_key=True)  # the change log's (plan_sequences)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(sa.String(8))  # "team" or "ehr"
    event_type: Mapped[str] = mapped_column(sa.String(64))
    plan_version: Mapped[int] = mapped_column(sa.Integer)
    sender: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    event_id: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    members: Mapped[list[str] | None] = mapped_column(sa.JSON, nullable=True)  # member ids the event named
    resource_type: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    resource_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    resource_version: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    outcome: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)  # a pull's: updated, merged, ...
    paths: Mapped[list[str]] = mapped_column(sa.JSON)  # at most MAX_HISTORY_PATHS
    paths_total: Mapped[int] = mapped_column(sa.Integer)  # how many paths changed, those left out included
