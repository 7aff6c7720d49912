"""No password on a command line: `ps` on the broker host never shows one during a converge.

Any local user sees every process's arguments (`ps`, /proc/*/cmdline), so a password passed to
rabbitmqctl as an argument is readable by all while the command runs. The test converges the
broker again (playbooks/rabbitmq.yml, as the scenario's converge runs it) while a loop samples
the process table of the host, through every path of roles/rabbitmq's users: an existing user
whose password is unchanged (the app's and the workers', as their broker URLs hold them), one
whose password changed and one that is new (two probe users, deleted afterwards).

Sorted before the shared suites (Molecule sorts the paths): the host is left as converged, which
the check-mode test that follows confirms.
"""

from __future__ import annotations

import json
import re
import secrets
from urllib.parse import unquote

from e2e_helpers import (
    converge_arguments,
    lines_showing,
    process_table_sampled,
    run_playbook,
    stdin_exec,
)

PROBE_CHANGED = "ps-probe-changed"
PROBE_NEW = "ps-probe-new"


def broker_credentials(host) -> dict[str, str]:
    """Each RabbitMQ user and password of the deployed clients (the amqp:// URLs of their env files)."""
    content = host.check_output("cat /etc/edupulse/*.env")
    found = {unquote(user): unquote(password)
             for user, password in re.findall(r"amqp://([^:@/\s\"]+):([^@\s\"]+)@", content)}
    assert found, "no amqp:// URL in /etc/edupulse/*.env"
    return found


def authenticates(host, user: str, password: str) -> bool:
    return stdin_exec(host, ["rabbitmqctl", "--silent", "authenticate_user", user], password).returncode == 0


def test_no_password_on_a_command_line_while_the_broker_converges(host, tmp_path):
    clients = broker_credentials(host)
    old, new, created = (secrets.token_hex(16) for _ in range(3))
    added = stdin_exec(host, ["rabbitmqctl", "--silent", "add_user", PROBE_CHANGED], old)
    assert added.returncode == 0, added.stderr
    try:
        users = [{"name": name, "password": password} for name, password in clients.items()]
        users += [{"name": PROBE_CHANGED, "password": new}, {"name": PROBE_NEW, "password": created}]
        # In a root-only file on the controller: the test puts no password on a command line either.
        extra_vars = tmp_path / "rabbitmq_users.json"
        extra_vars.touch(mode=0o600)
        extra_vars.write_text(json.dumps({"rabbitmq_users": users}))
        _, scenario_args = converge_arguments()
        with process_table_sampled(host) as seen:
            result = run_playbook("playbooks/rabbitmq.yml", *scenario_args, f"--extra-vars=@{extra_vars}")
        assert result.returncode == 0, result.stdout[-4000:]

        # The sampler saw the user commands run (a test that saw nothing would prove nothing).
        ctl = [line for line in seen if re.search(r"\b(add_user|change_password|authenticate_user)\b", line)]
        assert any("add_user" in line for line in ctl) and any("change_password" in line for line in ctl), (
            f"{len(seen)} distinct command lines sampled, none adding or changing a user")
        passwords = {**{f"password of {name}": password for name, password in clients.items()},
                     f"old password of {PROBE_CHANGED}": old, f"new password of {PROBE_CHANGED}": new,
                     f"password of {PROBE_NEW}": created}
        leaked = lines_showing(seen, passwords)
        assert not leaked, "\n".join(f"{name} in: {lines}" for name, lines in leaked.items())

        # Each password is the one asked for: the new user's, the changed one, the clients' kept.
        assert authenticates(host, PROBE_CHANGED, new) and authenticates(host, PROBE_NEW, created)
        assert all(authenticates(host, name, password) for name, password in clients.items())
    finally:
        for probe in (PROBE_CHANGED, PROBE_NEW):
            host.run(f"rabbitmqctl --silent delete_user {probe}")
