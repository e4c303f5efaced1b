"""``etl notebook``: the notebooks that ship with etl, in a folder the user owns, opened in
JupyterLab with this configuration's warehouse.

The notebooks are package data (the checkout's ``notebooks/``). On first use they are copied to
``<data_dir>/notebooks``; a copy is never overwritten, so a user's edits stay. The kernels get
the settings as ``ETL_*`` variables with absolute paths, so they find the same data wherever the
notebook's folder is.

>>> lab_command(load_settings(), demo=False, extra=[])           # doctest: +SKIP
LabCommand(argv=['/…/jupyter', 'lab', '/…/data/notebooks'], ...)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from etl.config import Settings
from etl.errors import ConfigError, DependencyError


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
