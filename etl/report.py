"""How a job reports, without knowing who watches: progress while it runs (the CLI hands in a
rich bar, a test or a child process nothing), and what it did, as a result dataclass whose
counted fields carry the words a person reads them by."""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any, Protocol


def counted(label: str, default: Any = 0) -> Any:
    """A field of a job's result that a person reads as ``label: value``."""
    return field(default=default, metadata={"label": label})


def labelled(result: Any) -> list[tuple[str, Any]]:
    """``(label, value)`` for every :func:`counted` field of ``result``, in declaration order."""
    return [
        (f.metadata["label"], getattr(result, f.name))
        for f in fields(result)
        if "label" in f.metadata
    ]


class Progress(Protocol):
    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int, note: str = "") -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Progress nobody watches."""

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int, note: str = "") -> None:
        pass

    def finish(self) -> None:
        pass
