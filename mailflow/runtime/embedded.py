"""The embedded default broker: kombu's ``filesystem://`` transport, published atomically.

kombu 5.7 writes a message straight into the queue folder while its reader
lists the folder and reads files without taking the lock; a consumer can
therefore read a half-written message, fail to decode it and lose it (seen
here under load).  This subclass writes each message under a name the reader
ignores and renames it into place, so a reader sees whole messages only.
The on-disk format is unchanged.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".tmp-{name}.part")
        try:
            with open(tmp, "wb", buffering=0) as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(tmp, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def register() -> None:
    """Make ``filesystem://`` mean this transport in every process that imports mailflow."""
    TRANSPORT_ALIASES["filesystem"] = "mailflow.runtime.embedded:Transport"
