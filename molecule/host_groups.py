"""pytest plugin of the testinfra suites: with pytest-xdist, each host's tests on one worker.

A scenario with two platforms (Debian 12 and 13) spends most of its verify step waiting on one
host at a time: SMTP outages, claim timeouts, playbook runs. The two hosts share nothing, so
their tests can run side by side (`-n 2` in the scenario's molecule.yml), but the tests of one
host cannot be spread: they run in file order against one server (a campaign, then the worker
killed in the middle of the next one, ...). So the work unit xdist hands a worker is a host:
all of its tests, in collection order.

xdist's own `loadgroup` would do this with markers, but it renames the test ids to carry the
group, which pytest 9 no longer lets a plugin do; the scheduler below reads the host from the
test id instead. Loaded by molecule/pytest.ini (`-p host_groups`); without `-n` it does nothing.
"""

from __future__ import annotations

import pytest
import testinfra
from xdist.scheduler import LoadScopeScheduling


def host_names(config: pytest.Config) -> list[str]:
    """The names of the hosts testinfra parametrizes the tests with, found the way its plugin
    finds them (--hosts, else every host of the Ansible inventory): `rq-debian12` of the test id
    `ansible://rq-debian12`. The name, since a module may reach the same host another way
    (`testinfra_hosts = ["docker://rq-debian12"]`)."""
    option = config.option
    hosts = option.hosts.split(",") if option.hosts else [None]
    found = testinfra.get_hosts(
        hosts,
        connection=option.connection,
        ssh_config=option.ssh_config,
        ssh_identity_file=option.ssh_identity_file,
        sudo=option.sudo,
        sudo_user=option.sudo_user,
        ansible_inventory=option.ansible_inventory,
        force_ansible=option.force_ansible,
    )
    return [host.backend.get_pytest_id().partition("://")[2] for host in found]


class HostScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with one scope per host: a worker gets a whole host."""

    def __init__(self, config: pytest.Config, log, hosts: list[str]) -> None:
        super().__init__(config, log)
        # Longest first, so that a host whose name extends another's is not taken for it.
        self.hosts = sorted(hosts, key=len, reverse=True)

    def _split_scope(self, nodeid: str) -> str:
        params = nodeid.rpartition("[")[2] if nodeid.endswith("]") else ""
        for host in self.hosts:
            if host in params:
                return host
        # Not a testinfra test: a unit of its own.
        return nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> LoadScopeScheduling:
    return HostScheduling(config, log, host_names(config))
