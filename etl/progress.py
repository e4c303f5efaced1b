"""How a long job reports progress without knowing who watches: the CLI hands in a rich bar, a
test or a child process nothing."""

from __future__ import annotations

from typing import Protocol


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
