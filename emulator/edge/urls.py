"""Routes of the HealthImaging REST API, built from the botocore model's
``requestUri`` templates so that no route can drift from the real one, and
what tells its DICOMweb paths (which the model does not have) apart."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from botocore.model import OperationModel

from emulator.state.service_model import service_model


@dataclass(frozen=True)
class Route:
    method: str
    regex: re.Pattern[str]
    operation: OperationModel


def _template_to_regex(template: str) -> re.Pattern[str]:
    path = template.split("?", 1)[0]
    parts = re.split(r"(\{[^}]+\})", path)
    regex = "".join(
        f"(?P<{p[1:-1].rstrip('+')}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts
    )
    return re.compile(f"^{regex}/?$")


@lru_cache(maxsize=1)
def routes() -> tuple[Route, ...]:
    model = service_model()
    table = []
    for name in model.operation_names:
        op = model.operation_model(name)
        table.append(Route(op.http["method"], _template_to_regex(op.http["requestUri"]), op))
    # Literal segments beat captures: "/datastore" must not be read as a datastoreId.
    table.sort(key=lambda r: -len(r.regex.pattern.replace("[^/]+", "")))
    return tuple(table)


def match(method: str, raw_path: str) -> tuple[OperationModel, dict[str, str]] | None:
    """Match on the still percent-encoded path: a tag ARN arrives as one
    encoded segment and must not be split on its slashes."""
    for route in routes():
        if route.method != method:
            continue
        found = route.regex.match(raw_path)
        if found:
            return route.operation, {k: unquote(v) for k, v in found.groupdict().items()}
    return None


# DICOMweb paths continue a data store's path with studies, series or
# instances (behaviour doc §7); no rest-json route does.
_DICOMWEB_PATH = re.compile(r"^/datastore/[^/]+/(studies|series|instances)(/|$)")


def is_dicomweb(raw_path: str) -> bool:
    return bool(_DICOMWEB_PATH.match(raw_path))
