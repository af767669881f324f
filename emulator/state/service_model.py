"""The HealthImaging API as the installed botocore describes it: its
operations and their shapes.

The edge builds its routes and wire format from it and fault injection
names the operations it may fail, so that neither drifts from the real
service. It is here, below both, because faults (a top-level module the
edge uses) must not import the edge.
"""

from __future__ import annotations

from functools import lru_cache

import botocore.session
from botocore.model import ServiceModel

SERVICE_NAME = "medical-imaging"


@lru_cache(maxsize=1)
def service_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model(SERVICE_NAME)
