"""PostgreSQL connection strings read by libpq's own rules, in one place.

libpq takes a DSN in two forms, and this module reads both exactly as libpq does
(``fe-connect.c``: ``conninfo_uri_parse_options`` and ``conninfo_parse``):

* a URI, ``postgresql://`` or ``postgres://`` (case matters): user info up to the first ``@``
  met before any ``/``, the password after the user name's first ``:``; hosts and ports separated
  by commas; ``/dbname``; ``?key=value&...`` parameters (``password=`` among them). Every part
  is percent-decoded; a literal space is refused. ``?`` and ``#`` mean nothing special in the
  user info: ``postgresql://u:a?b#c@db/etl`` has the password ``a?b#c``.
* ``key=value`` words separated by spaces (spaces around ``=`` allowed), a value in single quotes
  when it holds spaces, ``\\'`` and ``\\\\`` escaping inside and outside quotes.

A password is hidden by structure: :meth:`Dsn.masked` rebuilds the text with each secret value
(``password``, ``sslpassword``, ``oauth_client_secret``) replaced by ``***``. A DSN that libpq
would misread or refuse in a way that cuts a password apart (an unencoded ``@`` or ``/`` in it,
a space in a ``key=value`` password) has a :attr:`Dsn.problem`, and every stretch that may hold
a piece of the password is hidden whole: the user info up to the last ``@``, or the rest of the
string. libpq's own message would quote such pieces (``could not translate host name
"cret@db"``), so a DSN with a problem must never reach libpq (:meth:`Dsn.check`).

>>> parse("postgresql://etl:s3cret@db:5432/etl").masked()
'postgresql://etl:***@db:5432/etl'
>>> parse("host=db password='a b\\\\'c' dbname=etl").password
"a b'c"
>>> d = parse("postgresql://etl:p@ss@db/etl")    # libpq: password "p", host "ss@db"
>>> d.masked(), d.problem is not None
('postgresql://***@db/etl', True)
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from etl.errors import ConfigError

URI_PREFIXES = ("postgresql://", "postgres://")
# Keywords whose values are secrets: masked wherever a DSN is shown.
SECRET_KEYS = frozenset({"password", "sslpassword", "oauth_client_secret"})
MASK = "***"
# Any other scheme: libpq would read it as one bad key=value word, but its author wrote a URI.
_ANY_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HEX = frozenset("0123456789abcdefABCDEF")
_C_SPACE = " \t\n\r\f\v"  # C's isspace(), what conninfo_parse splits on
_ENCODE = "percent-encode it ('@' %40, '/' %2F, '%' %25, space %20)"


@dataclass(frozen=True)
class Piece:
    """A stretch of a DSN's text: ``masked`` ones are shown as ``***``, ``dropped`` ones are
    left out when the password is taken out of the DSN (the password and its syntax)."""

    text: str
    masked: bool = False
    dropped: bool = False
    guesses: tuple[str, ...] = ()  # what may be a secret inside a masked stretch


@dataclass(frozen=True)
class Dsn:
    """A DSN as libpq reads it. Build it with :func:`parse`.

    ``head`` is the text (of a URI: up to its query) in pieces that join to it; ``query`` a
    URI's parameters, each in pieces (``None``: no ``?``). ``params`` are libpq's keywords with
    their decoded values (the last one given wins). ``guesses`` are what the author of a
    malformed DSN most likely meant as a password: secrets too.
    """

    text: str
    uri: bool
    head: tuple[Piece, ...]
    query: tuple[tuple[Piece, ...], ...] | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None
    guesses: tuple[str, ...] = ()

    @property
    def password(self) -> str | None:
        """The password libpq takes from the DSN itself (``None`` if none, or empty)."""
        return self.params.get("password") or None

    def masked(self) -> str:
        """The DSN with every secret (and every stretch that may hold one) shown as ``***``."""
        out = _join(self.head, masked=True)
        if self.query is not None:
            out += "?" + "&".join(_join(param, masked=True) for param in self.query)
        return out

    def without_password(self) -> str:
        """The DSN with its ``password`` taken out (user info ``:password`` and every
        ``password=`` parameter), for a command line; the rest exactly as written."""
        if not self.uri:
            return _join(p for p in self.head if not p.dropped).strip()
        out = _join(p for p in self.head if not p.dropped)
        kept = [_join(param) for param in self.query or () if not any(p.dropped for p in param)]
        if kept:
            out += "?" + "&".join(kept)
        return out

    def secrets(self) -> set[str]:
        """Every spelling of a secret in this DSN: as written and as libpq decodes it."""
        out = {p.text for p in self._pieces() if p.masked and p.text}
        out |= {g for p in self._pieces() for g in p.guesses}
        out |= {v for k, v in self.params.items() if k.lower() in SECRET_KEYS and v}
        return out | {g for g in self.guesses if g}

    def with_params(self, extra: Mapping[str, str]) -> str:
        """The DSN with ``extra`` keywords added where it does not set them itself (values must
        need no quoting or encoding: numbers, plain words)."""
        add = {k: v for k, v in extra.items() if k not in self.params}
        if not add:
            return self.text
        if not self.uri:
            appended = " ".join([self.text, *(f"{k}={v}" for k, v in add.items())])
            if dict(parse(appended).params) == {**self.params, **add}:
                return appended
            # The text ends inside a value (``password=`` reads on past a space, a trailing
            # backslash escapes it): written anew, every value quoted.
            return " ".join(f"{k}={_quoted(v)}" for k, v in {**self.params, **add}.items())
        joined = "&".join(f"{k}={v}" for k, v in add.items())
        if self.query is None:
            return f"{self.text}?{joined}"
        return f"{self.text}{'&' if self.text[-1] not in '?&' else ''}{joined}"

    def check(self) -> Dsn:
        """This DSN, if libpq can read it as its author meant; else a :class:`ConfigError`
        (exit 2) naming the problem, the DSN masked."""
        if self.problem:
            raise ConfigError(f"bad PostgreSQL DSN {self.masked()}: {self.problem}")
        return self

    def _pieces(self) -> Iterable[Piece]:
        yield from self.head
        for param in self.query or ():
            yield from param


def _quoted(value: str) -> str:
    """A ``key=value`` value as libpq reads it back: quoted, ``\\`` and ``'`` escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _join(pieces: Iterable[Piece], *, masked: bool = False) -> str:
    """The pieces' text; with ``masked``, each run of masked pieces as one ``***`` (an empty
    masked piece hides nothing and shows nothing)."""
    out: list[str] = []
    hiding = False
    for piece in pieces:
        if masked and piece.masked:
            if piece.text and not hiding:
                out.append(MASK)
            hiding = hiding or bool(piece.text)
        else:
            out.append(piece.text)
            hiding = hiding and not piece.text
    return "".join(out)


