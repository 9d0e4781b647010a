"""Per-extension call features in the store: forwarding, timeouts, duration, voicemail."""

from __future__ import annotations

import pytest

from sipswitch.store import Database, InvalidExtension


async def test_features_round_trip_and_clear(db: Database) -> None:
    await db.extensions.add("100", "password-1", "sipswitch")
    ext = await db.extensions.set(
        "100", forward_busy="101", forward_no_answer="*97", no_answer_timeout=20,
        max_call_duration=3600, voicemail=True, voicemail_pin="1234",
    )
    assert (ext.forward_busy, ext.forward_no_answer, ext.no_answer_timeout) == ("101", "*97", 20)
    assert ext.max_call_duration == 3600 and ext.voicemail and ext.voicemail_pin == "1234"
    again = await db.extensions.get("100")
    assert again == ext
    cleared = await db.extensions.set("100", forward_busy=None, no_answer_timeout=None)
    assert cleared.forward_busy is None and cleared.no_answer_timeout is None
    assert cleared.forward_no_answer == "*97"


@pytest.mark.parametrize(
    "change",
    [
        {"forward_always": "abc"},
        {"forward_busy": "1" * 33},
        {"no_answer_timeout": 1},
        {"max_call_duration": 0},
        {"voicemail_pin": "12"},
        {"colour": "blue"},
    ],
)
async def test_bad_features_are_refused(db: Database, change: dict[str, object]) -> None:
    await db.extensions.add("100", "password-1", "sipswitch")
    with pytest.raises(InvalidExtension):
        await db.extensions.set("100", **change)
