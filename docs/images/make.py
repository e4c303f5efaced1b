"""How the README's two pictures are made (run from the checkout: `python docs/images/make.py`).

- live-table.svg: `etl collect`'s live table on a terminal, after a minute of polls of the
  five default symbols from the built-in fake exchange (on a clock of its own).
- candles.png: the first chart of notebooks/history.ipynb (hourly candles with the mean), run
  headless on 14 days of `etl seed-demo` history.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from etl.collect.loop import Collector
from etl.collect.view import CollectorView
from etl.config import load_settings
from etl.exchange.fake.rest import FakeExchange

HERE = Path(__file__).resolve().parent


class _Clock:
    def __init__(self, start: float) -> None:
        self.now = self.passed = start

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.passed

    def sleep(self, seconds: float) -> bool:
        self.now += seconds
        self.passed += seconds
        return False


class _Kept(CollectorView):
    """The view, keeping what it drew last."""

    last: Any = None

    def refresh(self, header: dict[str, Any], metrics: Any, *, trades: bool = False) -> None:
        super().refresh(header, metrics, trades=trades)
        self.last = self._live.renderable if self._live is not None else None


def live_table(work: Path) -> None:
    clock = _Clock(1_796_500_805.0)  # 5 minutes into an hour
    screen = Console(record=True, width=100, force_terminal=True, file=io.StringIO())
    view = _Kept(live=True, out=screen)
    with FakeExchange(clock=clock, ws=False) as exchange:
        settings = replace(
            load_settings(env={}), binance_url=exchange.url, data_dir=work, interval_s=5.0
        )
        Collector(
            settings,
            rollup=False,
            view=view,
            clock=clock,
            wait=clock.sleep,
            monotonic=clock.monotonic,
        ).run(polls=12)
    shown = Console(record=True, width=100, force_terminal=True, file=io.StringIO())
    shown.print(view.last)
    svg = shown.export_svg(title="etl collect")
    (HERE / "live-table.svg").write_text(svg.replace(str(work), "data"))


def candles(work: Path) -> None:
    env = {"ETL_DATA_DIR": str(work / "data"), "PATH": str(Path(sys.executable).parent)}
    etl = [sys.executable, "-m", "etl"]
    subprocess.run([*etl, "seed-demo", "--days", "14"], env=env, check=True, cwd=work)
    subprocess.run(
        [*etl, "notebook", "--execute", "--demo", "--html", str(work / "html")],
        env=env,
        check=True,
        cwd=work,
    )
    page = (work / "html" / "history.html").read_text()
    charts = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=\n]+)", page)
    charts = [c for c in charts if len(c) > 10_000]  # not the page's own icons
    if not charts:
        raise SystemExit("no chart in the executed notebook")
    (HERE / "candles.png").write_bytes(base64.b64decode(charts[0]))


if __name__ == "__main__":
    work = Path(tempfile.mkdtemp(prefix="etl-images-", dir="/tmp"))
    work.chmod(0o755)
    try:
        live_table(work / "live")
        candles(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