def parse(text: str) -> Dsn:
    """``text`` read as libpq reads it; never raises (a malformed DSN has a ``problem``).

    >>> parse("postgresql://u:a%40b@db/etl?sslmode=require").params["password"]
    'a@b'
    >>> parse("host=db user=etl password=s3cret").masked()
    'host=db user=etl password=***'
    """
    for prefix in URI_PREFIXES:
        if text.startswith(prefix):
            return _uri(text, prefix)
    scheme = _ANY_SCHEME.match(text)
    if scheme:
        dsn = _uri(text, scheme.group())
        return replace(
            dsn,
            problem="not a PostgreSQL URI: it must start with postgresql:// (or postgres://)",
        )
    return _keywords(text)


def mask(text: str) -> str:
    """``text`` (a DSN) with its password shown as ``***``.

    >>> mask("postgresql://etl:s3cret@db/etl?password=more")
    'postgresql://etl:***@db/etl?password=***'
    """
    return parse(text).masked()


# -- key=value ---------------------------------------------------------------------------------


def _keywords(text: str) -> Dsn:
    """``conninfo_parse``: words ``key=value``; a value quoted in ``'...'`` or ending at a space;
    a backslash takes the next character literally, in quotes or not."""
    head: list[Piece] = []
    params: dict[str, str] = {}
    guesses: list[str] = []
    n, i = len(text), 0
    last_secret_at: int | None = None  # where the last secret value began, if nothing but
    # spaces came after it: a word without '=' there is most likely the rest of that value

    def give_up(start: int, problem: str) -> Dsn:
        """What is left from ``start`` may be a piece of a password: hidden whole. What was
        meant runs from the last secret value (its quote dropped) to some later space."""
        meant = text[last_secret_at if last_secret_at is not None else start :]
        guesses.extend(_prefixes(meant.removeprefix("'"), _C_SPACE))
        head.append(Piece(text[start:], masked=True))
        return Dsn(text, False, tuple(head), None, params, problem, tuple(guesses))

    while i < n:
        if text[i] in _C_SPACE:
            start = i
            while i < n and text[i] in _C_SPACE:
                i += 1
            head.append(Piece(text[start:i]))
            continue
        start = i
        while i < n and text[i] != "=" and text[i] not in _C_SPACE:
            i += 1
        key = text[start:i]
        while i < n and text[i] in _C_SPACE:
            i += 1
        if i >= n or text[i] != "=":
            return give_up(
                start,
                "a word without '=' (a value with spaces goes in single quotes, "
                "password='a b', or has its spaces escaped, a\\ b)",
            )
        if not key:
            return give_up(start, "an '=' with no keyword before it")
        i += 1
        while i < n and text[i] in _C_SPACE:
            i += 1
        value_at = i
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    if key.lower() in SECRET_KEYS:
                        last_secret_at = value_at
                    head.append(Piece(text[start:value_at]))
                    return give_up(
                        value_at,
                        "a quoted value with no closing quote (a quote inside is written \\')",
                    )
                if text[i] == "\\":
                    i += 1
                    if i < n:
                        value.append(text[i])
                        i += 1
                    continue
                if text[i] == "'":
                    i += 1
                    break
                value.append(text[i])
                i += 1
            if i < n and text[i] not in _C_SPACE:
                # libpq reads on as a new keyword (password='a'b=c is "a", then b=c): a slip
                # whose text is most likely part of the quoted value.
                if key.lower() in SECRET_KEYS:
                    last_secret_at = value_at
                    guesses.append("".join(value))  # what libpq takes for the password
                head.append(Piece(text[start:value_at]))
                head.append(Piece(text[value_at:i], masked=key.lower() in SECRET_KEYS))
                return give_up(i, "a quoted value followed by more than a space")
        else:
            while i < n and text[i] not in _C_SPACE:
                if text[i] == "\\":
                    i += 1
                    if i < n:
                        value.append(text[i])
                        i += 1
                else:
                    value.append(text[i])
                    i += 1
        secret = key.lower() in SECRET_KEYS
        dropped = key == "password"
        head.append(Piece(text[start:value_at], dropped=dropped))
        head.append(Piece(text[value_at:i], masked=secret, dropped=dropped))
        params[key] = "".join(value)
        last_secret_at = value_at if secret else None
        if secret:
            guesses.append(params[key])
    return Dsn(text, False, tuple(head), None, params, None, tuple(guesses))


