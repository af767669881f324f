"""Imported first by the fork server of tasks.worker_processes, and by nothing
else: from here on it ignores SIGINT, as the workers it forks do.

The operator's Ctrl-C reaches the whole process group, and the run decides
what it means (tasks.interruption). multiprocessing ignores SIGINT in its
fork server only once the preloading is done, seconds later, and its workers
inherit what the fork server had before that: a Ctrl-C in those seconds
killed the fork server with a traceback, or a starting worker, and the run
that was stopping cleanly failed. A blocked signal mask is not inherited
here (the fork server is started by fork and exec, which resets it).
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
