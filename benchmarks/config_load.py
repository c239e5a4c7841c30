"""Config loading benchmark: how long reading and parsing takes for ordinary and hostile files,
and how long the event loop stalls while a reload reads and parses one.

For each case it times ``load_config`` (the path ``check``, ``serve`` and reload share) and
reports the outcome; then it runs a reload-style ``anyio.to_thread.run_sync`` of the same work
while a ticker on the event loop records the longest gap between its 1 ms ticks.

    python benchmarks/config_load.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests package

from routeiq.config.loader import load_config
from routeiq.errors import ConfigError
from tests.config.hostile import ALIAS_BOMB

DEPLOYMENT = (
    "  - model_name: m{i}\n"
    "    litellm_params: {{model: openai/m{i}, api_base: 'http://10.0.0.{j}:8000/v1', "
    "api_key: os.environ/KEY, rpm: 100}}\n"
    "    model_info: {{id: dep-{i}, description: 'deployment number {i}'}}\n"
)


def deployments(count: int) -> str:
    return "model_list:\n" + "".join(DEPLOYMENT.format(i=i, j=i % 250) for i in range(count))


def write(directory: Path, name: str, make: Callable[[Path], object]) -> Path:
    path = directory / name
    make(path)
    return path


def cases(directory: Path) -> list[tuple[str, Path]]:
    def text(content: str) -> Callable[[Path], object]:
        return lambda p: p.write_text(content)

    def huge(p: Path) -> None:
        with p.open("wb") as f:
            f.truncate(50 * 1024 * 1024)

    def fifo(p: Path) -> None:
        os.mkfifo(p)

    small = deployments(10)
    big = deployments(10_000)  # ~190k nodes: just under the node limit
    return [
        ("10 deployments", write(directory, "small.yaml", text(small))),
        (f"10000 deployments ({len(big) // 1024} KiB)", write(directory, "big.yaml", text(big))),
        (
            f"alias bomb ({len(ALIAS_BOMB)} B)",
            write(directory, "bomb.yaml", text(ALIAS_BOMB)),
        ),
        (
            "non-UTF-8 byte",
            write(directory, "latin1.yaml", lambda p: p.write_bytes(b"model_list: caf\xe9\n")),
        ),
        ("50 MB file", write(directory, "huge.yaml", huge)),
        ("FIFO", write(directory, "fifo.yaml", fifo)),
    ]


def load(path: Path) -> str:
    try:
        config = load_config({"KEY": "sk-benchmark-key"}, path)
    except ConfigError as exc:
        return "rejected: " + exc.problems[0][1][:60]
    return f"loaded {len(config.model_list)} deployments"


async def stall_during(path: Path) -> float:
    """The longest gap between 1 ms ticks of the loop while a thread loads ``path``."""
    longest = 0.0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.to_thread.run_sync(load, path)
        done.set()
    return longest


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, path in cases(Path(tmp)):
            start = time.perf_counter()
            outcome = load(path)
            elapsed = time.perf_counter() - start
            stall = anyio.run(stall_during, path)
            rows.append((name, elapsed * 1000, stall * 1000, outcome))
    print(f"{'case':<28} {'load ms':>9} {'loop stall ms':>14}  outcome")
    for name, ms, stall, outcome in rows:
        print(f"{name:<28} {ms:>9.1f} {stall:>14.1f}  {outcome}")


if __name__ == "__main__":
    main()
