"""Call detail records: one row per call in the database and in a daily CSV file."""

from __future__ import annotations

import asyncio
import csv
import fcntl
import io
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sipswitch.store import schema

DISPOSITIONS = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CANCELLED", "UNAVAILABLE")
HANGUP_SIDES = ("caller", "callee", "system", "")
CSV_COLUMNS = (
    "call_id",
    "caller",
    "callee",
    "start",
    "answer",
    "end",
    "duration",
    "billable_seconds",
    "disposition",
    "sip_status",
    "hangup_side",
)
# Spreadsheets run cells that begin like a formula; a leading quote keeps them text.
_FORMULA_START = re.compile(r"^(?:[=@\t\r]|[+-](?![0-9]+$))")


@dataclass(frozen=True)
class CdrRecord:
    call_id: str
    caller: str
    callee: str
    start: float
    answer: float | None
    end: float
    duration: float
    billable_seconds: int
    disposition: str
    sip_status: int
    hangup_side: str

    def validate(self) -> None:
        # Times are not checked: a wall clock stepped back mid-call must not cost the record.
        if self.disposition not in DISPOSITIONS:
            raise ValueError(f"unknown CDR disposition {self.disposition!r}")
        if self.hangup_side not in HANGUP_SIDES:
            raise ValueError(f"unknown CDR hangup side {self.hangup_side!r}")


def day_of(timestamp: float) -> str:
    """The UTC calendar day (YYYY-MM-DD) of an epoch timestamp."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _text_cell(value: str) -> str:
    return "'" + value if _FORMULA_START.match(value) else value


def _csv_row(record: CdrRecord) -> list[str]:
    return [
        _text_cell(record.call_id),
        _text_cell(record.caller),
        _text_cell(record.callee),
        _iso(record.start),
        _iso(record.answer),
        _iso(record.end),
        f"{record.duration:.3f}",
        str(record.billable_seconds),
        record.disposition,
        str(record.sip_status),
        record.hangup_side,
    ]


def _from_row(row: Row[Any]) -> CdrRecord:
    return CdrRecord(
        call_id=row.call_id,
        caller=row.caller,
        callee=row.callee,
        start=row.start_time,
        answer=row.answer_time,
        end=row.end_time,
        duration=row.duration,
        billable_seconds=row.billable_seconds,
        disposition=row.disposition,
        sip_status=row.sip_status,
        hangup_side=row.hangup_side,
    )


class CdrStore:
    """Writes CDR batches to the ``cdr`` table and to ``DATA/cdr/YYYY-MM-DD.csv`` (UTC day)."""

    def __init__(self, engine: AsyncEngine, data_dir: Path) -> None:
        self._engine = engine
        self.csv_dir = data_dir / "cdr"
        self._csv_lock = asyncio.Lock()

    async def add(self, records: list[CdrRecord]) -> None:
        """Store the records in one transaction, then append them to the daily CSV files."""
        if not records:
            return
        for record in records:
            record.validate()
        rows = [
            {
                "day": day_of(r.start),
                "call_id": r.call_id,
                "caller": r.caller,
                "callee": r.callee,
                "start_time": r.start,
                "answer_time": r.answer,
                "end_time": r.end,
                "duration": r.duration,
                "billable_seconds": r.billable_seconds,
                "disposition": r.disposition,
                "sip_status": r.sip_status,
                "hangup_side": r.hangup_side,
            }
            for r in records
        ]
        async with self._engine.begin() as conn:
            await conn.execute(schema.cdr.insert(), rows)
        by_day: dict[str, list[CdrRecord]] = defaultdict(list)
        for record in records:
            by_day[day_of(record.start)].append(record)
        async with self._csv_lock:
            await asyncio.to_thread(self._append_csv, by_day)

    def _append_csv(self, by_day: dict[str, list[CdrRecord]]) -> None:
        """Append each day's rows in one write under an exclusive lock, so the processes of
        one server (worker processes) never interleave within a row or write the header
        twice."""
        self.csv_dir.mkdir(parents=True, exist_ok=True)
        for day, records in sorted(by_day.items()):
            text = io.StringIO()
            csv.writer(text).writerows(_csv_row(record) for record in records)
            fd = os.open(self.csv_dir / f"{day}.csv", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size == 0:
                    header = io.StringIO()
                    csv.writer(header).writerow(CSV_COLUMNS)
                    text = io.StringIO(header.getvalue() + text.getvalue())
                data = text.getvalue().encode("utf-8")
                while data:
                    data = data[os.write(fd, data) :]
            finally:
                os.close(fd)

    async def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        newest_first: bool = True,
    ) -> list[CdrRecord]:
        """Records whose start is in ``[since, until)``, at most ``limit`` of them."""
        table = schema.cdr
        query = select(table)
        if since is not None:
            query = query.where(table.c.start_time >= since)
        if until is not None:
            query = query.where(table.c.start_time < until)
        order = table.c.start_time.desc() if newest_first else table.c.start_time
        query = query.order_by(order, table.c.id).limit(max(0, limit))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_from_row(row) for row in rows]
