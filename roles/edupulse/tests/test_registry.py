"""The queue modes' registry (defaults/main.yml, edupulse_queue_modes) is the one list of modes:
the argument specs that validate a mode name or a mode's monitoring page list exactly its entries
(literal lists, for validation), and each mode's worker role exists with the entry points the
playbooks include (validate.yml in preflight, remove.yml in a switch)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROLES = Path(__file__).resolve().parents[2]
REGISTRY = yaml.safe_load((ROLES / "edupulse/defaults/main.yml").read_text())["edupulse_queue_modes"]
# Options that take a queue mode's name, in any role and entry point.
MODE_OPTION = re.compile(r"(_queue_mode|_switch_to|_switch_from)$")


def options():
    for spec_file in sorted(ROLES.glob("*/meta/argument_specs.yml")):
        specs = yaml.safe_load(spec_file.read_text())["argument_specs"]
        for entry, spec in specs.items():
            for name, option in (spec.get("options") or {}).items():
                yield f"{spec_file.parent.parent.name}:{entry}:{name}", name, option


def test_every_mode_choice_list_is_the_registrys():
    found = {key: option["choices"] for key, name, option in options() if MODE_OPTION.search(name) and "choices" in option}
    assert found, "no option takes a queue mode"
    wrong = {key: choices for key, choices in found.items() if sorted(choices) != sorted(REGISTRY)}
    assert not wrong, f"choices differ from edupulse_queue_modes ({sorted(REGISTRY)}): {wrong}"


def test_nginx_serves_exactly_the_registrys_monitoring_pages():
    spec = yaml.safe_load((ROLES / "nginx/meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert sorted(spec["nginx_monitoring"]["choices"]) == sorted({mode["monitoring"] for mode in REGISTRY.values()})


def test_each_modes_worker_role_has_what_the_playbooks_include():
    for mode, entry in REGISTRY.items():
        tasks = ROLES / entry["worker_role"] / "tasks"
        assert (tasks / "main.yml").exists() and (tasks / "validate.yml").exists() and (tasks / "remove.yml").exists(), mode
