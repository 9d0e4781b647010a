"""CDRs: rows in the database and daily CSV files named by the UTC day of the call start."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipswitch.store import CdrRecord, Database
from sipswitch.store.cdr import CSV_COLUMNS

DAY1 = datetime(2024, 3, 9, 23, 59, 58, tzinfo=UTC).timestamp()
DAY2 = datetime(2024, 3, 10, 0, 0, 5, tzinfo=UTC).timestamp()


def record(call_id: str, start: float, **changes: object) -> CdrRecord:
    values: dict[str, object] = {
        "call_id": call_id,
        "caller": "100",
        "callee": "101",
        "start": start,
        "answer": start + 1.5,
        "end": start + 11.5,
        "duration": 11.5,
        "billable_seconds": 10,
        "disposition": "ANSWERED",
        "sip_status": 200,
        "hangup_side": "caller",
    } | changes
    return CdrRecord(**values)  # type: ignore[arg-type]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


async def test_rows_and_daily_csv_files(db: Database, data_dir: Path) -> None:
    late = record("a@h", DAY1)
    missed = record(
        "b@h", DAY2, answer=None, billable_seconds=0, duration=30.0, end=DAY2 + 30,
        disposition="NO ANSWER", sip_status=408, hangup_side="system",
    )  # fmt: skip
    await db.cdr.add([late, missed])
    assert await db.cdr.query(newest_first=False) == [late, missed]
    assert await db.cdr.query(since=DAY2) == [missed]
    assert await db.cdr.query(until=DAY2) == [late]

    day1 = read_csv(data_dir / "cdr" / "2024-03-09.csv")
    day2 = read_csv(data_dir / "cdr" / "2024-03-10.csv")
    assert day1[0] == list(CSV_COLUMNS) and day2[0] == list(CSV_COLUMNS)
    assert day1[1] == [
        "a@h", "100", "101", "2024-03-09T23:59:58.000Z", "2024-03-09T23:59:59.500Z",
        "2024-03-10T00:00:09.500Z", "11.500", "10", "ANSWERED", "200", "caller",
    ]  # fmt: skip
    assert day2[1][4] == "" and day2[1][8:] == ["NO ANSWER", "408", "system"]


async def test_csv_header_only_when_file_is_new(db: Database, data_dir: Path) -> None:
    await db.cdr.add([record("1", DAY1)])
    await db.cdr.add([record("2", DAY1 + 1), record("3", DAY1 + 1.5)])
    rows = read_csv(data_dir / "cdr" / "2024-03-09.csv")
    assert [row[0] for row in rows] == ["call_id", "1", "2", "3"]
    assert len(await db.cdr.query()) == 3


async def test_csv_cells_cannot_become_formulas(db: Database, data_dir: Path) -> None:
    await db.cdr.add([record("x", DAY1, caller="=HYPERLINK(1)", callee="+4930123")])
    row = read_csv(data_dir / "cdr" / "2024-03-09.csv")[1]
    assert row[1:3] == ["'=HYPERLINK(1)", "+4930123"]
    stored = await db.cdr.query()
    assert stored[0].caller == "=HYPERLINK(1)"


@pytest.mark.parametrize(
    "changes",
    [
        {"disposition": "HUNG UP"},
        {"hangup_side": "nobody"},
    ],
)
async def test_invalid_records_write_nothing(
    db: Database, data_dir: Path, changes: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        await db.cdr.add([record("ok", DAY1), record("bad", DAY1, **changes)])
    assert await db.cdr.query() == []
    assert not (data_dir / "cdr").exists()


async def test_query_limit_and_order(db: Database) -> None:
    await db.cdr.add([record(str(i), DAY1 + i) for i in range(5)])
    assert [r.call_id for r in await db.cdr.query(limit=2)] == ["4", "3"]
    assert [r.call_id for r in await db.cdr.query(limit=2, newest_first=False)] == ["0", "1"]


async def test_a_clock_step_back_does_not_lose_the_record(db: Database, data_dir: Path) -> None:
    stepped = record("s", DAY1, answer=DAY1 - 0.5, end=DAY1 - 2, duration=-2.0, billable_seconds=0)
    await db.cdr.add([stepped])
    assert await db.cdr.query() == [stepped]
    assert len(read_csv(data_dir / "cdr" / "2024-03-09.csv")) == 2
