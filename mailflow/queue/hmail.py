"""HMail: one queue entry as the hooks see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailflow.message import FileMessage
from mailflow.queue import entry as qfile
from mailflow.queue.todo import ToDo


@dataclass
class HMail:
    """A queue entry: where its file is, how often it has failed, and its todo.

    ``notes`` is shared by the outbound hooks of this one attempt; it is not
    stored (Haraka's ``hmail.notes`` lives in memory too).
    """

    path: Path
    todo: ToDo
    num_failures: int
    notes: dict[str, Any] = field(default_factory=dict)
    #: where the message begins in the file, when the todo was read from it (load)
    offset: int | None = field(default=None, repr=False)

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def name(self) -> qfile.EntryName:
        parsed = qfile.EntryName.parse(self.path.name)
        assert parsed is not None, self.path
        return parsed

    @classmethod
    def load(cls, path: Path) -> HMail:
        todo, offset = qfile.load(path)
        parsed = qfile.EntryName.parse(path.name)
        return cls(path=path, todo=todo, num_failures=parsed.num_failures if parsed else 0,
                   offset=offset)

    def message(self) -> bytes:
        return qfile.read_message(self.path)

    def message_file(self) -> FileMessage:
        """The message where it is kept, to be read in blocks (a large one is not held whole).
        Its offset is the one ``load`` found: an entry's file is never rewritten in place."""
        offset = self.offset if self.offset is not None else qfile.load(self.path)[1]
        return FileMessage(self.path, offset)
