"""RunLedger: one run's handle on the ledger, made of its parts."""

from __future__ import annotations

from tasks.ledger.claims import Claims
from tasks.ledger.outcomes import Outcomes


class RunLedger(Claims, Outcomes):
    """One run's handle on the ledger: small and picklable, so tasks can take
    it as an argument and open the (per-process) engine themselves.

    Its parts, one module each: runs and liveness (tasks.ledger.runs), claims
    (tasks.ledger.claims), jobs (tasks.ledger.jobs) and outcomes
    (tasks.ledger.outcomes); its fields are tasks.ledger.part's.
    """
