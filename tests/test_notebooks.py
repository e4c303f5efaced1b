"""The notebooks, run as a reader runs them: on seeded history every chart is checked for what it
shows (series, points, the chosen range on every time axis, labels and units); from the
notebooks' folder with a relative data dir; and with no history, where the first code cell stops
with one sentence and nothing is created."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nbformat
import polars as pl
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from etl.config import Settings, load_settings
from etl.jobs.demo_history import seed_demo
from etl.jobs.rollup import run_rollup
from tests.conftest import etl_env
from tests.pgutil import query

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
BOOKS = ("history.ipynb", "analysis.ipynb")
# Every configured symbol, XRPUSDT (the fifth) included: no chart may drop one.
SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT"]
DAYS = {"history.ipynb": 14, "analysis.ipynb": 30}  # the notebooks' default ranges
HOUR = timedelta(hours=1)


def _summarise(figures: dict[str, Any], symbols: list[str], start: Any, end: Any) -> str:
    """Runs inside the kernel, after the notebook: what each figure in ``FIGURES`` shows, as
    JSON. Time axes have their limits as ISO dates; tick labels are drawn to see if they touch."""
    import json
    import os

    import matplotlib.dates as mdates
    import numpy as np
    from matplotlib.collections import LineCollection, QuadMesh

    def texts(labels: list[Any]) -> list[str]:
        return [t.get_text() for t in labels if t.get_visible() and t.get_text()]

    def touching(labels: list[Any]) -> bool:
        boxes = [t.get_window_extent() for t in labels if t.get_visible() and t.get_text()]
        return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])

    out: dict[str, Any] = {
        "cwd": os.getcwd(),
        "symbols": list(symbols),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "figures": {},
    }
    for name, fig in figures.items():
        fig.canvas.draw()
        axes = []
        for ax in fig.axes:
            dated = isinstance(ax.xaxis.get_major_locator(), mdates.DateLocator)
            lo, hi = ax.get_xlim()
            legend = ax.get_legend()
            axes.append(
                {
                    "colorbar": getattr(ax, "_colorbar", None) is not None,
                    "title": ax.get_title(loc="left") or ax.get_title(),
                    "xlabel": ax.get_xlabel(),
                    "ylabel": ax.get_ylabel(),
                    "dated": dated,
                    "xlim": [mdates.num2date(v).isoformat() for v in (lo, hi)] if dated else [],
                    "lines": [len(line.get_xdata()) for line in ax.get_lines()],
                    "bars": [len(c) for c in ax.containers],
                    "segments": [
                        len(c.get_segments())
                        for c in ax.collections
                        if isinstance(c, LineCollection)
                    ],
                    "meshes": [
                        {
                            "shape": list(c.get_array().shape),
                            "empty": int(np.ma.count_masked(c.get_array())),
                        }
                        for c in ax.collections
                        if isinstance(c, QuadMesh)
                    ],
                    "images": [list(i.get_array().shape) for i in ax.get_images()],
                    "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
                    "xticklabels": texts(ax.get_xticklabels()),
                    "yticklabels": texts(ax.get_yticklabels()),
                    "xticks_touch": touching(ax.get_xticklabels()),
                }
            )
        out["figures"][name] = axes
    return json.dumps(out)


SUMMARY_CELL = (
    "from typing import Any\n\n"
    + inspect.getsource(_summarise)
    + "\nprint('SUMMARY' + _summarise(FIGURES, SYMBOLS, START, END))\n"
)


def execute(name: str) -> tuple[nbformat.NotebookNode, dict[str, Any]]:
    """Run a notebook in a kernel started in notebooks/ (as JupyterLab does), then the summary
    cell; the settings come from the environment."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), (
        f"{name} is committed with outputs"
    )
    book.cells.append(nbformat.v4.new_code_cell(SUMMARY_CELL))
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    printed = "".join(o.get("text", "") for o in book.cells[-1].outputs)
    return book, json.loads(printed.split("SUMMARY", 1)[1])


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def per_symbol(frame: pl.DataFrame) -> dict[str, int]:
    return dict(frame.iter_rows())


