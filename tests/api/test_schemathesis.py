"""schemathesis against the running service: requests generated from /api/v1/schema must get
no 500, only status codes the schema lists, and bodies that match the schema.

The schema is loaded from the service's URL, as a client would read it, and each operation
gets a bounded number of generated requests (EXAMPLES_PER_OPERATION), so the whole run stays
well under a minute. Requests carry a valid Bearer token, so the checks reach past the 401.
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import create, wait_terminal
from tests.harness import Service, make_token

EXAMPLES_PER_OPERATION = 25
# Each login attempt runs the password hasher (on purpose: it is what makes guessing slow),
# a fraction of a second of CPU each, so this operation gets fewer examples.
EXAMPLES_FOR_LOGIN = 5
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def with_real_id(cases: Any, generation_id: str) -> Any:
    def use(pair: tuple[Any, bool]) -> Any:
        case, real = pair
        if real and case.path_parameters and "generation_id" in case.path_parameters:
            case.path_parameters["generation_id"] = generation_id
        return case

    return st.tuples(cases, st.booleans()).map(use)


def test_generated_requests_get_no_500_and_responses_match_the_schema(service: Service) -> None:
    schema = schemathesis.openapi.from_url(service.url("/api/v1/schema"))
    headers = {"Authorization": f"Bearer {make_token('schemathesis')}"}
    with service.client("schemathesis") as client:
        # A real, ended generation of this user: half the generated requests for one id use
        # it, so that the 200 responses are checked as well as the 404s of random ids.
        real_id = create(client, "schema fuzz [fake tokens=3]")["id"]
        wait_terminal(client, real_id)
    # Each is Ok(operation), or Err for a part of the schema that could not be read.
    results: list[Any] = list(schema.get_all_operations())
    operations: list[Any] = [result.ok() for result in results]
    assert len(operations) >= 7, [operation.label for operation in operations]
    started = time.monotonic()
    checked: list[str] = []

    for operation in operations:

        @given(case=with_real_id(operation.as_strategy(), real_id))
        @settings(
            max_examples=(
                EXAMPLES_FOR_LOGIN
                if operation.path.endswith("/auth/token")
                else EXAMPLES_PER_OPERATION
            ),
            deadline=None,
            database=None,
            derandomize=True,
            # Generate and explicit examples only: a shrink of a failure is not worth the
            # minutes here, the failing case is reported as found.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=service.url(), headers=headers, checks=CHECKS)

        operation_started = time.monotonic()
        check()
        checked.append(f"{operation.label} {time.monotonic() - operation_started:.1f} s")

    elapsed_s = time.monotonic() - started
    print(f"\n{len(checked)} operations, {elapsed_s:.1f} s: {', '.join(checked)}")
    assert elapsed_s < 60
