"""Which process holds a run's claims, and whether it still exists.

A heartbeat only says a run stopped beating after minutes; a run killed on
this machine can be known dead at once: its process is gone, or the PID now
belongs to a process started later. The start time is what tells a reused
PID apart, so it is recorded with the PID.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil

# psutil derives start times from boot time and clock ticks: the same
# process reads back the same time to within a tick.
_SAME_START_SECONDS = 1.0


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    pid: int
    started_at: datetime

    @classmethod
    def current(cls) -> ProcessIdentity:
        process = psutil.Process()
        return cls(socket.gethostname(), process.pid,
                   datetime.fromtimestamp(process.create_time(), UTC))

    def is_gone(self) -> bool:
        """True only when this machine can tell: the process is on this host
        and no process with its PID and start time exists."""
        if self.host != socket.gethostname():
            return False
        try:
            started: float = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False  # e.g. not allowed to look: presume alive
        return abs(started - self.started_at.timestamp()) > _SAME_START_SECONDS
