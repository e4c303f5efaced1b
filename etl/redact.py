"""Every password this process knows of, kept out of everything it prints.

Masking a DSN by structure (:mod:`etl.dsn`) covers the DSN itself; a password also reaches
output through other text: libpq's and ADBC's messages, tracebacks, a child's log. So the process
keeps one set of secrets, the passwords of every DSN it was given (as written, percent-decoded,
and as a malformed DSN's author most likely meant them) and the ones libpq would find elsewhere
(``PGPASSWORD``, the password file), and :func:`scrub` replaces each of them by ``***``. The
command line scrubs whatever it writes to standard output and standard error
(:func:`install`), its one-line errors and ``--debug`` tracebacks; the log handlers scrub every
record.

>>> remember_dsn("postgresql://etl:s3cret@db/etl", env={})
>>> scrub("login as etl/s3cret failed")
'login as etl/*** failed'

Values shorter than :data:`MIN_LENGTH` are not scrubbed from free text (a one-letter password
would blank every such letter); DSNs still mask them by structure.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from etl import dsn as dsns

MASK = dsns.MASK
MIN_LENGTH = 3

_lock = threading.Lock()
_secrets: set[str] = set()
_spellings: tuple[str, ...] = ()  # every secret as it may be printed, longest first
_dsns_seen: set[str] = set()


def _printed(secret: str) -> set[str]:
    """The ways ``secret`` may appear in output: as is, inside a Python repr (``{x!r}``) or a
    JSON string (``--json``, ``--log-format json``; non-ASCII escaped or not)."""
    backslashed = secret.replace("\\", "\\\\")
    return {
        secret,
        backslashed,
        backslashed.replace("'", "\\'"),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    }


def remember(*values: str | None) -> None:
    """Add secrets (``None``, empty and short values are skipped)."""
    global _spellings
    fresh = {v for v in values if v and len(v) >= MIN_LENGTH and v not in _secrets}
    if not fresh:
        return
    with _lock:
        _secrets.update(fresh)
        every = {s for secret in _secrets for s in _printed(secret) if len(s) >= MIN_LENGTH}
        _spellings = tuple(sorted(every, key=len, reverse=True))


def remember_dsn(text: str | None, env: Mapping[str, str] | None = None) -> None:
    """Add every password of DSN ``text``: its own (each spelling), ``PGPASSWORD``, and the
    password file's line libpq would use for it. Cheap to call again with the same DSN."""
    env = os.environ if env is None else env
    remember(env.get("PGPASSWORD"))
    if not text or text in _dsns_seen:
        return
    parsed = dsns.parse(text)
    remember(*parsed.secrets(), *dsns.passfile_passwords(parsed, env))
    with _lock:
        _dsns_seen.add(text)


def remember_invocation(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Add the DSNs a command line may use before its settings are even read: ``ETL_PG_DSN``
    and every ``--pg-dsn`` argument (a usage error must not print them either)."""
    env = os.environ if env is None else env
    remember_dsn(env.get("ETL_PG_DSN"), env)
    for i, arg in enumerate(argv):
        if arg == "--pg-dsn" and i + 1 < len(argv):
            remember_dsn(argv[i + 1], env)
        elif arg.startswith("--pg-dsn="):
            remember_dsn(arg.partition("=")[2], env)


def scrub(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for spelling in _spellings:
        if spelling in text:
            text = text.replace(spelling, MASK)
    return text


class ScrubbedStream:
    """A text stream that scrubs what is written to it; everything else is the wrapped
    stream's (``isatty``, ``fileno``, ``encoding``, ...)."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner

    def write(self, text: Any) -> int:
        if isinstance(text, str):
            self.inner.write(scrub(text))
            return len(text)
        return self.inner.write(text)  # bytes: the wrapped stream says what it thinks of them

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install() -> None:
    """Scrub everything this process writes to ``sys.stdout`` and ``sys.stderr`` from now on
    (rich consoles, log handlers, ``print`` and tracebacks all write there). Idempotent."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ScrubbedStream):
            setattr(sys, name, ScrubbedStream(stream))


def unscrubbed(stream: TextIO) -> TextIO:
    """The stream under a :class:`ScrubbedStream`: for output that must show a secret on
    purpose (``etl db url --show-password``)."""
    return stream.inner if isinstance(stream, ScrubbedStream) else stream  # type: ignore[return-value]
