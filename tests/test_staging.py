"""The staging file: its identity and name, where it may live, the rows it refuses, WAL mode, its
upgrade in place, and what ``etl status`` reads from it. Real SQLite files; outside tools are
played by a child process using Python's own sqlite3 module.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from etl.collect.loop import Collector
from etl.config import Settings
from etl.staging.store import Staging
from tests.conftest import Recorder
from tests.stagingutil import BAD_ROWS, outside_tool


def test_staging_files_carry_a_stable_id_and_a_settable_name(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    with Staging(path) as st:
        first = (st.id, st.name)
    with Staging(path, name="collector-eu-1") as st:
        assert st.id == first[0] and st.name == "collector-eu-1"
    with Staging(path) as st:
        assert (st.id, st.name) == (first[0], "collector-eu-1")  # the name is kept
    assert re.fullmatch(r"[0-9a-f-]{36}", first[0]) and str(path.resolve()) in first[1]


def test_the_filesystem_of_a_path_is_read_from_the_mount_table(tmp_path: Path) -> None:
    """What refuses a staging file on NFS or SMB: the mount table names each path's
    filesystem (here: proc and whatever holds /tmp, neither a network one)."""
    from etl.staging.lock import NETWORK_FILESYSTEMS, filesystem_type, refuse_network_fs

    assert filesystem_type(Path("/proc/self")) == "proc"
    local = filesystem_type(tmp_path)
    assert local is not None and local not in NETWORK_FILESYSTEMS
    refuse_network_fs(tmp_path / "ticks.sqlite3")  # a local one passes


def test_a_staging_file_refuses_rows_that_cannot_be_ticks(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    with Staging(path):
        pass
    for row in BAD_ROWS:
        done = outside_tool(path, f"INSERT INTO ticks VALUES {row}")
        assert done.returncode != 0, row
        assert re.search(r"constraint failed|cannot store", done.stderr), done.stderr
    good = outside_tool(path, "INSERT INTO ticks VALUES ('BTCUSDT', 1790000000000, 60000.5)")
    assert good.returncode == 0, good.stderr  # outside tools still write ticks(symbol, ts, price)
    with Staging(path) as st:
        assert st.ticks.read_window(0, 2**62).select("symbol", "ts", "price").rows() == [
            ("BTCUSDT", 1790000000000, 60000.5)
        ]


def test_staging_file_is_wal_on_disk(settings: Settings) -> None:
    Collector(settings, rollup=False, view=Recorder()).run(polls=1)
    path = Path(settings.staging_path)
    assert path.exists() and path.stat().st_size > 0
    with Staging(path) as st, st.db.cursor() as cur:
        cur.execute("PRAGMA journal_mode")
        assert cur.fetchone()[0] == "wal"
    time.sleep(0)


def test_a_staging_file_of_the_release_before_trades_upgrades_in_place_keeping_every_row(
    tmp_path: Path,
) -> None:
    legacy = Path(__file__).resolve().parent / "fixtures" / "legacy" / "staging_v0_2.sqlite3"
    path = tmp_path / "ticks.sqlite3"
    path.write_bytes(legacy.read_bytes())
    with Staging(path) as st:
        assert st.upgraded_from == 2
        assert st.meta()["schema_version"] == "3"
        rows = st.ticks.read_window(0, 2**62)
        assert rows.height == 270 and rows["seq"].to_list() == list(range(1, 271))
        assert st.state.get("binance.ban") == {"until": 0, "status": 429}
        assert st.state.intervals() == [(1_767_225_600_000, 60.0)]
        assert not st.trades.exist()
        st.ticks.append(["BTCUSDT"], [1.0], 1_767_231_000_000)  # poll ticks go on as before
    with Staging(path) as st:
        assert st.upgraded_from is None and st.ticks.count() == 271


def test_the_newest_tick_of_each_wanted_symbol_is_found_however_long_ago_it_came(
    tmp_path: Path,
) -> None:
    """What `etl status` shows per symbol. Looking back in widening windows from the newest tick
    must give the same times as reading the whole range: for symbols ticking now (found in the
    last minute) and for one quiet for three hours (found only in a wider window)."""
    now = 1_795_000_000_000
    with Staging(tmp_path / "t.sqlite3") as st:
        for k in range(60):  # a poll every 5 s for the last 5 minutes
            st.ticks.append(["AAAUSDT", "BBBUSDT"], [1.0, 2.0], now - k * 5_000)
        st.ticks.append(["QUIETUSDT"], [3.0], now - 3 * 3_600_000)
        st.ticks.append(["OLDUSDT"], [4.0], now - 30 * 3_600_000)  # before the range
        since = now - 24 * 3_600_000
        whole = st.ticks.last_ticks(since, now)
        assert whole == {"AAAUSDT": now, "BBBUSDT": now, "QUIETUSDT": now - 3 * 3_600_000}
        for wanted in (["AAAUSDT"], ["AAAUSDT", "QUIETUSDT"], ["OLDUSDT", "BBBUSDT"]):
            found = st.ticks.last_ticks(since, now, wanted=wanted)
            assert {s: found.get(s) for s in wanted} == {s: whole.get(s) for s in wanted}
        # The symbols ticking now are answered from the last minute alone.
        assert st.ticks.last_ticks(since, now, wanted=["AAAUSDT"]).keys() == {"AAAUSDT", "BBBUSDT"}
