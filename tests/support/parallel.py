"""How pytest-xdist splits the test run over processes (pyproject's addopts: -n auto --dist loadgroup).

Every process (worker) starts its own session fixtures: PostgreSQL, Redis, the ClickHouse HTTP test
server, the embedded stores, and where tests need them the Kubernetes control plane and the Docker
engine. Tests that must share one process are put in a group (tests/conftest.py says which): a group
runs whole, in its order, on one worker; the other tests go one by one to whichever worker is free.

pytest-xdist's own loadgroup tells the controller a test's group by appending "@group" to its node id,
which pytest 9.2's structured node ids no longer take (pytest-xdist issue 1386): the groups are lost
without a word and the tests spread over the workers. So each worker writes the groups it collected
to a folder the controller gave it, and the controller's scheduler reads them there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

FOLDER_KEY = "oa_xdist_groups"  # in the workers' workerinput: where they write their groups
_folder = pytest.StashKey[Path]()


def group_of(item: pytest.Item) -> str | None:
    """The item's group: its xdist_group marks' names, as pytest-xdist joins them; None for none."""
    names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
             for mark in item.iter_markers("xdist_group")}
    return "_".join(sorted(names)) or None


def scheduler(config: pytest.Config, log):
    """LoadScopeScheduling with a work unit per group (its tests in collection order) and per other
    test; the largest groups are handed out first."""
    from xdist.scheduler import LoadScopeScheduling

    folder = config.stash[_folder]

    class GroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first asked once every worker has collected (and written)
                self.groups = {}
                for path in sorted(folder.glob("*.json")):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


# Hooks, imported into tests/conftest.py -------------------------------------------------------

@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Controller: the folder every worker writes its groups to."""
    stash = node.config.stash
    if _folder not in stash:
        stash[_folder] = Path(tempfile.mkdtemp(prefix="oa-xdist-groups-"))
    node.workerinput[FOLDER_KEY] = str(stash[_folder])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") == "loadgroup" and _folder in config.stash:
        return scheduler(config, log)
    return None  # pytest-xdist's own


@pytest.hookimpl(tryfirst=True)  # before the worker sends its collection to the controller
def pytest_collection_finish(session: pytest.Session) -> None:
    """Worker: the groups of the tests collected, by node id as sent to the controller."""
    workerinput = getattr(session.config, "workerinput", None)
    if not workerinput or FOLDER_KEY not in workerinput:
        return
    groups = {item.nodeid: group for item in session.items if (group := group_of(item))}
    folder = Path(workerinput[FOLDER_KEY])
    partial = folder / f"{workerinput['workerid']}.{os.getpid()}.partial"
    partial.write_text(json.dumps(groups))
    partial.rename(folder / f"{workerinput['workerid']}.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _folder in config.stash:
        shutil.rmtree(config.stash[_folder], ignore_errors=True)
