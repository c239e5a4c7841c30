"""Hostile-input and failing-upstream benchmark: what one ``routeiq serve`` process does.

It starts the loopback upstream (``tests/support/upstream.py``) and one ``routeiq serve``
process whose config has, per fault, a fast-path deployment (``fast-…``) and one that litellm
must call (``litellm-…``: ``rpm`` is a litellm-only parameter), with
``router_settings: {num_retries: 2, timeout: 2}``; then it prints one row per scenario: the
gateway's answer, the upstream attempts it caused (the upstream's own request counter) and the
wall time.

    python benchmarks/hostile.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests package

from tests.support.procs import BIN, free_port, gateway_env, wait_http_ready
from tests.support.upstream import Upstream, running_upstream

KEY = "sk-bench-master-key"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
FAULTS = ("fail-500", "fail-429", "drop", "fail-400", "hang", "invalid-json", "html")


def config(upstream: Upstream, *, max_inflight: int, body_timeout_s: float) -> dict[str, Any]:
    models: list[dict[str, Any]] = []
    for fault in (*FAULTS, "slow-5s", "gpt"):
        base = {"model": f"openai/{fault}", "api_base": upstream.base_url, "api_key": "k"}
        models.append({"model_name": f"fast-{fault}", "litellm_params": base})
        models.append({"model_name": f"litellm-{fault}", "litellm_params": {**base, "rpm": 10**6}})
    models.append(
        {
            "model_name": "mock",
            "litellm_params": {"model": "openai/mock", "mock_response": "ok", "mock_delay": 0.5},
        }
    )
    return {
        "model_list": models,
        "router_settings": {"num_retries": 2, "timeout": 2},
        "routeiq": {
            "master_key": KEY,
            "drain": {"delay_s": 0, "timeout_s": 2},
            "limits": {"max_inflight": max_inflight, "body_timeout_s": body_timeout_s},
        },
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def post(url: str, body: dict[str, Any], give_up_s: float = 120) -> tuple[str, float]:
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=give_up_s) as client:
            response = await client.post(f"{url}/v1/chat/completions", json=body, headers=AUTH)
        answer = str(response.status_code)
        if response.status_code >= 400:
            answer += f" {response.json()['error'].get('code')}"
    except httpx.HTTPError as exc:
        answer = type(exc).__name__
    return answer, time.monotonic() - started


async def raw_request(port: int, data: bytes, trickle: bytes = b"") -> str:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(data)
            answer = b""
            async with anyio.create_task_group() as tg:
                if trickle:

                    async def send_slowly() -> None:
                        for byte in trickle:
                            await stream.send(bytes([byte]))
                            await anyio.sleep(1.0)

                    tg.start_soon(send_slowly)
                while b"\r\n" not in answer:
                    answer += await stream.receive()
                tg.cancel_scope.cancel()
        return answer.split(b" ")[1].decode()
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        return type(exc).__name__


async def run(args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, int | str, float]] = []
    async with running_upstream() as upstream:
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            document = config(
                upstream, max_inflight=args.max_inflight, body_timeout_s=args.body_timeout
            )
            path.write_text(yaml.safe_dump(document))
            command = [str(BIN / "routeiq"), "serve", "--port", str(port), "--config", str(path)]
            log = (Path(tmp) / "gateway.log").open("wb")
            env = gateway_env()
            proc = subprocess.Popen(  # noqa: ASYNC220  # started once, before measuring
                command, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            url = f"http://127.0.0.1:{port}"
            try:
                await anyio.to_thread.run_sync(wait_http_ready, url, 180)
                for fault in FAULTS:
                    for path_name in ("fast", "litellm"):
                        upstream.reset()
                        body: dict[str, Any] = {"model": f"{path_name}-{fault}", **CHAT}
                        answer, seconds = await post(url, body)
                        rows.append(
                            (
                                f"{path_name}-{fault}",
                                answer,
                                upstream.statistics().requests,
                                seconds,
                            )
                        )
                for path_name in ("fast", "litellm"):
                    upstream.reset()
                    body = {"model": f"{path_name}-slow-5s", "timeout": 30, **CHAT}
                    answer, seconds = await post(url, body)
                    rows.append(
                        (
                            f"{path_name} client timeout 30 > 2",
                            answer,
                            upstream.statistics().requests,
                            seconds,
                        )
                    )
                before = rss_mb(proc.pid)
                answer, seconds = await post(url, {"model": "mock", "n": 1_000_000, **CHAT})
                rows.append(
                    (
                        f"mock n=1000000 (RSS {before:.0f}→{rss_mb(proc.pid):.0f} MB)",
                        answer,
                        0,
                        seconds,
                    )
                )
                # 50 clients that leave after 1 s while their upstream call hangs: how long the
                # upstream keeps working for them once they are gone.
                for path_name in ("fast", "litellm"):
                    upstream.reset()
                    async with anyio.create_task_group() as tg:
                        for _ in range(50):
                            body = {"model": f"{path_name}-hang", **CHAT}
                            tg.start_soon(post, url, body, 2.0)
                    left = time.monotonic()
                    busy = upstream.statistics().in_flight
                    with anyio.move_on_after(60):
                        await upstream.wait_for(lambda s: s.in_flight == 0)
                    stats = upstream.statistics()
                    rows.append(
                        (
                            f"{path_name}: 50 clients leave after 2 s",
                            f"upstream busy {busy} → {stats.in_flight}",
                            stats.requests,
                            time.monotonic() - left,
                        )
                    )
                # A body trickling in: Content-Length 1000000, then 1 byte/s.
                head = (
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: g\r\n"
                    f"authorization: Bearer {KEY}\r\ncontent-length: 1000000\r\n\r\n"
                ).encode()
                started = time.monotonic()
                status = await raw_request(port, head, trickle=b" " * 120)
                rows.append(("slow body, 1 byte/s", status, 0, time.monotonic() - started))
                # A burst of concurrent connections past the in-flight cap.
                payload = json.dumps({"model": "mock", **CHAT}).encode()
                burst = (
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: g\r\nconnection: close\r\n"
                    f"authorization: Bearer {KEY}\r\ncontent-length: {len(payload)}\r\n\r\n"
                ).encode() + payload
                statuses: list[str] = []
                started = time.monotonic()

                async def one() -> None:
                    statuses.append(await raw_request(port, burst))

                async with anyio.create_task_group() as tg:
                    for _ in range(args.burst):
                        tg.start_soon(one)
                counts = {s: statuses.count(s) for s in sorted(set(statuses))}
                rows.append(
                    (
                        f"{args.burst} concurrent connections",
                        str(counts),
                        0,
                        time.monotonic() - started,
                    )
                )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                log.close()
    width = max(len(r[0]) for r in rows)
    print(f"{'scenario':<{width}}  {'answer':<32} {'upstream hits':>13} {'seconds':>8}")
    for scenario, answer, hits, seconds in rows:
        print(f"{scenario:<{width}}  {answer:<32} {hits!s:>13} {seconds:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--max-inflight", type=int, default=64)
    parser.add_argument("--body-timeout", type=float, default=5.0)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
