"""A small keep-alive HTTP/1.1 load generator on raw sockets (cheap, so the server gets the CPU)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    rate: float  # requests per second
    answered: int  # requests answered
    p50: float  # latency, seconds
    p99: float
    seconds: float  # how long the load ran
    sent: int = 0  # requests sent, where more than answered (those in flight as the run ends); else `answered`
    cpu_us: float = 0.0  # the server's CPU time per request, where measured
    redis_us: float = 0.0  # the Redis server's CPU time per request, where measured

    def __post_init__(self) -> None:
        self.sent = self.sent or self.answered


def http_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def load(port: int, request: bytes | list[bytes], seconds: float, connections: int,
               ok=range(200, 300)) -> Result:
    """Keep-alive connections sending `request` (or cycling through a list of them) for `seconds`."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    requests = [request] if isinstance(request, bytes) else request

    async def connection(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = first
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(requests[n % len(requests)])
                n += 1
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                if status not in ok:
                    raise RuntimeError(f"status {status}: {head!r}")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i * 997) for i in range(connections)))
    took = time.perf_counter() - started
    latencies.sort()
    return Result(len(latencies) / took, len(latencies),
                  *(latencies[min(len(latencies) - 1, int(len(latencies) * p))] for p in (0.5, 0.99)), took)


_WRK_SCRIPT = """
sent = 0
function request()
  sent = sent + 1
  return requests[sent % #requests + 1]
end
local threads = {}
function setup(thread) threads[#threads + 1] = thread end
function done(summary, latency, _)
  local e, written = summary.errors, 0
  for _, thread in ipairs(threads) do written = written + thread:get("sent") end
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, written, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


async def wrk_load(port: int, request: bytes | list[bytes], seconds: float, connections: int) -> Result:
    """As `load`, with wrk (Debian's package) as the generator: one thread, about 5 µs of CPU per request
    where the Python generator takes 8, CPU that servers on a 2-core machine would lack. Any error (a
    status outside 2xx and 3xx included) fails the run."""
    import tempfile

    requests = [request] if isinstance(request, bytes) else request
    escaped = ("".join(chr(c) if 32 <= c < 127 and c not in b'"\\' else f"\\{c:03d}" for c in r) for r in requests)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write("requests = {" + ",".join(f'"{r}"' for r in escaped) + "}" + _WRK_SCRIPT)
        script.flush()
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script.name,
            f"http://127.0.0.1:{port}/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out = (await proc.communicate())[0].decode()
    found = [line.split()[1:] for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not found:
        raise RuntimeError(f"wrk failed: {out}")
    answered, sent, micros, p50, p99, errors = map(int, found[0])
    if errors:
        raise RuntimeError(f"wrk: {errors} errors: {out}")
    return Result(answered / (micros / 1e6), answered, p50 / 1e6, p99 / 1e6, micros / 1e6, sent=sent)


GENERATORS = {"wrk": wrk_load, "python": load}


def run(main) -> None:
    """Run a load benchmark's `main()` on uvloop: the generator then costs about 8 µs of CPU per
    request instead of 24 on asyncio's own loop, CPU the servers it measures would lack (2 cores)."""
    import uvloop

    uvloop.run(main)


def load_arguments(doc: str, generators: bool = False, **more: int):
    """--seconds, --rounds and --connections, the options of the load benchmarks, and `more` integer
    options with their defaults. `generators`: a --generator option too (wrk where it is installed)."""
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    if generators:
        parser.add_argument("--generator", choices=GENERATORS, default="wrk" if shutil.which("wrk") else "python")
    for name, default in more.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    return parser.parse_args()


async def wait_stored(stream, expected: int, key: str = "oa:events", limit: float = 30.0) -> float:
    """Seconds until `expected` entries are on the stream: /collect answers first and stores after.
    `stream` is a (synchronous) Redis client."""
    started = time.perf_counter()
    while stream.xlen(key) < expected and time.perf_counter() - started < limit:
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): less noisy than throughput on shared CPUs."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(code: str, env: dict, port: int) -> subprocess.Popen:
    """Run `code` (which serves on `port`) in a child process and wait until /healthz or / answers."""
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); {code}"],
                            env=env, cwd=ROOT)
    for _ in range(150):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def cli(env: dict, *args: str) -> dict:
    import json

    out = subprocess.run([sys.executable, "-m", "openanalytics.cli", *args, "--json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)
