"""What a command loads: a person waits on every start, so a command imports only what it uses.
Polars (0.12 s) and pyarrow's datasets (0.09 s) load when a frame is made, not for `--help`,
`--version`, `etl status` or a rollup with nothing to do (their times are in `just bench`, part 7)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from etl.config import Settings
from etl.hours import HOUR_MS, hour_floor
from etl.imports import defer, deferred
from tests.conftest import etl_env
from tests.pgutil import seed_ticks

# Runs the command line in this process, then says which of the heavy modules it loaded: a
# module deferred and never used is still its stand-in (etl.imports._Deferred).
PROBE = """
import json, sys
from etl.cli.app import main
try:
    main(sys.argv[2:])
finally:
    loaded = {
        name: type(sys.modules[name]).__name__
        for name in ("polars", "pyarrow.dataset", "pandas", "numpy")
        if name in sys.modules
    }
    with open(sys.argv[1], "w") as out:
        json.dump(loaded, out)
"""


def loaded_by(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], str]:
    """The heavy modules ``etl ARGS`` loaded (name: the type of what is in ``sys.modules``) and
    what it printed."""
    out = tmp_path / "loaded.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr  # status: 1 is "degraded" (no collector)
    return json.loads(out.read_text()), done.stdout + done.stderr


def test_help_and_version_load_neither_polars_nor_the_database_driver(
    settings: Settings, tmp_path: Path
) -> None:
    env = etl_env(settings)
    for args in (["--help"], ["status", "--help"], ["rollup", "--help"]):
        loaded, printed = loaded_by(args, env, tmp_path)
        assert loaded == {}, (args, loaded)
        assert "Usage" in printed


def test_status_and_a_rollup_with_nothing_to_do_make_no_frame_and_one_with_work_does(
    pgs: Settings, tmp_path: Path
) -> None:
    closed = hour_floor(int(time.time() * 1000)) - HOUR_MS
    seed_ticks(pgs.staging_path, ["BTCUSDT", "ETHUSDT"], closed - HOUR_MS, polls=2 * 720)
    env = etl_env(pgs)

    loaded, printed = loaded_by(["rollup"], env, tmp_path)
    assert "hours rolled up 2" in printed, printed
    assert loaded.get("polars") == "module", loaded  # two hours read: Polars made the bars

    loaded, printed = loaded_by(["rollup"], env, tmp_path)
    assert "hours rolled up 0" in printed and "already rolled up" in printed, printed
    # The job ran whole (locks, ledger, purge candidates, retention) without Polars; the DB-API
    # asked for pyarrow's datasets, which stayed a stand-in.
    assert "polars" not in loaded, loaded
    assert loaded.get("pyarrow.dataset") == "_Deferred", loaded
    assert "pandas" not in loaded and "numpy" not in loaded, loaded

    loaded, printed = loaded_by(["status", "--json"], env, tmp_path)
    report = json.loads(printed[: printed.rindex("}") + 1])
    assert report["warehouse"]["committed_hours"] == 2, report["warehouse"]
    assert report["warehouse"]["partitions"], report["warehouse"]  # read, as rows
    assert "polars" not in loaded, loaded  # the whole report, no frame


@pytest.mark.parametrize("how", ["deferred", "defer"])
def test_a_deferred_module_is_imported_at_its_first_use_once_whatever_the_threads(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``deferred(name)`` binds a stand-in; ``defer(name)`` puts one in ``sys.modules``, where
    every ``import name`` finds it (as the database driver's import of pyarrow's datasets)."""
    name = f"slow_to_import_{how}"
    runs = tmp_path / "runs"
    (tmp_path / f"{name}.py").write_text(
        f"import time\nwith open({str(runs)!r}, 'a') as f:\n    f.write('x')\n"
        "time.sleep(0.2)  # a wide window for a second thread to race the first\n"
        "VALUE = object()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    if how == "defer":
        defer(name)
    stand_in = deferred(name) if how == "deferred" else importlib.import_module(name)
    assert type(stand_in).__name__ == "_Deferred"
    assert not runs.exists()  # nothing imported yet
    results: list[object] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        try:
            results.append(stand_in.VALUE)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = sys.modules.pop(name)
    assert not errors, errors
    assert type(real).__name__ == "module"
    assert runs.read_text() == "x"  # imported once
    assert results == [real.VALUE] * 8
    assert stand_in.time is real.time  # later reads: the real module's names


def test_pyarrow_datasets_work_through_the_stand_in_the_driver_import_leaves() -> None:
    program = """
import sys
import etl.drivers
assert type(sys.modules["pyarrow.dataset"]).__name__ == "_Deferred"
import pyarrow as pa
import pyarrow.dataset as ds
data = ds.dataset(pa.table({"x": [1, 2, 3]}))
assert isinstance(data, ds.Dataset) and pa.dataset.Dataset is ds.Dataset
print(data.to_table().column("x").to_pylist())
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "[1, 2, 3]", done.stderr