# -- URIs --------------------------------------------------------------------------------------


class _Bad(Exception):
    """A part of a URI libpq would refuse; the message names the part, never its value."""


def _decode(raw: str, what: str) -> str:
    """``conninfo_uri_decode``: ``%XX`` escapes (not ``%00``), and no literal space."""
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == " ":
            raise _Bad(f"{what} holds a space: {_ENCODE}")
        if c != "%":
            out += c.encode()
            i += 1
            continue
        pair = raw[i + 1 : i + 3]
        if len(pair) < 2 or not set(pair) <= _HEX:
            raise _Bad(f"{what} holds a '%' that does not start an escape: {_ENCODE}")
        if pair == "00":
            raise _Bad(f"{what} holds %00, which libpq refuses")
        out.append(int(pair, 16))
        i += 3
    return out.decode("utf-8", errors="replace")


def _store(params: dict[str, str], key: str, raw: str, what: str, problems: list[str]) -> None:
    try:
        value = _decode(raw, what)
    except _Bad as exc:
        problems.append(str(exc))
        return
    if value:  # libpq stores an empty part as "not given" (the defaults apply)
        params[key] = value


def _query(raw: str, params: dict[str, str]) -> tuple[tuple[tuple[Piece, ...], ...], str | None]:
    """``conninfo_uri_parse_params``: ``key=value`` pairs joined by ``&`` (one ``&`` at the end
    is allowed). A malformed query is hidden whole: a password holding an unencoded ``&`` or
    ``=`` is cut into just such pairs."""
    items = raw.split("&")
    if len(items) > 1 and items[-1] == "":
        items.pop()
    out: list[tuple[Piece, ...]] = []
    found: dict[str, str] = {}
    try:
        for item in items if raw else ():
            if item.count("=") != 1:
                raise _Bad(
                    "a query parameter without '=' or with two: percent-encode '&' (%26) and "
                    "'=' (%3D) inside values"
                )
            key_raw, value_raw = item.split("=")
            key = _decode(key_raw, "a query parameter's name")
            secret = key.lower() in SECRET_KEYS
            # Neither name nor value is quoted: a password cut at an '&' makes both of them.
            value = _decode(value_raw, "a query parameter's value")
            if key == "ssl" and value == "true":  # libpq's JDBC spelling
                key, value = "sslmode", "require"
            dropped = key == "password"
            out.append(
                (
                    Piece(f"{key_raw}=", dropped=dropped),
                    Piece(value_raw, masked=secret, dropped=dropped),
                )
            )
            found[key] = value
    except _Bad as exc:
        # What was meant: a secret's value up to some later '&', or to the end.
        meant, at = [], 0
        for item in raw.split("&"):
            key, eq, _ = item.partition("=")
            if eq and key.lower() in SECRET_KEYS:
                meant += _prefixes(raw[at + len(key) + 1 :], "&")
            at += len(item) + 1
        return ((Piece(raw, masked=True, guesses=tuple(meant)),),), str(exc)
    params.update(found)
    return tuple(out), None


