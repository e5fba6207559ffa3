"""The documentation keeps up with the code: every command and option of the CLI is in the
README, and every configuration key is in config.example.yaml and the README's reference
(in the spirit of sqlite-utils' tests/test_docs.py)."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml
from conftest import REPO

from gateway.cli import _parser
from gateway.config import _FIELDS, NOT_SUPPORTED_YET

README = (REPO / "README.md").read_text(encoding="utf-8")
EXAMPLE = yaml.safe_load((REPO / "config.example.yaml").read_text(encoding="utf-8"))

# The top level of SPEC 3's YAML block.
SPEC_TOP_LEVEL_KEYS = ("api", "database", "http", "webhook", "poll", "log", "notify", "retention",
                       "defaults", "outboxes")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options() -> list[tuple[str, str]]:
    found = []
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            long = [o for o in action.option_strings if o.startswith("--")]
            if long:
                found.append((name, long[0]))
    return found


def test_the_parser_has_subcommands():
    assert {"run", "check-config", "jobs", "show", "simulator"} <= set(_subcommands())


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_is_in_the_readme(command):
    assert f"fax-gateway {command}" in README, f"README.md does not document `fax-gateway {command}`"


@pytest.mark.parametrize(("command", "option"), _options())
def test_every_option_is_in_the_readme(command, option):
    usage = [line for line in README.splitlines() if f"fax-gateway {command}" in line]
    assert any(option in line for line in usage) or option in ("--config",), (
        f"README.md does not show {option} of `fax-gateway {command}`")


def test_every_top_level_key_of_spec_3_is_in_the_example():
    assert list(EXAMPLE) == list(SPEC_TOP_LEVEL_KEYS)


def _leaf_keys() -> list[str]:
    """Every key of the configuration, dotted: 'api.timeout', 'defaults.resend.max',
    'outboxes.name' (the keys set on an outbox item)."""
    return sorted(_FIELDS)


def _example_has(key: str) -> bool:
    node = EXAMPLE
    parts = key.split(".")
    if parts[0] == "outboxes":
        node, parts = EXAMPLE["outboxes"][0], parts[1:]
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("key", _leaf_keys())
def test_every_key_is_in_the_example(key):
    assert _example_has(key), f"config.example.yaml does not set {key}"


def _readme_name(key: str) -> str:
    return key.replace("outboxes.", "outboxes[].", 1)


@pytest.mark.parametrize("key", _leaf_keys())
def test_every_key_is_in_the_readme_reference(key):
    assert f"`{_readme_name(key)}`" in README, f"README.md's configuration table lacks {key}"


def test_keys_not_supported_yet_say_so():
    """Every key the running version refuses is marked so in the README (none, today)."""
    for key in sorted(NOT_SUPPORTED_YET):
        rows = [line for line in README.splitlines() if line.startswith(f"| `{_readme_name(key)}`")]
        assert rows, f"README.md has no row for {key}"
        assert re.search(r"not supported yet|only `?\w+`? is supported yet", rows[0]), (
            f"README.md does not say that {key} is not supported yet")


# -- and the other way round: everything the README names exists ---------------------------

def test_every_command_the_readme_names_exists():
    named = set(re.findall(r"`fax-gateway ([a-z][a-z-]+)", README))
    named |= set(re.findall(r"^(?:\.venv/bin/)?fax-gateway ([a-z][a-z-]+)", README, re.M))
    unknown = sorted(named - set(_subcommands()))
    assert named and not unknown, f"README.md names commands that do not exist: {unknown}"


def test_every_configuration_key_in_the_readme_table_exists():
    rows = re.findall(r"^\| `([a-z_]+(?:\[\])?(?:\.[a-z_]+)+|database)` \|", README, re.M)
    assert len(rows) > 20
    keys = {_readme_name(k) for k in _leaf_keys()}
    unknown = sorted(set(rows) - keys)
    assert not unknown, f"README.md's configuration table names keys that do not exist: {unknown}"


def test_every_metric_the_readme_names_exists():
    from gateway.metrics import Metrics
    from gateway.store import STAGES
    m = Metrics(["main"])
    m.watch_store(lambda: {"queued": 0}, lambda: None, lambda: {("main", s): 0 for s in STAGES})
    exported = {f.name for f in m.registry.collect()}
    exported |= {s.name for f in m.registry.collect() for s in f.samples}
    exported |= {f.name + "_total" for f in m.registry.collect() if f.type == "counter"}

    def exists(name: str) -> bool:
        return any(e == name or e.startswith(name + "_") for e in exported)

    named = set(re.findall(r"\bfax_gateway_[a-z_]+[a-z]", README))
    named |= {"fax_gateway" + n for n in re.findall(r"`(_[a-z_]+[a-z])(?:\{|`)", README)}
    unknown = sorted(n for n in named if not exists(n))
    assert not unknown, f"README.md names metrics that do not exist: {unknown}"
