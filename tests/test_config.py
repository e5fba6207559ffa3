"""SPEC 3: the configuration file, from YAML on disk to the resolved Config."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from gateway import config as config_module
from gateway.config import (
    Config,
    ResendPolicy,
    Secret,
    default_config_path,
    dump_redacted,
    load_config,
    parse_duration,
    parse_size,
    read_api_key,
)
from gateway.errors import ConfigError

# The set as shipped, captured before the fixture below empties it for each test.
SHIPPED_NOT_SUPPORTED_YET = set(config_module.NOT_SUPPORTED_YET)

MINIMAL = """\
outboxes:
  - name: main
    path: outbox
    sent: sent
    failed: failed
"""

KEY = "sekrit-KEY-4711"
WEBHOOK_SECRET = "hook-SECRET-0815"


@pytest.fixture(autouse=True)
def everything_supported(monkeypatch):
    """Tests of a key's behaviour must not break when the key leaves NOT_SUPPORTED_YET.

    Tests of the mechanism itself put the keys they need back in.
    """
    monkeypatch.setattr(config_module, "NOT_SUPPORTED_YET", set())


def write(tmp_path: Path, text: str, *, name: str = "config.yaml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def load(tmp_path: Path, text: str, *, environ: dict[str, str] | None = None,
         mode: int = 0o600) -> Config:
    return load_config(write(tmp_path, text, mode=mode), environ={} if environ is None else environ)


def load_error(tmp_path: Path, text: str, *, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ=environ)
    return info.value


# --- durations and sizes -------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [
    (0.5, 0.5), (3, 3.0), (0, 0.0), ("2", 2.0), ("0.5", 0.5),
    ("500ms", 0.5), ("0.5s", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h", 3600.0), ("7d", 604800.0),
    (" 90 s ", 90.0),
])
def test_duration_accepts_seconds_and_units(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["-1s", -1, -0.5, "5x", "", "s", "1:30", "5 minutes", True, None,
                                   [1], float("inf"), float("nan")])
def test_duration_refuses_anything_else(value):
    with pytest.raises(ConfigError):
        parse_duration(value)


def test_duration_error_names_file_key_and_line():
    with pytest.raises(ConfigError) as info:
        parse_duration("soon", key="poll.interval", file="c.yaml", line=7)
    assert (info.value.file, info.value.key, info.value.line) == ("c.yaml", "poll.interval", 7)
    assert str(info.value).startswith("c.yaml, line 7: poll.interval: 'soon' is not a duration")


def test_negative_duration_says_so():
    with pytest.raises(ConfigError, match="negative"):
        parse_duration("-2s")


@pytest.mark.parametrize(("value", "size"), [
    (123, 123), ("123", 123), ("10B", 10),
    ("20MB", 20 * 10**6), ("20MiB", 20 * 2**20),
    ("1kB", 1000), ("1KB", 1000), ("1KiB", 1024),
    ("2GB", 2 * 10**9), ("1GiB", 2**30), ("1.5MB", 1_500_000), ("20 MB", 20 * 10**6),
])
def test_size_accepts_bytes_and_units(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["-1MB", -5, "20XB", "MB", "", "0.5B", True, 1.5, None])
def test_size_refuses_anything_else(value):
    with pytest.raises(ConfigError):
        parse_size(value)


# --- where the file comes from -------------------------------------------------------------

def test_default_config_path_is_etc_unless_the_environment_names_one(tmp_path):
    assert default_config_path({}) == Path("/etc/fax-gateway/config.yaml")
    assert default_config_path({"FAX_GATEWAY_CONFIG": str(tmp_path / "x.yaml")}) == tmp_path / "x.yaml"


def test_load_without_path_uses_fax_gateway_config(tmp_path):
    path = write(tmp_path, MINIMAL)
    config = load_config(None, environ={"FAX_GATEWAY_CONFIG": str(path)})
    assert config.path == path


def test_missing_file_is_named_with_what_to_do(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    assert info.value.file == str(missing)
    assert "does not exist" in str(info.value) and "-c" in str(info.value)


def test_directory_instead_of_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path, environ={})


# --- defaults ------------------------------------------------------------------------------

def test_minimal_config_gets_every_default_of_spec_3(tmp_path):
    config = load(tmp_path, MINIMAL)
    assert config.path == tmp_path / "config.yaml"
    assert config.api.base_url == "https://api.ifaxapp.com/v1"
    assert config.api.key is None and config.api.key_file is None
    assert (config.api.timeout, config.api.max_in_flight, config.api.requests_per_minute) == (30.0, 4, 120)
    assert config.database == Path("/var/lib/fax-gateway/jobs.db")
    assert (config.http.listen, config.http.host, config.http.port) == ("127.0.0.1:9468", "127.0.0.1", 9468)
    assert (config.webhook.enabled, config.webhook.secret) == (False, None)
    assert (config.poll.interval, config.poll.give_up_after) == (30.0, 6 * 3600.0)
    assert (config.log.level, config.log.format, config.log.file_names) == ("info", "text", True)
    assert config.notify.command is None
    assert (config.retention.sent, config.retention.failed, config.retention.jobs) == (None, None, None)
    assert config.warnings == ()
    [outbox] = config.outboxes
    assert outbox.name == "main"
    assert (outbox.number, outbox.polling) == (None, False)
    assert (outbox.country, outbox.caller_id, outbox.quality) == ("US", None, "Standard")
    assert (outbox.settle, outbox.rescan, outbox.sidecar_wait) == (2.0, 60.0, 30.0)
    assert (outbox.max_file_size, outbox.max_pages, outbox.max_faxes_per_hour) == (20 * 10**6, 100, None)
    assert (outbox.allow, outbox.deny) == ((), ())
    assert outbox.resend == ResendPolicy(max=2, delay=300.0)
    assert (outbox.on_uncertain, outbox.delete_after_delivery) == ("fail", False)


def test_every_key_can_be_set(tmp_path):
    (tmp_path / "key").write_text("k\n")
    config = load(tmp_path, f"""\
        api:
          base_url: http://127.0.0.1:8080/v1/
          key_file: key
          timeout: 5s
          max_in_flight: 1
          requests_per_minute: 10
        database: jobs.db
        http:
          listen: 0.0.0.0:0
        webhook:
          enabled: true
          secret: {WEBHOOK_SECRET}
        poll:
          interval: 500ms
          give_up_after: 1h
        log:
          level: DEBUG
          format: json
          file_names: false
        notify:
          command: /usr/local/bin/fax-failed
        retention:
          sent: 90d
          failed: 30d
          jobs: 365d
        defaults:
          country: de
          caller_id: "+4930123"
          quality: hd
          settle: 1s
          rescan: 10s
          sidecar_wait: 5s
          max_file_size: 1MiB
          max_pages: 3
          max_faxes_per_hour: 50
          allow: [+49, +1]
          deny: [+1900]
          resend: {{max: 0, delay: 1m}}
          on_uncertain: resend
          delete_after_delivery: true
        outboxes:
          - name: Front_desk-2
            path: outbox
            sent: sent
            failed: failed
            number: "+4930555"
            polling: true
        """)
    assert config.api.base_url == "http://127.0.0.1:8080/v1"  # the client adds "/fax-send"
    assert config.api.key is None and read_api_key(config) == Secret("k")
    assert (config.api.timeout, config.api.max_in_flight, config.api.requests_per_minute) == (5.0, 1, 10)
    assert config.database == tmp_path / "jobs.db"
    assert (config.http.host, config.http.port) == ("0.0.0.0", 0)
    assert config.webhook.enabled and config.webhook.secret == Secret(WEBHOOK_SECRET)
    assert (config.poll.interval, config.poll.give_up_after) == (0.5, 3600.0)
    assert (config.log.level, config.log.format, config.log.file_names) == ("debug", "json", False)
    assert config.notify.command == "/usr/local/bin/fax-failed"
    assert (config.retention.sent, config.retention.failed, config.retention.jobs) == (
        90 * 86400.0, 30 * 86400.0, 365 * 86400.0)
    [outbox] = config.outboxes
    assert (outbox.name, outbox.number, outbox.polling) == ("Front_desk-2", "+4930555", True)
    assert (outbox.country, outbox.caller_id, outbox.quality) == ("DE", "+4930123", "HD")
    assert (outbox.settle, outbox.rescan, outbox.sidecar_wait) == (1.0, 10.0, 5.0)
    assert (outbox.max_file_size, outbox.max_pages, outbox.max_faxes_per_hour) == (2**20, 3, 50)
    assert (outbox.allow, outbox.deny) == (("+49", "+1"), ("+1900",))
    assert outbox.resend == ResendPolicy(max=0, delay=60.0)
    assert (outbox.on_uncertain, outbox.delete_after_delivery) == ("resend", True)


def test_empty_sections_mean_defaults(tmp_path):
    config = load(tmp_path, "api:\nlog:\ndefaults:\n  resend:\n" + MINIMAL)
    assert config.api.timeout == 30.0
    assert config.outboxes[0].resend == ResendPolicy(max=2, delay=300.0)


def test_ipv6_listen_address(tmp_path):
    config = load(tmp_path, "http:\n  listen: '[::1]:9468'\n" + MINIMAL)
    assert (config.http.host, config.http.port) == ("::1", 9468)


def test_status_page_is_off_unless_status_listen_is_set(tmp_path):
    config = load(tmp_path, MINIMAL)
    assert (config.http.status_listen, config.http.status_host, config.http.status_port) == (None, None, None)
    config = load(tmp_path, "http:\n  status_listen: '[::1]:9469'\n" + MINIMAL)
    assert (config.http.status_listen, config.http.status_host, config.http.status_port) == (
        "[::1]:9469", "::1", 9469)
    assert yaml.safe_load(dump_redacted(config))["http"] == {"listen": "127.0.0.1:9468",
                                                             "status_listen": "[::1]:9469"}


@pytest.mark.parametrize("text", [
    "http:\n  status_listen: 127.0.0.1:9468\n",                       # the default http.listen
    "http:\n  listen: 127.0.0.1:9000\n  status_listen: 127.0.0.1:9000\n",
    "http:\n  listen: 0.0.0.0:9000\n  status_listen: 127.0.0.1:9000\n",  # the wildcard holds it
    "http:\n  listen: 127.0.0.1:9000\n  status_listen: '[::]:9000'\n",
])
def test_status_listen_must_differ_from_listen(tmp_path, text):
    err = load_error(tmp_path, text + MINIMAL)
    assert err.key == "http.status_listen" and err.line == text.count("\n")
    assert "must differ from http.listen" in str(err)


def test_status_listen_on_another_address_with_the_same_port_is_fine(tmp_path):
    config = load(tmp_path, "http:\n  listen: 127.0.0.1:9000\n  status_listen: 10.1.2.3:9000\n" + MINIMAL)
    assert (config.http.status_host, config.http.status_port) == ("10.1.2.3", 9000)


# --- defaults and outboxes -----------------------------------------------------------------

def test_outbox_overrides_defaults_and_resend_merges_key_by_key(tmp_path):
    config = load(tmp_path, """\
        defaults:
          quality: HD
          settle: 5s
          deny: [+1900]
          resend:
            max: 1
            delay: 10m
        outboxes:
          - name: a
            path: a/out
            sent: a/sent
            failed: a/failed
            quality: Low
            resend:
              max: 4
          - name: b
            path: b/out
            sent: b/sent
            failed: b/failed
            deny: []
        """)
    a, b = config.outboxes
    assert (a.quality, a.settle, a.deny) == ("Low", 5.0, ("+1900",))
    assert a.resend == ResendPolicy(max=4, delay=600.0)  # delay still from defaults
    assert (b.quality, b.settle, b.deny) == ("HD", 5.0, ())  # an empty list overrides too
    assert b.resend == ResendPolicy(max=1, delay=600.0)


def test_outbox_resend_falls_back_to_builtin_defaults(tmp_path):
    config = load(tmp_path, MINIMAL + "    resend: {delay: 30s}\n")
    assert config.outboxes[0].resend == ResendPolicy(max=2, delay=30.0)


@pytest.mark.parametrize("key", ["number", "polling", "name"])
def test_outbox_only_keys_are_refused_in_defaults(tmp_path, key):
    err = load_error(tmp_path, f"defaults:\n  {key}: x\n" + MINIMAL)
    assert err.key == f"defaults.{key}" and err.line == 2
    assert "only be set on an outbox" in str(err)


# --- paths ---------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_config_files_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    etc = tmp_path / "etc"
    (etc / "secrets").mkdir(parents=True)
    (etc / "secrets" / "key").write_text(KEY)
    write(etc, """\
        api:
          key_file: secrets/key
        database: ../var/jobs.db
        outboxes:
          - name: main
            path: spool/outbox
            sent: /srv/fax/sent
            failed: ./spool/failed
        """)
    config = load_config(Path("../etc/config.yaml"), environ={})
    assert config.path == etc / "config.yaml"
    assert config.api.key_file == etc / "secrets" / "key"
    assert config.database == tmp_path / "var" / "jobs.db"
    outbox = config.outboxes[0]
    assert outbox.path == etc / "spool" / "outbox"
    assert outbox.sent == Path("/srv/fax/sent")
    assert outbox.failed == etc / "spool" / "failed"


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load(tmp_path, "database: ~/jobs.db\n" + MINIMAL)
    assert config.database == tmp_path / "home" / "jobs.db"


# --- errors name file, key and line --------------------------------------------------------

def test_unknown_key_suggests_the_closest_and_gives_its_line(tmp_path):
    err = load_error(tmp_path, MINIMAL + "    setle: 2s\n")
    assert (err.key, err.line, err.file) == ("outboxes[0].setle", 6, str(tmp_path / "config.yaml"))
    assert "unknown key 'setle' (did you mean 'settle'?)" in str(err)
    assert str(err).startswith(f"{tmp_path / 'config.yaml'}, line 6: ")


@pytest.mark.parametrize(("text", "key", "line", "hint"), [
    ("api:\n  timout: 3s\n", "api.timout", 2, "'timeout'"),
    ("apii: {}\n", "apii", 1, "'api'"),
    ("defaults:\n  resend:\n    maxx: 3\n", "defaults.resend.maxx", 3, "'max'"),
    ("settle: 2s\n", "settle", 1, "under 'defaults'"),
])
def test_unknown_keys_are_errors_at_every_level(tmp_path, text, key, line, hint):
    err = load_error(tmp_path, text + MINIMAL)
    assert (err.key, err.line) == (key, line)
    assert hint in str(err)


def test_key_set_twice_is_an_error(tmp_path):
    err = load_error(tmp_path, "log:\n  level: info\n  level: debug\n" + MINIMAL)
    assert (err.key, err.line) == ("log.level", 3)
    assert "first on line 2" in str(err)


def test_yaml_merge_keys_are_refused_with_a_pointer_to_defaults(tmp_path):
    err = load_error(tmp_path, "x: &x {settle: 2s}\n" + MINIMAL + "    <<: *x\n")
    # the unknown top-level "x" comes first
    assert err.key == "x"
    err = load_error(tmp_path, MINIMAL.replace("  - name: main", "  - <<: {settle: 2s}\n    name: main"))
    assert err.key == "outboxes[0].<<" and "defaults" in str(err)


@pytest.mark.parametrize(("text", "line"), [
    ("api:\n  timeout: 30s\n base_url: x\n", 3),
    ("api:\n  base_url: [1, 2\nlog: {}\n", 3),
    ("log:\n\t- level\n", 2),
])
def test_yaml_syntax_error_gives_its_line(tmp_path, text, line):
    err = load_error(tmp_path, text + MINIMAL)
    assert err.line == line
    assert "invalid YAML" in str(err) and str(err).startswith(f"{tmp_path / 'config.yaml'}, line {line}")


def test_file_that_is_not_utf8_is_an_error_with_its_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(MINIMAL.encode() + b"    number: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.line == 6 and "UTF-8" in str(info.value)


@pytest.mark.parametrize(("extra", "key", "fragment"), [
    ("    polling: 'yes'\n", "outboxes[0].polling", "true or false"),
    ("    polling: 1\n", "outboxes[0].polling", "true or false"),
    ("    delete_after_delivery: null\n", "outboxes[0].delete_after_delivery", "true or false"),
    ("    max_pages: 0\n", "outboxes[0].max_pages", "at least 1"),
    ("    max_pages: ten\n", "outboxes[0].max_pages", "whole number"),
    ("    max_pages: 1.5\n", "outboxes[0].max_pages", "whole number"),
    ("    max_faxes_per_hour: 0\n", "outboxes[0].max_faxes_per_hour", "at least 1"),
    ("    resend: {max: -1}\n", "outboxes[0].resend.max", "at least 0"),
    ("    resend: 3\n", "outboxes[0].resend", "mapping"),
    ("    settle: -2s\n", "outboxes[0].settle", "negative"),
    ("    settle: soon\n", "outboxes[0].settle", "not a duration"),
    ("    settle: true\n", "outboxes[0].settle", "duration"),
    ("    rescan: 0\n", "outboxes[0].rescan", "longer than 0"),
    ("    max_file_size: 20 parsecs\n", "outboxes[0].max_file_size", "not a size"),
    ("    max_file_size: 0\n", "outboxes[0].max_file_size", "at least 1 byte"),
    ("    quality: Ultra\n", "outboxes[0].quality", "Low | Standard | HD"),
    ("    on_uncertain: retry\n", "outboxes[0].on_uncertain", "fail | resend"),
    ("    country: XX\n", "outboxes[0].country", "region code"),
    ("    country: USA\n", "outboxes[0].country", "region code"),
    ("    deny: +1900\n", "outboxes[0].deny", "list"),
    ("    deny: ['1900']\n", "outboxes[0].deny[0]", "E.164 prefix"),
    ("    allow: [+1 900]\n", "outboxes[0].allow[0]", "E.164 prefix"),
    ("    name: front desk\n", "outboxes[0].name", "letters, digits"),
    ("    number: [1, 2]\n", "outboxes[0].number", "single value"),
    ("    path: null\n", "outboxes[0].path", "must be set"),
    ("    path: ''\n", "outboxes[0].path", "empty"),
])
def test_outbox_type_errors_name_key_and_line(tmp_path, extra, key, fragment):
    text, line = with_outbox_line(extra)
    err = load_error(tmp_path, text)
    assert (err.key, err.line) == (key, line)
    assert fragment in str(err)


def with_outbox_line(extra: str) -> tuple[str, int]:
    """MINIMAL with one outbox key replaced or added, and the line it is on."""
    name = extra.split(":")[0].strip()
    lines = MINIMAL.splitlines()
    for index, line in enumerate(lines):
        body = line.lstrip(" -")
        if body.startswith(name + ":"):
            lines[index] = line[:len(line) - len(body)] + extra.strip()
            return "\n".join(lines) + "\n", index + 1
    return MINIMAL + extra, len(lines) + 1


@pytest.mark.parametrize(("text", "key", "line", "fragment"), [
    ("api:\n  max_in_flight: 0\n", "api.max_in_flight", 2, "at least 1"),
    ("api:\n  requests_per_minute: 0\n", "api.requests_per_minute", 2, "at least 1"),
    ("api:\n  timeout: -1\n", "api.timeout", 2, "negative"),
    ("api:\n  base_url: ftp://x\n", "api.base_url", 2, "URL"),
    ("api: []\n", "api", 1, "mapping"),
    ("log:\n  level: verbose\n", "log.level", 2, "debug | info | warning | error"),
    ("log:\n  format: xml\n", "log.format", 2, "text | json"),
    ("log:\n  file_names: 'no'\n", "log.file_names", 2, "true or false"),
    ("http:\n  listen: localhost\n", "http.listen", 2, "host:port"),
    ("http:\n  listen: 127.0.0.1:70000\n", "http.listen", 2, "host:port"),
    ("http:\n  listen: ::1:9468\n", "http.listen", 2, "[::1]:9468"),
    ("http:\n  status_listen: 9469\n", "http.status_listen", 2, "host:port"),
    ("http:\n  status_listen: ''\n", "http.status_listen", 2, "write null"),
    ("poll:\n  interval: 0s\n", "poll.interval", 2, "longer than 0"),
    ("retention:\n  sent: forever\n", "retention.sent", 2, "not a duration"),
    ("database: [a]\n", "database", 1, "single value"),
    ("webhook:\n  secret: a/b\n", "webhook.secret", 2, "URL"),
    ("- a\n- b\n", "(top level)", 1, "mapping"),
])
def test_top_level_type_errors_name_key_and_line(tmp_path, text, key, line, fragment):
    err = load_error(tmp_path, text + ("" if text.startswith("-") else MINIMAL))
    assert (err.key, err.line) == (key, line)
    assert fragment in str(err)


def test_outbox_requires_name_path_sent_and_failed(tmp_path):
    err = load_error(tmp_path, "outboxes:\n  - name: main\n    path: out\n    sent: s\n")
    assert (err.key, err.line) == ("outboxes[0].failed", 2)
    assert "required" in str(err)


@pytest.mark.parametrize("text", ["", "log: {}\n", "outboxes: []\n", "outboxes:\n"])
def test_at_least_one_outbox_is_required(tmp_path, text):
    err = load_error(tmp_path, text)
    assert err.key == "outboxes" and "at least one outbox" in str(err)


def test_outbox_names_are_unique(tmp_path):
    err = load_error(tmp_path, MINIMAL + "  - name: main\n    path: o2\n    sent: s2\n    failed: f2\n")
    assert (err.key, err.line) == ("outboxes[1].name", 6)
    assert "outboxes[0]" in str(err)


def test_webhook_enabled_requires_a_secret(tmp_path):
    err = load_error(tmp_path, "webhook:\n  enabled: true\n" + MINIMAL)
    assert (err.key, err.line) == ("webhook.enabled", 2)
    assert "webhook.secret" in str(err)


# --- folders -------------------------------------------------------------------------------

def outbox(name: str, path: str, sent: str, failed: str) -> str:
    return f"  - name: {name}\n    path: {path}\n    sent: {sent}\n    failed: {failed}\n"


@pytest.mark.parametrize(("outboxes", "key", "fragment"), [
    (outbox("a", "out", "out/sent", "failed"), "outboxes[0].sent", "lies inside outboxes[0].path"),
    (outbox("a", "out/in", "out", "failed"), "outboxes[0].sent", "contains outboxes[0].path"),
    (outbox("a", "out", "done", "done"), "outboxes[0].failed", "same folder as outboxes[0].sent"),
    (outbox("a", "out", "sent", "failed") + outbox("b", "out/b", "sent-b", "failed-b"),
     "outboxes[1].path", "lies inside outboxes[0].path"),
    (outbox("a", "x/out", "sent", "failed") + outbox("b", "x", "sent-b", "failed-b"),
     "outboxes[1].path", "contains outboxes[0].path"),
    (outbox("a", "out", "sent", "failed") + outbox("b", "out-b", "sent", "failed-b"),
     "outboxes[1].sent", "same folder as outboxes[0].sent"),
    (outbox("a", "out", "sent", "failed") + outbox("b", "./out/../out", "sent-b", "failed-b"),
     "outboxes[1].path", "same folder as outboxes[0].path"),
])
def test_folders_must_not_lie_inside_one_another(tmp_path, outboxes, key, fragment):
    err = load_error(tmp_path, "outboxes:\n" + outboxes)
    assert err.key == key and fragment in str(err)
    assert err.line is not None


def test_folder_overlap_sees_through_symlinks(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    err = load_error(tmp_path, "outboxes:\n" + outbox("a", "real", "alias/sent", "failed"))
    assert err.key == "outboxes[0].sent"


def test_neighbouring_folders_with_a_common_prefix_are_fine(tmp_path):
    config = load(tmp_path, "outboxes:\n" + outbox("a", "out", "out-sent", "out-failed"))
    assert config.outboxes[0].sent == tmp_path / "out-sent"


def test_database_inside_an_outbox_is_an_error(tmp_path):
    err = load_error(tmp_path, "database: outbox/jobs.db\n" + MINIMAL)
    assert (err.key, err.line) == ("database", 1)


# --- the API key ---------------------------------------------------------------------------

def test_key_and_key_file_together_are_an_error(tmp_path):
    (tmp_path / "key").write_text(KEY)
    err = load_error(tmp_path, f"api:\n  key: {KEY}\n  key_file: key\n" + MINIMAL)
    assert (err.key, err.line) == ("api.key_file", 3)
    assert "api.key" in str(err) and KEY not in str(err)


def test_key_file_is_read_and_stripped(tmp_path):
    (tmp_path / "key").write_text(f"  {KEY}\n\n")
    config = load(tmp_path, "api:\n  key_file: key\n" + MINIMAL, environ={"IFAX_API_KEY": "from-env"})
    assert read_api_key(config).reveal() == KEY
    assert config.api.key_file == tmp_path / "key"


def test_key_file_is_read_only_when_the_key_is_needed(tmp_path):
    """A systemd credential exists only while the service runs: loading never reads it."""
    config = load(tmp_path, "api:\n  key_file: /run/credentials/nowhere/ifax-api-key\n" + MINIMAL)
    assert config.api.key is None
    with pytest.raises(ConfigError) as err:
        read_api_key(config)
    assert (err.value.key, err.value.line) == ("api.key_file", 2)


def key_file_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read_api_key(load(tmp_path, text))
    return info.value


@pytest.mark.parametrize("content", ["", " \n\n"])
def test_empty_key_file_is_an_error_naming_it(tmp_path, content):
    (tmp_path / "key").write_text(content)
    err = key_file_error(tmp_path, "api:\n  key_file: key\n" + MINIMAL)
    assert (err.key, err.line) == ("api.key_file", 2)
    assert str(tmp_path / "key") in str(err) and "empty" in str(err)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_key_file_is_an_error_naming_it(tmp_path, make):
    if make == "directory":
        (tmp_path / "key").mkdir()
    err = key_file_error(tmp_path, "api:\n  key_file: key\n" + MINIMAL)
    assert (err.key, err.line) == ("api.key_file", 2)
    assert str(tmp_path / "key") in str(err) and "cannot be read" in str(err)


def test_key_file_with_two_lines_is_refused_without_showing_them(tmp_path):
    (tmp_path / "key").write_text(f"{KEY}\nsecond-line\n")
    err = key_file_error(tmp_path, "api:\n  key_file: key\n" + MINIMAL)
    assert err.key == "api.key_file" and KEY not in str(err) and "second-line" not in str(err)


def test_inline_key_wins_over_environment(tmp_path):
    config = load(tmp_path, f"api:\n  key: {KEY}\n" + MINIMAL, environ={"IFAX_API_KEY": "from-env"})
    assert config.api.key == Secret(KEY)


def test_environment_key_is_the_fallback(tmp_path):
    config = load(tmp_path, MINIMAL, environ={"IFAX_API_KEY": f" {KEY}\n"})
    assert config.api.key.reveal() == KEY


def test_no_key_at_all_is_not_an_error(tmp_path):
    assert load(tmp_path, MINIMAL, environ={"IFAX_API_KEY": ""}).api.key is None


def test_environment_key_is_not_read_from_os_environ_when_environ_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("IFAX_API_KEY", "process-key")
    assert load(tmp_path, MINIMAL, environ={}).api.key is None
    assert load_config(write(tmp_path, MINIMAL)).api.key == Secret("process-key")


def test_inline_key_in_a_file_others_can_read_is_a_warning(tmp_path):
    config = load(tmp_path, f"api:\n  key: {KEY}\n" + MINIMAL, mode=0o644)
    [warning] = config.warnings
    assert "api.key" in warning and "readable" in warning
    assert KEY not in warning


def test_inline_key_in_a_private_file_is_no_warning(tmp_path):
    assert load(tmp_path, f"api:\n  key: {KEY}\n" + MINIMAL, mode=0o600).warnings == ()


def test_readable_file_without_inline_key_is_no_warning(tmp_path):
    config = load(tmp_path, MINIMAL, mode=0o644, environ={"IFAX_API_KEY": KEY})
    assert config.warnings == ()


# --- secrets never leak --------------------------------------------------------------------

def test_secret_shows_as_stars():
    secret = Secret(KEY)
    assert str(secret) == "***" and f"{secret}" == "***" and KEY not in repr(secret)
    assert secret.reveal() == KEY
    assert secret == Secret(KEY) and secret != Secret("other") and secret != KEY
    assert bool(secret) and not Secret("")
    assert len({Secret(KEY), Secret(KEY)}) == 1


def test_secrets_never_in_dump_or_repr(tmp_path):
    config = load(tmp_path, f"api:\n  key: {KEY}\nwebhook:\n  enabled: true\n  secret: {WEBHOOK_SECRET}\n"
                  + MINIMAL)
    dumped = dump_redacted(config)
    assert KEY not in dumped and WEBHOOK_SECRET not in dumped
    data = yaml.safe_load(dumped)
    assert data["api"]["key"] == "***" and data["webhook"]["secret"] == "***"
    assert KEY not in repr(config) and WEBHOOK_SECRET not in repr(config)


@pytest.mark.parametrize("text", [
    f"api:\n  key: {KEY}: more\n",                 # YAML syntax error on the key's own line
    f"api:\n  key: \"{KEY}\n",                     # unterminated quote
    f"api:\n  key: {KEY}\n  key: {KEY}\n",          # set twice
    f"api:\n  key: '{KEY} {KEY}'\n",               # space inside
    f"api:\n  key: {KEY}\n  timeout: never\n",      # an error elsewhere in the same section
    f"webhook:\n  secret: '{WEBHOOK_SECRET}/x'\n",
    f"api:\n  kye: {KEY}\n",
])
def test_secrets_never_in_error_messages(tmp_path, text):
    err = load_error(tmp_path, text + MINIMAL, environ={"IFAX_API_KEY": KEY})
    assert KEY not in str(err) and WEBHOOK_SECRET not in str(err)
    assert err.line is not None


def test_environment_key_with_a_line_break_is_refused_without_showing_it(tmp_path):
    err = load_error(tmp_path, MINIMAL, environ={"IFAX_API_KEY": f"{KEY}\nX-Injected: 1"})
    assert err.key == "IFAX_API_KEY" and KEY not in str(err)


# --- numbers are text ----------------------------------------------------------------------

def test_numbers_keep_plus_and_leading_zeros(tmp_path):
    config = load(tmp_path, """\
        defaults:
          caller_id: +15551234567
          country: NO
        outboxes:
          - name: a
            path: a
            sent: a-sent
            failed: a-failed
            number: +4930123456
          - name: b
            path: b
            sent: b-sent
            failed: b-failed
            number: 0044201234567
        """)
    a, b = config.outboxes
    assert a.number == "+4930123456"
    assert b.number == "0044201234567"  # YAML 1.1 would read an octal int
    assert a.caller_id == "+15551234567"
    assert a.country == "NO"  # YAML 1.1 would read false (Norway)
    dumped = yaml.safe_load(dump_redacted(config))
    assert [o["number"] for o in dumped["outboxes"]] == ["+4930123456", "0044201234567"]
    assert dumped["outboxes"][0]["country"] == "NO"


# --- not supported yet ---------------------------------------------------------------------

def test_shipped_not_supported_keys_are_real_keys():
    # A typo in the set would silently let the key through.
    assert SHIPPED_NOT_SUPPORTED_YET <= set(config_module._FIELDS)


def test_not_supported_top_level_key_set_to_other_than_default_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "NOT_SUPPORTED_YET", {"poll.interval"})
    err = load_error(tmp_path, "poll:\n  interval: 10s\n" + MINIMAL)
    assert (err.key, err.line) == ("poll.interval", 2)
    assert "not supported yet" in str(err) and "default (30s)" in str(err)


def test_not_supported_key_at_its_default_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "NOT_SUPPORTED_YET", {"poll.interval", "defaults.quality"})
    config = load(tmp_path, "poll:\n  interval: 0.5m\ndefaults:\n  quality: Standard\n"
                  + MINIMAL + "    quality: standard\n")
    assert config.poll.interval == 30.0


@pytest.mark.parametrize("where", ["defaults", "outbox"])
def test_not_supported_per_outbox_key_is_refused_in_defaults_and_outboxes(tmp_path, monkeypatch, where):
    monkeypatch.setattr(config_module, "NOT_SUPPORTED_YET", {"defaults.resend.delay"})
    if where == "defaults":
        text, key, line = "defaults:\n  resend:\n    delay: 1m\n" + MINIMAL, "defaults.resend.delay", 3
    else:
        text, key, line = MINIMAL + "    resend: {max: 2, delay: 1m}\n", "outboxes[0].resend.delay", 6
    err = load_error(tmp_path, text)
    assert (err.key, err.line) == (key, line)
    assert "not supported yet" in str(err) and "(5m)" in str(err)


def test_not_supported_resend_max_does_not_block_resend_delay(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "NOT_SUPPORTED_YET", {"defaults.resend.max"})
    config = load(tmp_path, MINIMAL + "    resend: {delay: 1m}\n")
    assert config.outboxes[0].resend == ResendPolicy(max=2, delay=60.0)


def test_not_supported_secret_is_refused_without_showing_it(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "NOT_SUPPORTED_YET", {"webhook.secret"})
    err = load_error(tmp_path, f"webhook:\n  secret: {WEBHOOK_SECRET}\n" + MINIMAL)
    assert err.key == "webhook.secret" and "(null)" in str(err) and WEBHOOK_SECRET not in str(err)


def test_not_supported_is_checked_before_dependent_rules(tmp_path, monkeypatch):
    # An operator enabling the webhook hears "not supported", not "set a secret" first.
    monkeypatch.setattr(config_module, "NOT_SUPPORTED_YET", {"webhook.enabled"})
    err = load_error(tmp_path, "webhook:\n  enabled: true\n" + MINIMAL)
    assert "not supported yet" in str(err)


def test_shipped_set_refuses_its_keys_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "NOT_SUPPORTED_YET", set(SHIPPED_NOT_SUPPORTED_YET))
    assert load(tmp_path, MINIMAL).outboxes  # the defaults themselves always pass
    if "notify.command" in SHIPPED_NOT_SUPPORTED_YET:
        err = load_error(tmp_path, "notify:\n  command: /bin/true\n" + MINIMAL)
        assert "not supported yet" in str(err)


# --- dump ----------------------------------------------------------------------------------

def test_dump_parses_back_fully_resolved(tmp_path):
    config = load(tmp_path, f"""\
        api:
          key: {KEY}
        database: db/jobs.db
        defaults:
          settle: 500ms
          max_file_size: 1MiB
          deny: [+1900]
          resend: {{delay: 1m}}
        outboxes:
          - name: main
            path: outbox
            sent: sent
            failed: failed
            number: +4930123456
            resend: {{max: 5}}
        """)
    data = yaml.safe_load(dump_redacted(config))
    assert list(data) == ["api", "database", "http", "webhook", "poll", "log", "notify", "retention",
                          "outboxes"]
    assert data["api"]["key"] == "***" and data["api"]["timeout"] == 30.0
    assert data["database"] == str(tmp_path / "db" / "jobs.db")
    assert data["http"]["listen"] == "127.0.0.1:9468"
    assert data["webhook"] == {"enabled": False, "secret": None}
    assert data["poll"] == {"interval": 30.0, "give_up_after": 21600.0}
    [outbox] = data["outboxes"]
    assert outbox["path"] == str(tmp_path / "outbox") and os.path.isabs(outbox["failed"])
    assert outbox["number"] == "+4930123456"
    assert outbox["settle"] == 0.5 and outbox["rescan"] == 60.0
    assert outbox["max_file_size"] == 2**20 and outbox["deny"] == ["+1900"]
    assert outbox["resend"] == {"max": 5, "delay": 60.0}
    assert outbox["quality"] == "Standard" and outbox["country"] == "US"
    assert set(outbox) == {f.name for f in config_module.OutboxConfig.__dataclass_fields__.values()}


def test_dump_shows_no_key_as_null(tmp_path):
    data = yaml.safe_load(dump_redacted(load(tmp_path, MINIMAL)))
    assert data["api"]["key"] is None and data["api"]["key_file"] is None


# --- numbers judged as the daemon judges them (issue 8) ------------------------------------

@pytest.mark.parametrize(("extra", "says"), [
    ("    number: 555-1234\n", "local-only"),
    ("    number: \"+1 900 555 0100\"\n    deny: [\"+1900\"]\n", "deny rule"),
    ("    number: \"+15551230100\"\n    allow: [\"+49\"]\n", "none of the allowed"),
    ("    number: \"+1555\"\n", "too short"),
])
def test_an_outbox_number_the_daemon_would_refuse_is_an_error(tmp_path, extra, says):
    err = load_error(tmp_path, MINIMAL + extra)
    assert (err.key, err.line) == ("outboxes[0].number", 6)
    assert says in str(err) and "every document" in str(err)


def test_an_outbox_number_is_judged_with_its_country_and_the_defaults_rules(tmp_path):
    config = load(tmp_path, "defaults:\n  country: DE\n  allow: [\"+49\"]\n" + MINIMAL
                  + "    number: \"030 1234567\"\n")
    assert config.outboxes[0].number == "030 1234567"
    err = load_error(tmp_path, "defaults:\n  deny: [\"+4930\"]\n  country: DE\n" + MINIMAL
                     + "    number: \"030 1234567\"\n")
    assert (err.key, err.line) == ("outboxes[0].number", 9) and "+4930" in str(err)


@pytest.mark.parametrize("prefix", ["+0", "+999", "+0049"])
def test_an_allow_or_deny_prefix_no_number_can_have_is_an_error(tmp_path, prefix):
    err = load_error(tmp_path, f"defaults:\n  deny: [\"+1900\", \"{prefix}\"]\n" + MINIMAL)
    assert (err.key, err.line) == ("defaults.deny[1]", 2) and "country code" in str(err)
    err = load_error(tmp_path, MINIMAL + f"    allow: [\"{prefix}\"]\n")
    assert (err.key, err.line) == ("outboxes[0].allow[0]", 6)


def test_a_short_prefix_that_begins_country_codes_is_fine(tmp_path):
    assert load(tmp_path, MINIMAL + "    allow: [\"+4\", \"+1\"]\n").outboxes[0].allow == ("+4", "+1")


# --- api.timeout and the systemd unit's TimeoutStopSec ---------------------------------------

def test_the_unit_timeout_stop_sec_is_the_one_the_warning_uses():
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "fax-gateway.service").read_text()
    [value] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    assert float(value) == config_module.UNIT_TIMEOUT_STOP_SEC
    # The shipped default leaves the margin the unit's comment promises.
    assert load_config(Path(__file__).resolve().parent.parent / "config.example.yaml").warnings == ()


def test_a_timeout_longer_than_the_unit_allows_at_stop_is_a_warning(tmp_path):
    assert load(tmp_path, "api:\n  timeout: 33s\n" + MINIMAL).warnings == ()
    [warning] = load(tmp_path, "api:\n  timeout: 34s\n" + MINIMAL).warnings
    assert "TimeoutStopSec=35" in warning and "line 2" in warning and "at least 36" in warning