def _uri(text: str, prefix: str) -> Dsn:
    """``conninfo_uri_parse_options``, then a look at what its author most likely meant."""
    rest = text[len(prefix) :]
    head: list[Piece] = [Piece(prefix)]
    params: dict[str, str] = {}
    problems: list[str] = []
    guesses: list[str] = []

    # User info: libpq looks for an '@' before any '/' ('?' and '#' are ordinary there).
    cut = next((i for i, c in enumerate(rest) if c in "@/"), len(rest))
    has_userinfo = cut < len(rest) and rest[cut] == "@"
    pos = 0
    if has_userinfo:
        user, colon, password = rest[:cut].partition(":")
        _store(params, "user", user, "the user name", problems)
        head.append(Piece(user))
        if colon:
            head += [Piece(":", dropped=True), Piece(password, masked=True, dropped=True)]
            _store(params, "password", password, "the password", problems)
        head.append(Piece("@"))
        pos = cut + 1

    # Hosts and ports, comma separated; then /dbname; then ?query.
    start, hosts, ports, end = pos, [], [], ""
    while True:
        if rest.startswith("[", pos):
            close = rest.find("]", pos)
            if close < 0:
                problems.append("an IPv6 address without its closing ']'")
                pos = _first(rest, "?", pos)
                end = rest[pos : pos + 1]
                break
            if close == pos + 1:
                problems.append("an empty IPv6 address '[]'")
            hosts.append(rest[pos + 1 : close])
            pos = close + 1
            if pos < len(rest) and rest[pos] not in ":/?,":
                problems.append("an IPv6 address followed by something else than ':', '/' or '?'")
                pos = _first(rest, "?", pos)
                end = rest[pos : pos + 1]
                break
        else:
            stop = _first(rest, ":/?,", pos)
            hosts.append(rest[pos:stop])
            pos = stop
        end = rest[pos : pos + 1]
        port = ""
        if end == ":":
            stop = _first(rest, "/?,", pos + 1)
            port = rest[pos + 1 : stop]
            pos = stop
            end = rest[pos : pos + 1]
        ports.append(port)  # as libpq: one (maybe empty) port per host, joined by commas
        if end != ",":
            break
        pos += 1
    if end == "/":
        stop = _first(rest, "?", pos + 1)
        dbname = rest[pos + 1 : stop]
        _store(params, "dbname", dbname, "the database name", problems)
        pos = stop
    main = rest[start:pos]
    head.append(Piece(main))
    _store(params, "host", ",".join(hosts), "the host", problems)
    _store(params, "port", ",".join(ports), "the port", problems)

    query: tuple[tuple[Piece, ...], ...] | None = None
    query_problem = None
    if pos < len(rest):  # at the '?'
        query, query_problem = _query(rest[pos + 1 :], params)
        if query_problem:
            problems.append(query_problem)

    # What libpq reads is not what was meant if an '@' is left outside the user info (a
    # password with an unencoded '@' or '/'), or, with no user info, if the "port" is not a
    # number (``u:pass/...``: libpq reads host "u", port "pass"). Then all that may be password
    # is hidden: the user info up to the last '@', or everything after the scheme.
    bad_port = any(p and not _spellings(p)[-1].isdigit() for p in ports)
    stray_at = "@" in main or (query_problem is not None and "@" in rest[pos:])
    if stray_at or (bad_port and not has_userinfo):
        last = rest.rfind("@")
        if last < 0:
            return _hidden(text, prefix, rest, [*guesses, *_spellings(rest.partition(":")[2])])
        meant = rest[:last]
        guesses += _spellings(meant.partition(":")[2])
        tail = _uri(prefix + rest[last + 1 :], prefix)
        if tail.problem:
            return _hidden(text, prefix, rest, guesses)
        return Dsn(
            text,
            True,
            (Piece(prefix), Piece(meant, masked=True), Piece("@"), *tail.head[1:]),
            tail.query,
            dict(tail.params),
            "an '@' or '/' in the user name or password: " + _ENCODE,
            (*guesses, *tail.guesses),
        )
    if bad_port:
        problems.append("a port that is not a number")
    return Dsn(
        text, True, tuple(head), query, params, problems[0] if problems else None, tuple(guesses)
    )


