"""Fuzzing a real ``routeiq serve`` process: schemathesis from its own ``/openapi.json``, and
hypothesis-built hostile raw bodies, against a fast-path model on a real upstream process and a
``mock_response`` model (litellm's call path). The contract: no response is a 5xx, the in-flight
gauge is back to 0 afterwards, and the process's memory stays bounded.

Runs are bounded and derandomized (the same examples every run); ``pytest -s`` prints each
fuzzer's status-code histogram.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support.procs import BIN, REPO, GatewayProcess, free_port, gateway_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEY = "sk-fuzz-master-key-1"
ADMIN = "sk-fuzz-admin-key-2"
MODELS = ["gpt", "mock"]  # fast path on the real upstream; litellm's path with mock_response
ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
RSS_GROWTH_LIMIT_MB = 300
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Live:
    url: str
    gateway: GatewayProcess
    http: httpx.Client

    def inflight(self) -> float:
        # Scraped as Prometheus does: without a key (the master key is no read key).
        response = httpx.get(f"{self.url}/metrics", timeout=30)
        assert response.status_code == 200, response.text
        metrics = response.text
        values = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("gateway_inflight_requests")
        ]
        assert values, "gateway_inflight_requests is not exported"
        return sum(values)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.gateway.proc.pid}/status", encoding="ascii") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream", "--port", "0"],
        cwd=REPO,
        env=gateway_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert upstream.stdout is not None
    upstream_url = upstream.stdout.readline().strip()
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "gpt",
                        "litellm_params": {
                            "model": "openai/gpt",
                            "api_base": upstream_url,
                            "api_key": "sk-up",
                        },
                    },
                    {
                        "model_name": "mock",
                        "litellm_params": {
                            "model": "openai/mock",
                            "api_key": "k",
                            "mock_response": "mocked",
                        },
                    },
                ],
                "router_settings": {"num_retries": 0, "timeout": 10},
                "routeiq": {
                    "master_key": KEY,
                    "admin_key": ADMIN,
                    # Well under the client's 30 s: a request whose body never arrives whole
                    # shows as a 408 naming itself, not as a client timeout.
                    "limits": {"body_timeout_s": 5},
                    "mcp": {"store_path": str(tmp / "mcp.sqlite")},
                },
            }
        )
    )
    port = free_port()
    gateway = GatewayProcess(
        [str(BIN / "routeiq"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        port,
        gateway_env({"ROUTEIQ_CONFIG": str(config), "ROUTEIQ_LOG_LEVEL": "warning"}),
        tmp / "gateway.log",
    ).start()
    try:
        gateway.wait_ready(timeout=120)
        with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=30) as http:
            yield Live(gateway.url, gateway, http)
        assert "Traceback" not in gateway.output(), gateway.output()
    finally:
        gateway.stop()
        upstream.terminate()
        upstream.wait(timeout=10)
        upstream.stdout.close()


def report(name: str, histogram: Counter[int]) -> None:
    print(f"\n{name}: status-code histogram {dict(sorted(histogram.items()))}")


def check_afterwards(live: Live, rss_before: float) -> None:
    assert live.inflight() == 0
    growth = live.rss_mb() - rss_before
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew by {growth:.0f} MB"


def test_schemathesis_finds_no_5xx_on_any_route(live: Live) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    histogram: Counter[int] = Counter()
    rss_before = live.rss_mb()
    operations = [cast(Any, result).ok() for result in schema.get_all_operations()]
    assert len(operations) == 16
    for operation in operations:
        fuzz_operation(live, operation, histogram)
    report("schemathesis", histogram)
    assert sum(histogram.values()) > 200
    assert any(200 <= status < 300 for status in histogram)
    check_afterwards(live, rss_before)


def fuzz_operation(live: Live, operation: Any, histogram: Counter[int]) -> None:
    key = ADMIN if operation.path.startswith("/_admin") else KEY
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    if operation.path.startswith("/v1/"):
        examples = 100 if operation.method.upper() == "POST" else 15
    else:
        examples = 6

    @settings(FUZZ, max_examples=examples)
    @given(case=cases, model=st.sampled_from([None, *MODELS]))
    def fuzz(case: Any, model: str | None) -> None:
        if model is not None and isinstance(case.body, dict):
            case.body["model"] = model
        # The generated key (often "Bearer ") would win over ours: every call is authorized,
        # so the fuzzing reaches the handlers rather than the 401.
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers = {**headers, "Authorization": f"Bearer {key}"}
        response = case.call(base_url=live.url, timeout=30)
        histogram[response.status_code] += 1
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
        )

    fuzz()


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
hostile = st.one_of(
    st.integers(900, 3000).map(lambda depth: nested(depth)),
    st.integers(900, 3000).map(lambda depth: '{"a": ' * depth + "1" + "}" * depth),
    st.integers(4301, 6000).map(lambda digits: "9" * digits),
    st.sampled_from(['"\\ud800"', '"\\udfff"', '"a\\udc00b"', '["\\ud83d"]', '{"\\ud800": 1}']),
    st.sampled_from(["1e400", "-1e400", "10" + "0" * 300, "-0", "[]", "{}", '""']),
    st.sampled_from(["1000000", "1000000000", str(2**63), "-1", "0", "129", '"many"', "1.5"]),
    json_values.map(json.dumps),
)
fields = st.sampled_from(
    ["model", "messages", "prompt", "input", "n", "max_tokens", "stream", "metadata", "seed",
     "temperature", "response_format", "stop", "tools", "logit_bias", "\\ud800", "user",
     "encoding_format", "dimensions", "best_of", "stream_options"]
)  # fmt: skip


@st.composite
def raw_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    route = draw(st.sampled_from(ROUTES))
    base: dict[str, str] = {"model": json.dumps(draw(st.sampled_from(MODELS)))}
    if route == "/v1/chat/completions":
        base["messages"] = '[{"role": "user", "content": "hi"}]'
    elif route == "/v1/completions":
        base["prompt"] = '"hi"'
    else:
        base["input"] = '"hi"'
    for _ in range(draw(st.integers(1, 3))):
        base[draw(fields)] = draw(hostile)
    text = "{" + ", ".join(f'"{key}": {value}' for key, value in base.items()) + "}"
    return route, text.encode()


def test_hostile_raw_bodies_get_no_5xx_on_either_call_path(live: Live) -> None:
    histogram: Counter[int] = Counter()
    rss_before = live.rss_mb()

    @settings(FUZZ, max_examples=250)
    @given(request=raw_bodies())
    def fuzz(request: tuple[str, bytes]) -> None:
        route, body = request
        response = live.http.post(
            f"{live.url}{route}", content=body, headers={"content-type": "application/json"}
        )
        histogram[response.status_code] += 1
        assert response.status_code < 500, f"{route} {body[:300]!r}: {response.text}"
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}

    fuzz()
    report("raw bodies", histogram)
    assert histogram[400] > 0 and any(200 <= status < 300 for status in histogram)
    check_afterwards(live, rss_before)
