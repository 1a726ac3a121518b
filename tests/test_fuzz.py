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

from service.auth import OPEN
from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = 100  # per operation, valid and invalid


def _fuzz(operation, headers: dict[str, str] | None = None, examples: int = EXAMPLES) -> None:
    valid_or_not = st.one_of(operation.as_strategy(mode) for mode in GenerationMode)

    @given(case=valid_or_not)
    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case) -> None:
        case.call_and_validate(checks=CHECKS, headers=headers, timeout=60)

    run()


def test_every_operation_survives_fuzzing(server):
    schema = schemathesis.openapi.from_url(f"{server}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /predict", "POST /predict_array"} <= labels
    for operation in operations:
        _fuzz(operation)


def test_with_api_keys_every_operation_survives_fuzzing_with_a_key(keyed_server):
    """The same, served with API keys, each request carrying the admin key (it opens every
    route); /docs.json itself needs it, and declares the bearer scheme."""
    base, _ = keyed_server
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    schema = schemathesis.openapi.from_url(f"{base}/docs.json", headers=headers)
    assert schema.raw_schema["security"] == [{"bearer": []}]
    for result in schema.get_all_operations():
        _fuzz(result.ok(), headers=headers, examples=25)


def test_with_api_keys_no_generated_request_gets_past_the_key(keyed_server):
    """Without a key, every generated request to a protected operation is a 401, whatever its
    body: refused before anything is parsed."""
    base, _ = keyed_server
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    schema = schemathesis.openapi.from_url(f"{base}/docs.json", headers=headers)
    protected = [r.ok() for r in schema.get_all_operations() if r.ok().path not in OPEN]
    assert {"POST /predict", "POST /predict_array"} <= {op.label for op in protected}
    for operation in protected:
        _all_refused(operation)


def _all_refused(operation) -> None:
    """Ten generated requests to `operation`, valid or not, sent without a key: each a 401."""
    valid_or_not = st.one_of(operation.as_strategy(mode) for mode in GenerationMode)

    @given(case=valid_or_not)
    @settings(max_examples=10, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case) -> None:
        response = case.call(timeout=60)
        assert response.status_code == 401, (operation.label, response.status_code)

    run()
