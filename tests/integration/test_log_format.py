"""CREDITS_LOG_FORMAT in a real process: `flask --app wsgi db upgrade` (create_app, then alembic's INFO lines)
logs readable text lines in development, JSON lines under test, as the setting says when it is set, and a bad
value stops the command with one line naming the setting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from credits.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

FLASK = [sys.executable, "-m", "flask", "--app", "wsgi"]
TEXT_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} INFO  alembic\.runtime\.migration: Running upgrade .*")


def upgrade(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    env.update(CREDITS_DATABASE_URL=f"sqlite:///{tmp_path / 'log-format.db'}", **settings)
    return subprocess.run([*FLASK, "db", "upgrade"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def migration_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "Running upgrade" in line]
    assert len(lines) >= 6, result.stderr[-3000:]  # one per migration
    return lines


@pytest.mark.parametrize("settings", [{"CREDITS_ENV": "development"},
                                      {"CREDITS_ENV": "test", "CREDITS_LOG_FORMAT": "text"}])
def test_text_lines_in_development_or_when_asked(tmp_path: Path, settings: dict[str, str]) -> None:
    lines = migration_lines(upgrade(tmp_path, **settings))
    for line in lines:
        assert TEXT_LINE.fullmatch(line), line
    assert not any(line.startswith("{") for line in lines)


@pytest.mark.parametrize("settings", [{"CREDITS_ENV": "test"},
                                      {"CREDITS_ENV": "development", "CREDITS_LOG_FORMAT": "json"}])
def test_json_lines_under_test_or_when_asked(tmp_path: Path, settings: dict[str, str]) -> None:
    for line in migration_lines(upgrade(tmp_path, **settings)):
        record = json.loads(line)
        assert (record["level"], record["logger"]) == ("INFO", "alembic.runtime.migration")
        assert record["time"].endswith("+00:00") and record["message"].startswith("Running upgrade")


def test_a_bad_log_format_stops_the_command_naming_the_setting(tmp_path: Path) -> None:
    result = upgrade(tmp_path, CREDITS_ENV="development", CREDITS_LOG_FORMAT="yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == "credits: invalid configuration: CREDITS_LOG_FORMAT must be json or text"
    assert not (tmp_path / "log-format.db").exists()
