"""Results of ``certrail audit verify``, kept in ``audit_verify_runs`` so that
the auditor service can export the latest as metrics (last result and time)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from services.common.db_schema import AuditVerifyRun


@dataclass(frozen=True, slots=True)
class VerifyRun:
    started_at: datetime
    finished_at: datetime
    ok: bool
    rows_checked: int
    problems: int
    summary: str


def record_run(session: Session, run: VerifyRun) -> None:
    session.execute(
        insert(AuditVerifyRun.__table__).values(
            started_at=run.started_at,
            finished_at=run.finished_at,
            ok=run.ok,
            rows_checked=run.rows_checked,
            problems=run.problems,
            summary=run.summary[:20_000],
        )
    )


def latest_run(session: Session) -> VerifyRun | None:
    row = session.scalars(select(AuditVerifyRun).order_by(AuditVerifyRun.id.desc()).limit(1)).first()
    if row is None:
        return None
    return VerifyRun(row.started_at, row.finished_at, row.ok, row.rows_checked, row.problems, row.summary)
