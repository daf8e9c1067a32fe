"""Schemathesis against the live app, from its own /openapi.json, with a valid key.

Every check runs except `positive_data_acceptance`: some rules cannot be written in a
schema (dates relative to today and to the project's retention, `from` <= `to`), so a
schema-valid request may rightly get a documented 400. The failed-authentication lockout
is raised for this run only (it is tested in test_ratelimits.py): schemathesis sends many
requests without a key on purpose.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.test_processes import ROOT, clean_env, cli, free_port, start, stop, wait_ready

SCOPES = ["projects:read", "stats:read", "events:write", "keys:manage", "goals:manage", "privacy:export",
          "privacy:delete"]


# About 40 s of CPU, half schemathesis and half the server: several times that on a busy machine (the
# tests run in parallel processes), which the suite's 120 s default would cut short.
@pytest.mark.timeout(600)
def test_schemathesis_finds_no_server_errors_and_no_spec_violations(tmp_path):
    env = clean_env(OA_DATA_DIR=str(tmp_path / "data"), OA_AUTH_FAILURES_PER_MINUTE="100000000")
    project = cli(env, "projects", "create", "--name", "Fuzz", "--plan", "enterprise",
                  "--limit", "api_requests_per_minute=100000000")
    key = cli(env, "keys", "create", "--project", project["id"], *[a for s in SCOPES for a in ("--scope", s)])
    # Every generated DELETE aims at this key, so the run never revokes its own.
    target = cli(env, "keys", "create", "--project", project["id"], "--name", "to-revoke")
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\nproject_id = "{project["id"]}"\nkey_id = "{target["id"]}"\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "standalone.log"
    proc = start(env, "standalone", "--port", str(port), log=log)
    try:
        wait_ready(base, proc, log)
        run = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
             f"{base}/openapi.json", "-H", f"Authorization: Bearer {key['secret']}",
             "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--max-examples", "60", "--seed", "20261126", "--no-color",
             "--report", "junit", "--report-dir", str(tmp_path / "report")],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-6000:]
        assert "No issues found" in output and "Authentication failed" not in output, output[-3000:]
        still = httpx.get(f"{base}/v1/projects", headers={"Authorization": f"Bearer {key['secret']}"})
        assert still.status_code == 200, "the run must have been authenticated throughout"
    finally:
        assert stop(proc) == 0
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