def _hidden(text: str, prefix: str, rest: str, guesses: list[str]) -> Dsn:
    """A URI whose every part after the scheme may hold a piece of a password."""
    return Dsn(
        text,
        True,
        (Piece(prefix), Piece(rest, masked=True)),
        None,
        {},
        "cannot tell the user name and password from the host: write "
        "postgresql://user:password@host:port/db, with '@' and '/' in the password "
        "percent-encoded (%40, %2F)",
        tuple(guesses),
    )


def _spellings(raw: str) -> list[str]:
    """``raw`` as written, and percent-decoded if it can be (spaces kept)."""
    with contextlib.suppress(_Bad):
        return list(dict.fromkeys([raw, _decode(raw.replace(" ", "%20"), "")]))
    return [raw]


def _prefixes(text: str, seps: str) -> list[str]:
    """``text`` cut at each of its ``seps`` (and whole), each as written and percent-decoded:
    where a secret that was cut apart may have ended.

    >>> _prefixes("a b c", " ")
    ['a', 'a b', 'a b c']
    """
    ends = [i for i, c in enumerate(text) if c in seps] + [len(text)]
    return list(dict.fromkeys(s for end in ends for s in _spellings(text[:end]) if s))


def _first(text: str, chars: str, start: int) -> int:
    """The index of the first of ``chars`` in ``text`` from ``start`` (its length if none)."""
    return next((i for i in range(start, len(text)) if text[i] in chars), len(text))


# -- where else libpq finds a password ---------------------------------------------------------


def passfile_passwords(dsn: Dsn, env: Mapping[str, str] | None = None) -> list[str]:
    """The passwords libpq would take from the password file for ``dsn``: the file named by
    ``passfile``, else ``PGPASSFILE``, else ``~/.pgpass``; the first matching line for each
    host (``host:port:database:user:password``, ``*`` matching anything, ``\\`` escaping ``:``
    and ``\\``). libpq reads the file only when the DSN has no password itself.

    Where libpq's choice cannot be known from here (the compiled-in socket directory), every
    line it might pick counts: a password masked needlessly costs nothing.
    """
    env = os.environ if env is None else env
    if dsn.password is not None or dsn.problem:
        return []
    params = dsn.params
    name = params.get("passfile") or env.get("PGPASSFILE")
    path = Path(name).expanduser() if name else Path.home() / ".pgpass"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except (OSError, RuntimeError):
        return []
    user = params.get("user") or env.get("PGUSER") or _os_user()
    dbname = params.get("dbname") or env.get("PGDATABASE") or user
    hosts = (params.get("host") or env.get("PGHOST") or params.get("hostaddr") or "").split(",")
    ports = (params.get("port") or env.get("PGPORT") or "").split(",")
    out = []
    for k, host in enumerate(hosts):
        port = (ports[k] if len(ports) == len(hosts) else ports[0]) or env.get("PGPORT") or "5432"
        names = {host} if host and not host.startswith("/") else {host, "localhost"} - {""}
        for candidate in names:
            found = _passfile_match(lines, [candidate, port, dbname, user])
            if found:
                out.append(found)
    return out


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _passfile_match(lines: list[str], wanted: list[str]) -> str | None:
    """libpq's ``passwordFromFile``: the password of the first line whose four fields match."""
    for line in lines:
        if line.startswith("#"):
            continue
        fields = _passfile_fields(line.rstrip("\r"))
        if len(fields) < 5:
            continue
        if all(f == "*" or f == w for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4]
    return None


def _passfile_fields(line: str) -> list[str]:
    """A password file line's fields, ``\\`` taking the next character literally."""
    fields, current, i = [], [], 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            current.append(line[i + 1])
            i += 2
            continue
        if c == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    fields.append("".join(current))
    return fields