def check_time_axes(axes: list[dict[str, Any]], start: datetime, end: datetime) -> None:
    """Every time axis shows exactly [start, end) with dated, readable labels; the bottom one
    says the time zone."""
    dated = [a for a in axes if a["dated"]]
    assert dated, "no time axis"
    for ax in dated:
        assert (when(ax["xlim"][0]), when(ax["xlim"][1])) == (start, end), ax["title"]
        assert not ax["xticks_touch"], ax["xticklabels"]
    labelled = [a for a in dated if a["xticklabels"]]
    assert labelled and all(len(a["xticklabels"]) >= 3 for a in labelled)
    assert all("UTC" in a["xlabel"] for a in labelled), [a["xlabel"] for a in labelled]


def unpack(summary: dict[str, Any]) -> tuple[Any, Any, list[str], dict[str, Any]]:
    return when(summary["start"]), when(summary["end"]), summary["symbols"], summary["figures"]


def hourly_counts(dsn: str, start: Any, end: Any) -> dict[str, int]:
    return per_symbol(
        query(
            dsn,
            "SELECT symbol, count(*) FROM metrics_hourly WHERE bucket >= $1 AND bucket < $2 "
            "GROUP BY 1",
            [start, end],
        )
    )


def check_history(summary: dict[str, Any], dsn: str) -> None:
    start, end, symbols, figures = unpack(summary)
    hourly = hourly_counts(dsn, start, end)
    daily = per_symbol(
        query(
            dsn,
            "SELECT symbol, count(*) FROM metrics_daily WHERE day >= $1::date AND day < $2::date "
            "GROUP BY 1",
            [start, end],
        )
    )
    assert sorted(figures) == ["candles", "coverage", "daily"]
    for name, counts in (("candles", hourly), ("daily", daily)):
        axes = figures[name]
        assert len(axes) == len(symbols), name  # one panel per symbol
        for ax, symbol in zip(axes, symbols, strict=True):
            n = counts[symbol]
            assert ax["title"].startswith(symbol), ax["title"]
            assert ax["ylabel"] == "price (USDT)"
            # a candle per bar (wick and body) and the mean through every one
            assert (ax["segments"], ax["bars"], ax["lines"]) == ([n], [n], [n]), (name, symbol)
        assert {"close ≥ open", "close < open", "mean"} <= set(axes[0]["legend"])
        check_time_axes(axes, start, end)
    assert min(hourly.values()) >= 0.9 * (end - start) / HOUR  # the range is full of bars
    assert min(daily.values()) >= 13

    grid, colorbar = figures["coverage"]
    hours = (end - start) // HOUR
    assert grid["meshes"] == [
        {"shape": [len(symbols), hours], "empty": len(symbols) * hours - sum(hourly.values())}
    ]
    assert grid["yticklabels"] == symbols and grid["ylabel"] == "symbol"
    assert any("no bar" in text for text in grid["legend"])
    assert colorbar["colorbar"] and "%" in colorbar["ylabel"]
    check_time_axes([grid], start, end)


def check_analysis(summary: dict[str, Any], dsn: str) -> None:
    start, end, symbols, figures = unpack(summary)
    hourly = hourly_counts(dsn, start, end)
    assert sorted(figures) == ["correlation", "returns"]
    top, bottom = figures["returns"]
    for ax in (top, bottom):
        assert ax["lines"] == [hourly[s] for s in symbols]  # a line per symbol, a point an hour
        assert "%" in ax["ylabel"]
    assert top["legend"] == symbols
    assert "annualised" in bottom["title"] and "year" in bottom["ylabel"]
    check_time_axes([top, bottom], start, end)

    matrix, colorbar = figures["correlation"]
    assert matrix["images"] == [[len(symbols), len(symbols)]]
    assert matrix["xticklabels"] == symbols and matrix["yticklabels"] == symbols
    assert matrix["xlabel"] and matrix["ylabel"]
    assert colorbar["colorbar"] and "correlation" in colorbar["ylabel"]


