"""The Prefect API a command's flow runs report to.

With no ``PREFECT_API_URL``, Prefect starts a temporary server as a child
process the first time a client needs one. A child in our process group gets
the operator's Ctrl-C too, and uvicorn shuts down on it, so the run that was
stopping cleanly would lose its API mid-report. The server is therefore
started here, before the run, with SIGINT blocked: a child inherits the
blocked mask across exec, uvicorn never sees the signal, and Prefect stops the
server itself (SIGTERM) when the command exits.
"""

from __future__ import annotations

import signal


def start_temporary_server_if_needed() -> None:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        # The instance Prefect's clients use when no API URL is set.
        SubprocessASGIServer().start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
