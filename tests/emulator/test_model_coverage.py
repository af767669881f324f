"""Every operation and request member of the installed botocore model is
either honoured by the local service or named as deliberately unsupported:
a botocore upgrade that adds one fails here instead of being ignored."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import botocore.session
from botocore.model import ServiceModel, Shape

from emulator.edge.api_coverage import DELIBERATELY_UNSUPPORTED, HONOURED_NESTED
from emulator.edge.responses import snake_case
from emulator.state.models import HealthImagingBackend


def _nested_paths(shape: Shape, path: str) -> Iterator[str]:
    if shape.type_name == "list":
        yield from _nested_paths(shape.member, path)
    elif shape.type_name == "structure":
        for name, member in shape.members.items():
            yield f"{path}.{name}"
            yield from _nested_paths(member, f"{path}.{name}")


def _model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("medical-imaging")


def test_every_operation_and_member_is_honoured_or_named_unsupported() -> None:
    model = _model()
    unaccounted = []
    for operation in model.operation_names:
        handler = getattr(HealthImagingBackend, snake_case(operation), None)
        if handler is None:
            if operation not in DELIBERATELY_UNSUPPORTED:
                unaccounted.append(operation)
            continue
        parameters = inspect.signature(handler).parameters
        shape = model.operation_model(operation).input_shape
        for name, member in (shape.members.items() if shape else []):
            top = f"{operation}.{name}"
            if name not in parameters and top not in DELIBERATELY_UNSUPPORTED:
                unaccounted.append(top)
            for nested in _nested_paths(member, top):
                if nested not in HONOURED_NESTED and nested not in DELIBERATELY_UNSUPPORTED:
                    unaccounted.append(nested)
    assert unaccounted == []


def test_declarations_name_only_what_the_model_has() -> None:
    """A stale entry would hide a member that a later model really adds."""
    model = _model()
    known = set(model.operation_names)
    for operation in model.operation_names:
        shape = model.operation_model(operation).input_shape
        for name, member in (shape.members.items() if shape else []):
            known.add(f"{operation}.{name}")
            known.update(_nested_paths(member, f"{operation}.{name}"))
    assert sorted((set(DELIBERATELY_UNSUPPORTED) | HONOURED_NESTED) - known) == []
    assert HONOURED_NESTED.isdisjoint(DELIBERATELY_UNSUPPORTED)