@pytest.mark.slow
def test_notebooks_chart_every_symbol_over_the_chosen_range(
    settings: Settings, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = replace(settings, pg_dsn=pg_dsn, symbols=tuple(SYMBOLS), interval_s=60.0)
    seed_demo(
        seeded, run_rollup, days=40
    )  # more than a month: the previous month has its partition
    for key, value in etl_env(seeded).items():
        monkeypatch.setenv(key, value)
    for name, check in (("history.ipynb", check_history), ("analysis.ipynb", check_analysis)):
        book, summary = execute(name)
        assert summary["cwd"] == str(NOTEBOOKS)  # History leaves the working directory alone
        assert summary["symbols"] == SYMBOLS
        start, end = when(summary["start"]), when(summary["end"])
        assert end - start == timedelta(days=DAYS[name])
        newest = query(pg_dsn, "SELECT max(bucket) AS b FROM metrics_hourly")["b"][0]
        assert end == newest + HOUR  # the range ends with the newest bar
        check(summary, pg_dsn)
        if name == "analysis.ipynb":
            text = "".join(
                o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs
            )
            assert "scanned by this query: ['metrics_hourly_" in text  # one partition, pruned


@pytest.mark.slow
def test_history_runs_from_the_notebooks_folder_with_a_relative_data_dir(
    open_dir: Path, tmp_path: Path
) -> None:
    data = open_dir / "data"
    seed_demo(replace(load_settings(env={}), data_dir=data, interval_s=300.0), run_rollup, days=3)
    relative = os.path.relpath(data, NOTEBOOKS)
    assert not Path(relative).is_absolute()
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    # `cd notebooks && ETL_DATA_DIR=../<dir> jupyter nbconvert --execute history.ipynb`
    convert = ["--to", "notebook", "--execute", "history.ipynb", "--output-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "nbconvert", *convert],
        cwd=NOTEBOOKS,
        env=etl_env(ETL_DATA_DIR=relative, ETL_INTERVAL_S="300"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    book = nbformat.read(tmp_path / "history.ipynb", as_version=4)
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert f"warehouse: embedded ({data / 'pg'})" in outputs[0].text
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 3
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before


@pytest.mark.slow
@pytest.mark.parametrize("warehouse", ["missing", "empty"])
def test_without_history_the_first_cell_stops_with_one_sentence(
    warehouse: str, tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "nothing-here"
    for key in [k for k in os.environ if k.startswith("ETL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ETL_DATA_DIR", os.path.relpath(data, NOTEBOOKS))
    if warehouse == "empty":
        monkeypatch.setenv("ETL_PG_DSN", pg_dsn)
    for name in BOOKS:
        book = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = NotebookClient(
            book,
            timeout=120,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        )
        with pytest.raises(CellExecutionError):
            client.execute()
        code = [c for c in book.cells if c.cell_type == "code"]
        (error,) = code[0].outputs
        assert error.output_type == "error" and error.ename == "NoHistory"
        (sentence,) = error.traceback  # one line, no frames
        assert sentence.startswith("no history yet in ")
        assert "`just seed-demo` then `just notebook --demo`" in sentence
        if warehouse == "missing":
            assert f"embedded ({data / 'pg'})" in sentence  # resolved from the notebooks' folder
        assert all(c.execution_count is None and not c.outputs for c in code[1:]), name
    assert not data.exists()  # no cluster, no directory
    assert list(tmp_path.iterdir()) == []
    if warehouse == "empty":  # not migrated either
        tables = query(pg_dsn, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")
        assert tables["n"][0] == 0


@pytest.mark.slow
def test_etl_notebook_execute_runs_every_notebook_headless_with_a_relative_data_dir(
    open_dir: Path,
) -> None:
    """Was: `jupyter nbconvert --execute notebooks/history.ipynb` from the repo root said "no
    history yet in .../notebooks/data/pg": a relative ETL_DATA_DIR resolved from the kernel's
    folder. `etl notebook --execute` hands the kernels absolute paths."""
    env = etl_env(None, ETL_DATA_DIR="data")  # relative, to where the command runs
    seeded = subprocess.run(
        [sys.executable, "-m", "etl", "seed-demo", "--days", "3"],
        cwd=open_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert seeded.returncode == 0, seeded.stderr
    out = open_dir / "charts"
    done = subprocess.run(
        [sys.executable, "-m", "etl", "notebook", "--execute", "--demo", "--html", str(out)],
        cwd=open_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # the kernels' own chatter stays out
    for name in BOOKS:
        page = (out / name.replace(".ipynb", ".html")).read_text()
        assert page.count("image/png") >= 2 and "NoHistory" not in page, name
        assert (open_dir / "data" / "notebooks" / name).exists()  # the user's copy
    nothing = subprocess.run(
        [sys.executable, "-m", "etl", "notebook", "--execute"],
        cwd=open_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert nothing.returncode == 2, nothing.stdout + nothing.stderr
    (line,) = nothing.stderr.strip().splitlines()
    assert f"no history yet in embedded ({open_dir / 'data' / 'pg'})" in line
    assert "ETL_DATA_DIR" in line
