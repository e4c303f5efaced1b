"""No piece of a DSN's password reaches any output, in any spelling libpq accepts (issue 18).

Real ``python -m etl`` processes, every command that touches the warehouse, a server that is not
there (127.0.0.1 on a closed port: each fails at once). Nothing but the command line is used, so
this file runs against any version of etl.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from etl.config import Settings
from tests.conftest import etl_env
from tests.pgutil import seed_ticks

PORT = 9  # nothing listens there: libpq is refused at once
HOST = f"127.0.0.1:{PORT}"


@dataclass(frozen=True)
class Spelling:
    """A DSN (or a DSN and where else libpq finds its password) and the password its author
    means. ``bad``: libpq would misread it (the password cut apart): refused with exit 2."""

    name: str
    password: str
    dsn: str
    bad: bool = False
    env: dict[str, str] = field(default_factory=dict)
    passfile: str | None = None  # a line of the password file PGPASSFILE names
    flag: bool = False  # given as --pg-dsn, not ETL_PG_DSN


KV = f"host=127.0.0.1 port={PORT} user=etl dbname=etl"
# The passwords share no three characters with anything else etl prints (no words, no three
# digits, no "etl"), so any hit is a leak; each stretch between special characters is 3 long,
# so a password cut at one of them still leaks a whole fragment.
SPELLINGS = [
    Spelling("uri-question", "QxJ?ZkW", f"postgresql://etl:QxJ?ZkW@{HOST}/etl"),
    Spelling("uri-slash", "JqR/VbX", f"postgresql://etl:JqR/VbX@{HOST}/etl", bad=True),
    Spelling("uri-hash", "HwN#YpK", f"postgresql://etl:HwN#YpK@{HOST}/etl"),
    Spelling("uri-at", "GzT@FqW", f"postgresql://etl:GzT@FqW@{HOST}/etl", bad=True),
    Spelling("uri-colon", "MvL:KjX", f"postgresql://etl:MvL:KjX@{HOST}/etl"),
    Spelling("uri-bad-percent", "PkD%zQwY", f"postgresql://etl:PkD%zQwY@{HOST}/etl", bad=True),
    Spelling(
        "uri-percent-encoded",
        "RbH@TqW/ZvK?#%",
        f"postgresql://etl:RbH%40TqW%2FZvK%3F%23%25@{HOST}/etl",
    ),
    Spelling("uri-space", "WdQ KxV ZqJ", f"postgresql://etl:WdQ KxV ZqJ@{HOST}/etl", bad=True),
    Spelling("uri-space-encoded", "YqB VxN JwK", f"postgresql://etl:YqB%20VxN%20JwK@{HOST}/etl"),
    Spelling("uri-unicode", "ŽqÄwß€Kv", f"postgresql://etl:ŽqÄwß€Kv@{HOST}/etl"),
    Spelling(
        "uri-unicode-encoded", "ÄqßZwÖj", f"postgresql://etl:%C3%84q%C3%9FZw%C3%96j@{HOST}/etl"
    ),
    Spelling(
        "uri-query-password",
        "FxW&QzK=VkB",
        f"postgresql://etl@{HOST}/etl?sslmode=disable&password=FxW%26QzK%3DVkB",
    ),
    Spelling(
        "uri-query-ampersand",
        "NqVw&ZxKb",
        f"postgresql://etl@{HOST}/etl?password=NqVw&ZxKb",
        bad=True,
    ),
    Spelling("uri-at-and-slash", "LbX@WqK/ZrV", f"postgres://etl:LbX@WqK/ZrV@{HOST}/etl", bad=True),
    Spelling(
        "uri-question-hash-amp", "ZkQ?WqB#VxN&JbT", f"postgresql://etl:ZkQ?WqB#VxN&JbT@{HOST}/etl"
    ),
    Spelling(
        "uri-wrong-case-scheme", "KwZ?QzXb", f"POSTGRESQL://etl:KwZ?QzXb@{HOST}/etl", bad=True
    ),
    Spelling("uri-flag", "XqK?WzB#KvN", f"postgresql://etl:XqK?WzB#KvN@{HOST}/etl", flag=True),
    Spelling("kv-quoted-escaped-quote", "KvB'ZqN XwT", f"{KV} password='KvB\\'ZqN XwT'"),
    Spelling("kv-escaped-spaces", "TzK QmB VxN", f"{KV} password=TzK\\ QmB\\ VxN"),
    Spelling("kv-unquoted-space", "BqW XzK WvN", f"{KV} password=BqW XzK WvN", bad=True),
    Spelling("kv-spaces-around-equals", "JzB=QkN;VwT", f"{KV} password = 'JzB=QkN;VwT'"),
    Spelling("kv-backslashes", "CqW\\ZxK\\VbN", f"{KV} password='CqW\\\\ZxK\\\\VbN'"),
    Spelling("kv-unterminated-quote", "DwK QxB ZkN", f"{KV} password='DwK QxB ZkN", bad=True),
    Spelling(
        "kv-quote-then-more", "QbK'ZxB=KwN", f"{KV} password='QbK'ZxB=KwN", bad=True, flag=True
    ),
    Spelling(
        "pgpassword",
        "UxK?ZqB/WkN@VjT",
        f"postgresql://etl@{HOST}/etl",
        env={"PGPASSWORD": "UxK?ZqB/WkN@VjT"},
    ),
    Spelling(
        "pgpassfile", "VzK:QkB\\WmN", KV, passfile=f"127.0.0.1:{PORT}:etl:etl:VzK\\:QkB\\\\WmN"
    ),
]


@dataclass(frozen=True)
class Command:
    """A command line; ``fresh`` the data dir it needs: ``seeded`` (a staging file with a closed
    hour to roll up) or ``none`` (restore's empty one)."""

    name: str
    args: Callable[[Path], list[str]]  # given the run's directory
    ok: int  # its exit code for a good DSN and no server
    fresh: str = "seeded"
    child: bool = False  # the collector: its hourly rollup child writes rollup.log


COMMANDS = [
    Command("rollup", lambda d: ["rollup"], 3),
    Command("rollup --debug", lambda d: ["--debug", "rollup"], 3),
    Command("rollup json logs", lambda d: ["--log-format", "json", "rollup"], 3),
    Command("status", lambda d: ["status"], 3),
    Command("status --json", lambda d: ["status", "--json"], 3),
    Command("status --json --debug", lambda d: ["--debug", "status", "--json"], 3),
    Command("db url", lambda d: ["db", "url"], 0),
    Command("db init", lambda d: ["db", "init"], 3),
    Command("db init --debug", lambda d: ["--debug", "db", "init"], 3),
    Command("db shell", lambda d: ["db", "shell", "--", "-c", "SELECT 1"], 3),
    Command("backfill", lambda d: ["backfill"], 3),
    Command("reconcile", lambda d: ["reconcile", "--hours", "2"], 3),
    Command("retention --dry-run", lambda d: ["retention", "--dry-run"], 3),
    Command("backup", lambda d: ["backup", str(d / "backup")], 3),
    Command("backup --debug", lambda d: ["--debug", "backup", str(d / "backup")], 3),
    Command("restore", lambda d: ["restore", str(d.parent / "made-backup")], 3, fresh="none"),
    Command("--version", lambda d: ["--version"], 0),
    Command("--version --debug", lambda d: ["--debug", "--version"], 0),
    Command("collect", lambda d: ["collect", "--polls", "1"], 0, child=True),
]
PER_SPELLING = 2


def plan() -> list[tuple[Spelling, Command]]:
    """Every spelling with PER_SPELLING commands or more, and every command with a good spelling
    and a bad one: the good and the bad spellings each go round the commands (no pair twice)."""
    out = []
    for bad in (False, True):
        group = [s for s in SPELLINGS if s.bad == bad]
        per = max(PER_SPELLING, -(-len(COMMANDS) // len(group)))
        out += [
            (group[n % len(group)], COMMANDS[n % len(COMMANDS)]) for n in range(per * len(group))
        ]
    return out


def fragments(password: str) -> set[str]:
    """Every piece of 3 or more characters, as printed plainly, in a repr or in JSON."""
    pieces = {password[i:j] for i in range(len(password)) for j in range(i + 3, len(password) + 1)}
    spelled = set()
    for piece in pieces:
        spelled |= {piece, json.dumps(piece)[1:-1], repr(piece)[1:-1]}
    return spelled


def made_backup(where: Path, staging: Path) -> Path:
    """A backup as `etl backup` writes it (a staging file and a warehouse dump listed in the
    manifest): restore reads it, then fails at the warehouse."""
    where.mkdir()
    shutil.copyfile(staging, where / "ticks.sqlite3")
    (where / "warehouse.dump").write_bytes(b"PGDMP")
    files = {
        name: {"sha256": hashlib.sha256((where / name).read_bytes()).hexdigest(), "bytes": 5}
        for name in ("ticks.sqlite3", "warehouse.dump")
    }
    manifest = {
        "format": 1,
        "etl_version": "0.4.0",
        "created_at": "2026-01-05T00:00:00Z",
        "postgresql": {"version": "16.4", "server": "x", "embedded": False, "pg_dump": "16.4"},
        "staging": {"id": None},
        "rows": {"ticks": 0, "ticks_rejected": 0},
        "files": files,
    }
    (where / "manifest.json").write_text(json.dumps(manifest))
    return where


def run(
    spelling: Spelling, command: Command, base: Path, settings: Settings, seeded: Path
) -> tuple[dict[str, str], int, bool]:
    """Run one command with one spelling: what it printed (stdout, stderr and the rollup
    child's rollup.log), its exit code, and whether it ran with --debug."""
    run_dir = base / f"{spelling.name}--{command.name.replace(' ', '_')}"
    run_dir.mkdir()
    data = run_dir / "data"
    if command.fresh == "seeded":
        data.mkdir()
        shutil.copyfile(seeded, data / "ticks.sqlite3")
    env = etl_env(settings, ETL_DATA_DIR=str(data), ETL_PG_CONNECT_TIMEOUT_S="2")
    for name in ("ETL_SQLITE_PATH", "PGPASSWORD", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        env.pop(name, None)
    env["PGPASSFILE"] = str(run_dir / "no-such-passfile")
    env.update(spelling.env)
    if spelling.passfile is not None:
        passfile = run_dir / "pgpass"
        passfile.write_text(f"# etl test\n{spelling.passfile}\n")
        passfile.chmod(0o600)
        env["PGPASSFILE"] = str(passfile)
    args = command.args(run_dir)
    if spelling.flag:
        args = ["--pg-dsn", spelling.dsn, *args]
    else:
        env["ETL_PG_DSN"] = spelling.dsn
    done = subprocess.run(
        [sys.executable, "-m", "etl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=run_dir,
    )
    out = {"stdout": done.stdout, "stderr": done.stderr}
    log = data / "rollup.log"
    if command.child and done.returncode == 0:
        deadline = time.monotonic() + 30
        while "error" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"no rollup child log in {log}"
            time.sleep(0.1)
        out["rollup.log"] = log.read_text()
    return out, done.returncode, "--debug" in args


@pytest.mark.slow
def test_no_fragment_of_a_password_reaches_any_output(settings: Settings, tmp_path: Path) -> None:
    """Every command that touches the warehouse, with every spelling (see :func:`plan`): not one
    piece of 3 characters of the password in stdout, stderr or rollup.log. A DSN libpq would misread is refused (exit 2), a good one with no server is
    exit 3 (0 for `db url`, `--version` and `collect`), with no traceback unless --debug."""
    seeded = tmp_path / "seeded.sqlite3"
    now_hour = int(time.time() * 1000) // 3_600_000 * 3_600_000
    seed_ticks(seeded, list(settings.symbols), now_hour - 3_600_000, polls=10)
    made_backup(tmp_path / "made-backup", seeded)
    runs = plan()
    for bad in (False, True):
        assert {c.name for s, c in runs if s.bad == bad} == {c.name for c in COMMANDS}
    assert {s.name for s, _ in runs} == {s.name for s in SPELLINGS}
    assert len({(s.name, c.name) for s, c in runs}) == len(runs)
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda sc: run(*sc, base=tmp_path, settings=settings, seeded=seeded), runs)
        )

    leaks, codes = [], []
    for (spelling, command), (out, code, debug) in zip(runs, results, strict=True):
        for where, text in out.items():
            found = sorted(f for f in fragments(spelling.password) if f in text)
            if found:
                leaks.append(f"{spelling.name} / {command.name} / {where}: {found}\n{text}")
        want = 2 if spelling.bad else command.ok
        if code != want or ("Traceback" in "".join(out.values()) and not debug):
            codes.append(f"{spelling.name} / {command.name}: exit {code}, want {want}\n{out}")
    assert not leaks, f"{len(leaks)} leak(s) in {len(runs)} runs:\n\n" + "\n\n".join(leaks)
    assert not codes, "\n\n".join(codes)
