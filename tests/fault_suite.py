"""The fault suite: under load, kill and stop the platform's processes and stores one at a time and
check that every acknowledged event is stored exactly once.

    python -m tests.fault_suite                 # the full run: outages of 30 s
    python -m tests.fault_suite --outage 5      # shorter (tests/test_faults.py runs the full one)

It starts its own stack (tests/support/stack.py): PostgreSQL, a redis-server with AOF
(appendfsync everysec) on its own port and folder, the ClickHouse HTTP test server, two
`openanalytics serve` and two `openanalytics worker` processes. A load of server-side events
(each 202's event ids recorded) and /collect hits (each answered 204 recorded, with the process
that answered it) runs through both API processes while each fault is injected in turn, each on a
project of its own:

- kill -9 of a worker (started again a second later); kill -9 of an API process (the same);
- ClickHouse stopped for --outage seconds; Redis killed with -9 and started again (from its AOF);
  Redis restarted while ClickHouse is down; a deletion request during a ClickHouse outage.

After each: the acknowledged events stored (lost, duplicated), the requests refused meanwhile, the
/collect hits answered and stored (a lost hit must be one the killed API process answered in its
last second; none may be stored twice), and the time from the fault's end to a probe event being
stored (ingest flowing again). It prints the table the README carries and exits 1 if any promise
was broken. The stack's workers take a dead worker's batch over after 3 s (`OA_WORKER_CLAIM_IDLE_MS`;
production's default is a minute) and cache keys and projects for a second, as by default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

from tests.support.stack import Process, Stack

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
RECOVERY_TARGET_SECONDS = 10.0
DEFAULT_OUTAGE = 30.0  # seconds each store stays down
EVENTS_PER_REQUEST = 5
REQUEST_EVERY_SECONDS = 0.05  # per API process: 100 server-side events a second each
HIT_EVERY_SECONDS = 0.02  # /collect hits, alternating between the API processes
HELD_WINDOW_SECONDS = 1.0  # hits a killed process answered this shortly before dying may have been held


@dataclass
class Tenant:
    project_id: str
    site_id: str
    headers: dict[str, str]


@dataclass
class Load:
    """Server-side events and /collect hits through every API process until stopped."""

    apis: list[Process]
    tenant: Tenant
    phase: str
    acknowledged: set[str] = field(default_factory=set)
    refused: int = 0
    answered: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: defaultdict(list))  # api -> (path, at)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._events, args=(api,), daemon=True) for api in self.apis]
        self._threads.append(threading.Thread(target=self._hits, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _events(self, api: Process) -> None:
        body = [{"event_type": "event", "event_name": "load"}] * EVENTS_PER_REQUEST
        url = f"{api.base}/v1/projects/{self.tenant.project_id}/events"
        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(REQUEST_EVERY_SECONDS):
                try:
                    response = http.post(url, json=body, headers=self.tenant.headers)
                except httpx.HTTPError:
                    response = None
                with self._lock:
                    if response is not None and response.status_code == 202:
                        self.acknowledged.update(response.json()["event_ids"])
                    else:
                        self.refused += 1

    def _hits(self) -> None:
        clients = {api.name: httpx.Client(timeout=5, headers={"User-Agent": BROWSER}) for api in self.apis}
        n = 0
        while not self._stop.wait(HIT_EVERY_SECONDS):
            api = self.apis[n % len(self.apis)]
            path = f"/h/{self.phase}/{n}"
            n += 1
            try:
                response = clients[api.name].post(f"{api.base}/collect", content=(
                    f'{{"site_id": "{self.tenant.site_id}", "url": "https://shop.example{path}"}}'),
                    headers={"Content-Type": "text/plain"})
            except httpx.HTTPError:
                continue
            if response.status_code == 204:
                with self._lock:
                    self.answered[api.name].append((path, time.monotonic()))
        for client in clients.values():
            client.close()


@dataclass
class Outcome:
    fault: str
    acknowledged: int
    refused: int  # server-side requests answered otherwise than 202 (or not at all): not acknowledged
    stored: int
    lost: int
    duplicated: int
    hits_answered: int
    hits_stored: int
    hits_lost: int
    hits_duplicated: int
    hits_held: int  # answered by the killed API process in its last second: it may have held them
    recovery_seconds: float
    note: str = ""

    @property
    def kept(self) -> bool:
        """0 acknowledged events lost or stored twice; no /collect hit stored twice, and none lost but what
        a killed process held; ingest flowing again in time."""
        return (self.lost == 0 and self.duplicated == 0 and self.hits_duplicated == 0
                and self.hits_lost <= self.hits_held and self.recovery_seconds <= RECOVERY_TARGET_SECONDS
                and not self.note.startswith("FAILED"))


class Suite:
    def __init__(self, stack: Stack, outage: float, log=print, deletion_outage: float | None = None):
        self.stack = stack
        self.outage = outage
        self.deletion_outage = outage if deletion_outage is None else deletion_outage
        self.log = log

    def tenant(self, name: str) -> Tenant:
        limits = ["--limit", "api_requests_per_minute=1000000", "--limit", "collect_per_ip_per_minute=1000000",
                  "--limit", "collect_per_site_per_minute=10000000"]
        project = self.stack.cli("projects", "create", "--name", name, "--plan", "enterprise", *limits)
        key = self.stack.cli("keys", "create", "--project", project["id"], "--scope", "events:write",
                             "--scope", "privacy:delete", "--scope", "privacy:export", "--scope", "stats:read",
                             "--scope", "projects:read")
        self.stack.cli("migrate")  # its database now, not at its first insert during a fault
        return Tenant(project["id"], project["site_id"], {"Authorization": f"Bearer {key['secret']}"})

    def probe(self, tenant: Tenant, since: float) -> float:
        """Seconds from `since` until an event sent now is stored (ingest flowing again)."""
        event_id = None
        deadline = time.monotonic() + 120
        while event_id is None and time.monotonic() < deadline:
            for api in self.stack.apis:
                try:
                    response = httpx.post(f"{api.base}/v1/projects/{tenant.project_id}/events", timeout=5,
                                          json={"event_type": "event", "event_name": "probe"}, headers=tenant.headers)
                except httpx.HTTPError:
                    continue
                if response.status_code == 202:
                    event_id = response.json()["event_ids"][0]
                    break
            else:
                time.sleep(0.1)
        while time.monotonic() < deadline:
            try:
                if self.stack.stored(tenant.project_id, where=f"event_id = toUUID('{event_id}')"):
                    return time.monotonic() - since
            except Exception:  # ClickHouse still coming up
                pass
            time.sleep(0.1)
        return float("inf")

    def run_phase(self, fault: str, inject: Callable[[Tenant], tuple[float, Process | None, float]]) -> Outcome:
        """`inject` makes the fault and returns when it ended, the API process it killed (if any) and when."""
        phase = fault.split()[0] + uuid.uuid4().hex[:4]
        tenant = self.tenant(f"fault {fault}")
        self.log(f"-- {fault}")
        load = Load(self.stack.apis, tenant, phase).start()
        time.sleep(2)
        ended, killed_api, killed_at = inject(tenant)
        recovery = self.probe(tenant, ended)
        time.sleep(2)
        load.stop()
        note = "" if self.stack.wait_drained(120) else "FAILED: the stream did not drain"
        time.sleep(1)
        stored = self.stack.stored(tenant.project_id, where="event_name = 'load'")
        acknowledged = load.acknowledged
        hits = self.stack.stored(tenant.project_id, "path", "origin = 'collect'")
        answered = [path for paths in load.answered.values() for path, _ in paths]
        held = set()
        if killed_api is not None:
            held = {path for path, at in load.answered[killed_api.name]
                    if killed_at - HELD_WINDOW_SECONDS <= at <= killed_at}
        lost_hits = [path for path in answered if path not in hits]
        return Outcome(
            fault=fault, acknowledged=len(acknowledged), refused=load.refused,
            stored=sum(stored.get(e, 0) > 0 for e in acknowledged), lost=sum(e not in stored for e in acknowledged),
            duplicated=sum(count - 1 for count in stored.values() if count > 1),
            hits_answered=len(answered), hits_stored=len(answered) - len(lost_hits), hits_lost=len(lost_hits),
            hits_duplicated=sum(count - 1 for count in hits.values() if count > 1),
            hits_held=sum(1 for path in lost_hits if path in held), recovery_seconds=recovery, note=note)

    # -- the faults -------------------------------------------------------------

    def kill_worker(self, tenant: Tenant):
        worker = self.stack.workers[0]
        worker.kill()
        time.sleep(1)
        worker.start()
        return time.monotonic(), None, 0.0

    def kill_api(self, tenant: Tenant):
        api = self.stack.apis[0]
        killed_at = time.monotonic()
        api.kill()
        time.sleep(1)
        api.start()
        return time.monotonic(), api, killed_at

    def stop_clickhouse(self, tenant: Tenant):
        self.stack.clickhouse.stop()
        time.sleep(self.outage)
        self.stack.clickhouse.start()
        return time.monotonic(), None, 0.0

    def kill_redis(self, tenant: Tenant):
        self.stack.redis.kill()
        self.stack.redis.start()  # from its AOF
        return time.monotonic(), None, 0.0

    def restart_redis_while_clickhouse_is_down(self, tenant: Tenant):
        self.stack.clickhouse.stop()
        time.sleep(self.outage / 2)
        self.stack.redis.kill()
        self.stack.redis.start()
        time.sleep(self.outage / 2)
        self.stack.clickhouse.start()
        return time.monotonic(), None, 0.0

    def delete_during_clickhouse_outage(self, tenant: Tenant):
        """A user's events stored, their deletion asked for, ClickHouse stopped as the worker starts on it.
        (A deletion that was over before it could be seen running is tried again with another user.)"""
        api = self.stack.apis[1]
        for n in range(3):
            user = f"sha256/fault+suite={n}="
            sent = httpx.post(f"{api.base}/v1/projects/{tenant.project_id}/events", headers=tenant.headers,
                              json=[{"event_type": "identify", "user_id": user}] * 20, timeout=10)
            assert sent.status_code == 202, sent.text
            deadline = time.monotonic() + 30
            while self.stack.stored(tenant.project_id, "user_id", "event_type = 'identify'").get(user, 0) < 20:
                assert time.monotonic() < deadline, "the user's events were not stored"
                time.sleep(0.2)
            request = httpx.delete(f"{api.base}/v1/projects/{tenant.project_id}/privacy/user/{quote(user, safe='')}",
                                   headers=tenant.headers, timeout=10).json()
            deadline = time.monotonic() + 10
            while (began := httpx.get(f"{api.base}{request['poll_url']}", headers=tenant.headers,
                                      timeout=10).json())["status"] == "queued" and time.monotonic() < deadline:
                time.sleep(0.005)  # until a worker has begun it
            if began["status"] == "running":
                break
        self.stack.clickhouse.stop()
        errors = set()
        stop_at = time.monotonic() + self.deletion_outage
        while time.monotonic() < stop_at:
            status = httpx.get(f"{api.base}{request['poll_url']}", headers=tenant.headers, timeout=10).json()
            errors.add((status["status"], status["error"], status["error_message"]))
            time.sleep(0.5)
        self.stack.clickhouse.start()
        ended = time.monotonic()
        deadline = ended + 120
        while (status := httpx.get(f"{api.base}{request['poll_url']}", headers=tenant.headers,
                                   timeout=10).json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        completed_at = datetime.fromisoformat(status["completed_at"]).timestamp() if status["completed_at"] else 0
        self.deletion = (began["status"], status, errors, self.stack.stored(tenant.project_id, where="user_id != ''"),
                         completed_at - (time.time() - (time.monotonic() - ended)))
        return ended, None, 0.0

    def run(self) -> list[Outcome]:
        outcomes = []
        for fault, inject in (
            ("kill -9 of a worker", self.kill_worker),
            ("kill -9 of an API process", self.kill_api),
            (f"ClickHouse stopped {self.outage:g} s", self.stop_clickhouse),
            ("Redis kill -9 and restart", self.kill_redis),
            (f"Redis restarted while ClickHouse is down ({self.outage:g} s)", self.restart_redis_while_clickhouse_is_down),
            (f"a deletion during a ClickHouse outage ({self.deletion_outage:g} s)",
             self.delete_during_clickhouse_outage),
        ):
            outcome = self.run_phase(fault, inject)
            if inject == self.delete_during_clickhouse_outage:
                began, status, errors, left, took = self.deletion
                personal = [e for e in errors if e[2] and ("fault" in e[2] or "http" in e[2] or "sha256" in e[2])]
                if began != "running" or status["status"] != "completed" or took < 0 or left or personal:
                    outcome.note = (f"FAILED: deletion {began} when ClickHouse stopped, then {status['status']} "
                                    f"{took:.1f} s after it returned; {sum(left.values())} of the user's left")
                else:
                    codes = sorted({e[1] for e in errors if e[1]})
                    outcome.note = (f"deletion running when ClickHouse stopped, completed {took:.1f} s after it "
                                    f"returned, nothing left; failed attempts meanwhile: {', '.join(codes) or 'none'} "
                                    f"(status polled every 0.5 s)")
            outcomes.append(outcome)
            self.log(row(outcome))
        return outcomes


HEADER = ("| fault | events acknowledged | refused | stored | lost | duplicated | /collect answered | stored "
          "| lost (held by the killed process) | duplicated | time to recover (s) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def row(o: Outcome) -> str:
    held = f" ({o.hits_held})" if o.hits_lost else ""
    return (f"| {o.fault} | {o.acknowledged:,} | {o.refused:,} | {o.stored:,} | {o.lost} | {o.duplicated} | "
            f"{o.hits_answered:,} | {o.hits_stored:,} | {o.hits_lost}{held} | {o.hits_duplicated} | "
            f"{o.recovery_seconds:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=DEFAULT_OUTAGE, help="seconds each store stays down")
    parser.add_argument("--folder", type=Path, help="keep the stack's files and logs here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="oa-faults-") as tmp:
        folder = args.folder or Path(tmp)
        with Stack(folder) as stack:
            outcomes = Suite(stack, args.outage, log=lambda line: print(line, file=sys.stderr, flush=True)).run()
    print(HEADER)
    for outcome in outcomes:
        print(row(outcome))
    for outcome in outcomes:
        if outcome.note:
            print(f"- {outcome.fault}: {outcome.note}")
    broken = [o.fault for o in outcomes if not o.kept]
    if broken:
        print(f"BROKEN: {', '.join(broken)}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
