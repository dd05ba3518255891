"""scripts/provision, the check ./scripts/test and .ci/run run first, by fault injection: the real script with a
fake package database. PATH holds fakes of `dpkg-query` (installed = the lines of a file), `id` (the uid the test
chooses) and `apt-get` (records its arguments and "installs" into that file), then the system's own commands
without apt-get, dpkg-query, id or sudo, so nothing real is installed or asked. PostgreSQL is left out
(CREDITS_TEST_DATABASE_URL points elsewhere): the tests that get past the packages need only Redis answering on
127.0.0.1:6379, which scripts/provision itself starts before a normal run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROVISION = ROOT / "scripts" / "provision"
BROWSER = ["chromium", "fonts-liberation"]
E2E = ["kamailio", "kamailio-utils-modules", "kamailio-extra-modules", "sip-tester"]
EVERYTHING = ["postgresql", "redis-server", *BROWSER, *E2E]
HIDDEN = {"apt-get", "apt", "dpkg-query", "id", "sudo"}
STOP_WITHIN_S = 10  # "within seconds", with room for a loaded machine

FAKE_DPKG_QUERY = """#!/bin/sh
# dpkg-query -W -f=... PKG...: "PKG ii " for an installed one, an error for the others (as dpkg-query does).
rc=0
for arg in "$@"; do
    case $arg in
        -*) ;;
        *) if grep -qx "$arg" "$FAKE_INSTALLED"; then echo "$arg ii "
           else echo "dpkg-query: no packages found matching $arg" >&2; rc=1; fi ;;
    esac
done
exit $rc
"""
FAKE_ID = """#!/bin/sh
[ "$1" = "-u" ] && { echo "$FAKE_UID"; exit 0; }
echo "uid=$FAKE_UID"
"""
FAKE_APT_GET = """#!/bin/sh
echo "$*" >>"$FAKE_APT_LOG"
if [ "$1" = "install" ]; then
    for arg in "$@"; do case $arg in install|-*) ;; *) echo "$arg" >>"$FAKE_INSTALLED" ;; esac; done
fi
"""


@pytest.fixture(scope="module")
def system_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The system's commands, less the ones faked or hidden here."""
    sysbin = tmp_path_factory.mktemp("sysbin")
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = sysbin / name
            if name not in HIDDEN and not target.exists():
                target.symlink_to(os.path.join(directory, name))
    return sysbin


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    apt_calls: list[str]


@pytest.fixture
def provision(tmp_path: Path, system_bin: Path) -> Callable[..., Run]:
    def run(*, installed: list[str], uid: int, apt_get: bool = True, env: dict[str, str] | None = None) -> Run:
        fake = tmp_path / "fakebin"
        fake.mkdir(exist_ok=True)
        scripts = {"dpkg-query": FAKE_DPKG_QUERY, "id": FAKE_ID}
        if apt_get:
            scripts["apt-get"] = FAKE_APT_GET
        for name, text in scripts.items():
            (fake / name).write_text(text)
            (fake / name).chmod(0o755)
        (tmp_path / "installed").write_text("".join(f"{pkg}\n" for pkg in installed))
        apt_log = tmp_path / "apt.log"
        apt_log.write_text("")
        run_env = {
            "PATH": f"{fake}:{system_bin}",
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "FAKE_INSTALLED": str(tmp_path / "installed"),
            "FAKE_APT_LOG": str(apt_log),
            "FAKE_UID": str(uid),
            # PostgreSQL is elsewhere: the local one is neither checked nor started.
            "CREDITS_TEST_DATABASE_URL": "postgresql://postgres@192.0.2.1:5432/postgres",
            **(env or {}),
        }
        started = time.monotonic()
        done = subprocess.run([str(PROVISION)], env=run_env, capture_output=True, text=True, timeout=60, check=False)
        return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started,
                   apt_log.read_text().splitlines())

    return run


def _redis_answers() -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", 6379)) == 0


needs_redis = pytest.mark.skipif(not _redis_answers(), reason="Redis does not answer on 127.0.0.1:6379 "
                                 "(./scripts/test starts it unless CREDITS_TEST_PROVISION=0)")


def test_not_root_stops_within_seconds_naming_the_missing_packages_and_the_command(provision):
    run = provision(installed=["redis-server"], uid=1000)

    assert run.returncode == 1
    assert run.seconds < STOP_WITHIN_S
    assert "browser tests (tests/browser): chromium fonts-liberation" in run.stderr
    assert ("Kamailio e2e tests (tests/e2e): kamailio kamailio-utils-modules kamailio-extra-modules sip-tester"
            in run.stderr)
    assert ("sudo apt-get install --no-install-recommends chromium fonts-liberation kamailio "
            "kamailio-utils-modules kamailio-extra-modules sip-tester") in run.stderr
    assert "CREDITS_BROWSER_ALLOW_SKIP=1" in run.stderr
    assert "CREDITS_E2E_ALLOW_SKIP=1" in run.stderr
    assert "CREDITS_TEST_PROVISION=0" in run.stderr
    assert run.apt_calls == []


def test_an_opt_out_drops_its_packages_from_what_is_required_and_says_so(provision):
    run = provision(installed=["redis-server"], uid=1000, env={"CREDITS_BROWSER_ALLOW_SKIP": "1"})

    assert run.returncode == 1
    assert "chromium fonts-liberation (CREDITS_BROWSER_ALLOW_SKIP=1: their tests will be skipped)" in run.stdout
    assert ("sudo apt-get install --no-install-recommends kamailio kamailio-utils-modules kamailio-extra-modules "
            "sip-tester\n") in run.stderr
    assert "browser tests (tests/browser)" not in run.stderr
    assert run.apt_calls == []


def test_root_without_apt_get_stops_with_the_debian_command(provision):
    run = provision(installed=["redis-server", *BROWSER], uid=0, apt_get=False)

    assert run.returncode == 1
    assert run.seconds < STOP_WITHIN_S
    assert "No apt-get on this machine" in run.stderr
    assert "  apt-get install --no-install-recommends kamailio kamailio-utils-modules kamailio-extra-modules " \
           "sip-tester\n" in run.stderr
    assert "sudo" not in run.stderr


@needs_redis
def test_root_with_apt_get_updates_once_and_installs_what_is_missing_without_recommends(provision):
    run = provision(installed=["redis-server", "fonts-liberation", "kamailio"], uid=0)

    assert run.returncode == 0, run.stderr
    assert run.apt_calls == [
        "update -qq",
        "install -y -qq --no-install-recommends chromium kamailio-utils-modules kamailio-extra-modules sip-tester",
    ]
    assert "installing the missing system packages: chromium kamailio-utils-modules kamailio-extra-modules " \
           "sip-tester" in run.stdout
    assert "the system packages needed are installed" in run.stdout


@needs_redis
@pytest.mark.parametrize("uid", [0, 1000])
def test_everything_present_is_a_quick_check_that_asks_apt_nothing(provision, uid):
    run = provision(installed=EVERYTHING, uid=uid)

    assert run.returncode == 0, run.stderr
    assert run.apt_calls == []
    assert run.stderr == ""
    assert run.seconds < STOP_WITHIN_S
