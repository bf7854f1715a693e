"""`backfill run --window HH:MM-HH:MM` (UTC) works only inside its daily window; outside it does nothing, exit 0.

A window whose end is earlier than its start crosses midnight; the time left bounds the run like
--max-duration does.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dbmigrate.backfill import Window, parse_duration
from dbmigrate.errors import ConfigurationError
from tests.conftest import add_backfill_revisions, backfill_rows, run_dbmigrate


def window_around(now: datetime, starts_in: timedelta, lasts: timedelta) -> str:
    start, end = now + starts_in, now + starts_in + lasts
    return f"{start:%H:%M}-{end:%H:%M}"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_backfill_run_outside_its_window_does_nothing_and_inside_it_works(project: Path, database_url: str) -> None:
    add_backfill_revisions(project, 500, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url).returncode == 0
    now = datetime.now(timezone.utc)

    outside = run_dbmigrate(
        "backfill", "run", "--window", window_around(now, timedelta(hours=2), timedelta(hours=1)),
        "--format", "json", cwd=project, database_url=database_url,
    )  # fmt: skip

    assert outside.returncode == 0, outside.stderr
    assert json.loads(outside.stdout)["outcome"] == "outside-window"
    assert "outside the window" in json.loads(outside.stdout)["summary"]
    assert [(row["state"], row["rows_done"]) for row in backfill_rows(database_url)] == [("queued", 0)]

    inside = run_dbmigrate(
        "backfill", "run", "--window", window_around(now, -timedelta(hours=1), timedelta(hours=2)),
        "--format", "json", cwd=project, database_url=database_url,
    )  # fmt: skip

    assert inside.returncode == 0, inside.stderr
    assert json.loads(inside.stdout)["outcome"] == "done"
    assert [(row["state"], row["rows_done"]) for row in backfill_rows(database_url)] == [("done", 500)]


def test_a_window_crossing_midnight_holds_the_hours_on_both_sides() -> None:
    window = Window.parse("22:00-04:00")
    day = datetime(2026, 1, 1)

    assert window.seconds_left(day.replace(hour=23, minute=30)) == 4.5 * 3600
    assert window.seconds_left(day.replace(hour=1)) == 3 * 3600
    assert window.seconds_left(day.replace(hour=4)) is None
    assert window.seconds_left(day.replace(hour=12)) is None
    assert window.seconds_left(day.replace(hour=21, minute=59)) is None


def test_a_window_within_a_day_holds_only_its_hours() -> None:
    window = Window.parse("01:00-05:00")
    day = datetime(2026, 1, 1)

    assert window.seconds_left(day.replace(hour=1)) == 4 * 3600
    assert window.seconds_left(day.replace(hour=4, minute=59)) == 60
    assert window.seconds_left(day.replace(hour=5)) is None
    assert window.seconds_left(day.replace(hour=0, minute=59)) is None


@pytest.mark.parametrize("text", ["1-5", "25:00-02:00", "01:00-01:00", "01:00", "01:60-02:00"])
def test_a_malformed_window_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError):
        Window.parse(text)


@pytest.mark.parametrize(("text", "seconds"), [("45", 45), ("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2h", 7200)])
def test_max_duration_takes_seconds_or_hours_and_minutes(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "soon", "-5", "30x"])
def test_a_malformed_max_duration_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_duration(text)
