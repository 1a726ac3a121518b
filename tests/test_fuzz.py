"""Property-based fuzzing of the whole OpenAPI surface (`/docs.json`) with schemathesis.

Runs against the built bento served in a subprocess: every operation of the
published schema, with inputs generated from it (valid and invalid). No
response may be a 5xx, and every response must match the published schema.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

pytestmark = pytest.mark.e2e
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = 100  # per operation, valid and invalid


def _fuzz(operation) -> None:
    valid_or_not = st.one_of(operation.as_strategy(mode) for mode in GenerationMode)

    @given(case=valid_or_not)
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=60)

    run()


def test_every_operation_survives_fuzzing(server):
    schema = schemathesis.openapi.from_url(f"{server}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /predict", "POST /predict_array", "POST /weights_digest"} <= labels
    for operation in operations:
        _fuzz(operation)
