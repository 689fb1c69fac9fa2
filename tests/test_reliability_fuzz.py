"""Fuzzing: schemathesis drives every operation of /infra/vast/openapi.json with the control key.

The Flask app runs in-process (WSGI) against the vast.ai simulator over loopback HTTP, so power
actions really start and stop the simulated instance. A bounded number of examples per
operation; every answer must match the description (status code, content type, body schema),
and no answer may be a 5xx other than the two the description gives for vast.ai's side: 502
(vast.ai failed or refused) and 504 (the instance's health URL did not answer in time, as with
a fuzzed health_port that the instance does not expose).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import CONTROL_KEY, config_from
from support.liveserver import SIMULATED_INSTANCE, instant_simulator
from vastpanel import create_app

SIM_KEY = "sim-fuzz-key-0123456789abcdef"
INSTANCE_ID = 31337
MAX_EXAMPLES = 30
UPSTREAM_CODES = {502, 504}  # vast.ai failed; the instance not healthy within the wait


def no_server_error(ctx, response, case) -> None:
    """Fail on any 5xx that is the app's own fault (500, or 503 with a key configured)."""
    if response.status_code >= 500 and response.status_code not in UPSTREAM_CODES:
        raise AssertionError(f"{response.status_code}: {response.text[:300]}")


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def sim():
    with instant_simulator(SIM_KEY, INSTANCE_ID) as sim:
        yield sim


@pytest.fixture(scope="module")
def fuzzed_app(sim, tmp_path_factory):
    config = config_from(
        {
            "VAST_URL": sim.url,
            "VAST_API_KEY": SIM_KEY,
            "VAST_INSTANCE_ID": str(INSTANCE_ID),
            "CONTROL_API_KEY": CONTROL_KEY,
            "VAST_DB_PATH": str(tmp_path_factory.mktemp("fuzz") / "panel.db"),
            "VAST_STATUS_TTL_S": "0",
            # power/on with wait_for_health and a fuzzed health port or path never gets a 200:
            # it must answer 504 soon, not hang.
            "VAST_WAIT_TIMEOUT_S": "1",
            **SIMULATED_INSTANCE,
        }
    )
    app = create_app(config)
    yield app
    app.extensions["vastpanel"].store.close()


@pytest.fixture
def api_schema(fuzzed_app):
    return schemathesis.openapi.from_wsgi("/infra/vast/openapi.json", fuzzed_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_within_its_description(case):
    case.call_and_validate(headers={"X-API-Key": CONTROL_KEY}, checks=CHECKS)
