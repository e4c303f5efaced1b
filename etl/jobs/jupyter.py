"""``etl notebook``: the notebooks that ship with etl, in a folder the user owns, opened in
JupyterLab with this configuration's warehouse, or run headless into HTML (``--execute``).

The notebooks are package data (the checkout's ``notebooks/``). On first use they are copied to
``<data_dir>/notebooks``; a copy is never overwritten, so a user's edits stay. The kernels get
the settings as ``ETL_*`` variables with absolute paths, so they find the same data wherever the
notebook's folder is.

>>> lab_command(load_settings(), demo=False, extra=[])           # doctest: +SKIP
LabCommand(argv=['/…/jupyter', 'lab', '/…/data/notebooks'], ...)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from etl.config import Settings
from etl.errors import ConfigError, DependencyError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shipped() -> dict[str, bytes]:
    """The notebooks of this installed etl, by file name."""
    folder = files("etl.jobs") / "notebooks"
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name.endswith(".ipynb")}


def notebooks_folder(settings: Settings) -> Path:
    """Where the user's copies live: ``<data_dir>/notebooks``."""
    return settings.paths.notebooks.absolute()


def user_copies(folder: Path) -> list[str]:
    """Copy the shipped notebooks missing from ``folder`` into it; the names copied."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        copied = []
        for name, content in sorted(shipped().items()):
            target = folder / name
            if not target.exists():
                target.write_bytes(content)
                copied.append(name)
    except OSError as exc:
        raise ConfigError(
            f"cannot copy the notebooks to {folder} ({exc.strerror}): set ETL_DATA_DIR to a "
            "writable place"
        ) from None
    return copied


@dataclass
class LabCommand:
    """What to run: ``argv`` with ``env``, in ``folder``; ``copied`` notebooks new there."""

    argv: list[str]
    env: dict[str, str]
    folder: Path
    copied: list[str] = field(default_factory=list)


def lab_command(settings: Settings, *, demo: bool, extra: list[str]) -> LabCommand:
    """JupyterLab on the user's copies of the notebooks, reading this configuration's warehouse
    (``demo``: the demo's). ``extra`` are JupyterLab's own options."""
    jupyter = shutil.which("jupyter")
    if jupyter is None:
        raise DependencyError(
            "jupyter is not installed: pip install 'etl[notebooks]' (from a checkout: "
            "pip install -e '.[notebooks]')"
        )
    folder = notebooks_folder(settings)
    copied = user_copies(folder)
    data = settings.for_demo() if demo else settings
    argv = [jupyter, "lab", str(folder), *extra]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(data.env())  # absolute paths: the kernels run in the notebooks' folder
    return LabCommand(argv, env, folder, copied)


@dataclass
class Executed:
    """One notebook run headless: its copy, the HTML written, and how long it took."""

    notebook: Path
    html: Path
    seconds: float


def execute_notebooks(settings: Settings, *, demo: bool, html_dir: Path | None) -> list[Executed]:
    """Run every notebook (the user's copies) top to bottom in a kernel, with this
    configuration's warehouse (``demo``: the demo's), and write each as HTML into ``html_dir``
    (default ``<data_dir>/notebooks/html``). The settings reach the kernel as ``ETL_*`` variables
    with absolute paths, so a relative data dir means the same wherever the notebook is. A
    notebook that stops (no history yet, say) is :class:`ConfigError` with its one sentence."""
    import time

    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
        from nbconvert import HTMLExporter
    except ImportError:
        raise DependencyError(
            "running notebooks needs their extras: pip install 'etl[notebooks]' (from a "
            "checkout: pip install -e '.[notebooks]')"
        ) from None
    folder = notebooks_folder(settings)
    user_copies(folder)
    out = (html_dir or folder / "html").absolute()
    data = settings.for_demo() if demo else settings
    for key in [k for k in os.environ if k.startswith("ETL_")]:
        del os.environ[key]
    os.environ.update(data.env())  # the kernel inherits them
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for path in sorted(folder.glob("*.ipynb")):
        started = time.perf_counter()
        book = nbformat.read(path, as_version=4)
        client = NotebookClient(
            book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
        )
        try:  # the kernel's own chatter (its transport, its warnings) is not ours to show
            client.execute(stderr=subprocess.DEVNULL)
        except CellExecutionError:
            raise ConfigError(f"{path.name} stopped: {_first_error(book)}") from None
        html, _ = HTMLExporter().from_notebook_node(book)
        target = out / f"{path.stem}.html"
        target.write_text(html)
        done.append(Executed(path, target, time.perf_counter() - started))
    return done


def _first_error(book: Any) -> str:
    """The first error a notebook printed, in one line (the notebooks' own ``NoHistory`` is
    one sentence already)."""
    for cell in book.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                lines = [line for line in output.get("traceback", []) if line.strip()]
                last = lines[-1] if lines else f"{output.get('ename')}: {output.get('evalue')}"
                return " ".join(_ANSI.sub("", last).split())
    return "an error"
