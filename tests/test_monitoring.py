"""Monitoring (README "Monitoring"): the alert rules in monitoring/ pass promtool's checks and
unit tests, and the Grafana dashboard and the rules work against a real Prometheus that
scrapes a running `fax-gateway run --simulate`.

Prometheus and promtool come from Debian's `prometheus` package. Outside CI a missing tool
skips these tests, saying so; under `.ci/run` (CI=true), which installs the package, it
fails them."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import REPO, Daemon, free_port, make_pdf, metric_value, wait_for

MONITORING = REPO / "monitoring"
RULES = MONITORING / "fax-gateway.rules.yml"
RULE_TESTS = MONITORING / "fax-gateway.rules.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# What Grafana would put in place of its variables when the live test asks Prometheus. The
# scrape interval is 1 s and everything the test makes happens in the last half minute, so a
# minute-long window holds all of it (Grafana's own $__rate_interval would be 4 s here).
RATE_INTERVAL = "1m"
RANGE = "10m"

# Alerts that cannot fire within a test that lasts seconds: their expressions must parse,
# and are expected to return nothing. Every other alert must reach `firing` live.
NOT_LIVE = {
    "FaxGatewayFilesWaitingLong": "a file must wait 10 minutes before the gauge counts it",
    "FaxGatewayOldestJobTooOld": "the oldest active job must be 2 hours old",
    "FaxGatewayNoSuccessfulPoll": "no poll may succeed for 10 minutes while a fax is sending",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def tool(name: str) -> str:
    """The path of promtool or prometheus; a skip (outside CI) or a failure (in CI) without it."""
    path = shutil.which(name)
    if path:
        return path
    message = (f"{name} is not installed: `apt-get install -y --no-install-recommends prometheus` "
               "(Debian) brings prometheus and promtool")
    if _in_ci():
        pytest.fail(message + "; .ci/run should have installed it")
    pytest.skip(message)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_queries() -> list[tuple[str, str]]:
    return [(f"{panel['title']} / {target['refId']}", target["expr"])
            for panel in _panels(_dashboard()["panels"]) for target in panel.get("targets", [])]


def _metric_names(expr: str) -> set[str]:
    """fax-gateway's metric names in an expression (only to cross-check against /metrics;
    Prometheus itself parses and evaluates every expression below)."""
    return set(re.findall(r"\bfax_gateway_[a-z_]+\b", expr))


# -- the rules, with promtool --------------------------------------------------------------------

def test_every_alert_has_a_severity_and_says_what_to_do():
    rules = _rules()
    assert len(rules) >= 11
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert "for" in rule, f"{name}: say how long it must hold, even 0m"
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and "{{ $labels.instance }}" in annotations["summary"], name
        assert len(annotations["description"]) > 150, f"{name}: the description should say what to do"


def test_every_alert_has_a_unit_test_that_fires_it():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                assert set(alert["exp_annotations"]) == {"summary", "description"}, check["alertname"]
                fired.add(check["alertname"])
    assert fired == {rule["alert"] for rule in _rules()}


def test_readme_lists_every_alert_with_its_thresholds():
    """The README's table is where an operator reads the thresholds: it must say the ones in force."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for rule in _rules():
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{rule['alert']}` |")]
        assert len(rows) == 1, f"README.md's alert table has no row for {rule['alert']}"
        row = rows[0]
        expected = [rule["labels"]["severity"], rule["for"]]
        expected += re.findall(r"(?:[<>]=?|==)\s*([0-9.]+)", rule["expr"])  # the thresholds
        expected += [f"[{window}]" for window in re.findall(r"\[(\d+[smhd])\]", rule["expr"])]
        missing = [text for text in expected if text not in row]
        assert not missing, f"README.md's row for {rule['alert']} does not say {missing}"


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = tool("promtool")
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        run = subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"promtool {' '.join(args)}:\n{run.stdout}\n{run.stderr}"
        assert "SUCCESS" in run.stdout, run.stdout


# -- the dashboard, as Grafana imports it ----------------------------------------------------------

def test_dashboard_is_in_grafanas_import_format():
    d = _dashboard()
    [ds_input] = d["__inputs"]
    assert ds_input == {**ds_input, "name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}
    required = {(r["type"], r["id"]) for r in d["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    panels = list(_panels(d["panels"]))
    types = {p["type"] for p in panels} - {"row"}
    assert {("panel", t) for t in types} <= required, "__requires must name every panel type used"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == source, p["title"]
        assert p["targets"] and all(t["datasource"] == source and t["expr"] for t in p["targets"]), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"instance", "outbox"}
    for v in variables.values():
        assert v["type"] == "query" and v["datasource"] == source
        assert v["query"].startswith("label_values(") and v["query"] == v["definition"]
    for where, expr in _dashboard_queries():
        assert 'instance=~"$instance"' in expr, f"{where}: not filtered by $instance"
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window in ("$__rate_interval", "$__range", "1h"), f"{where}: a fixed window [{window}]"
    text = json.dumps(d)
    for topic in ("files_detected", "jobs_submitted", "fax_gateway_jobs{", "submit_delay",
                  "delivery_duration", "jobs_completed", "files_rejected", "api_requests",
                  "api_request_duration", "cost_total", "pages_sent", "api_paused", "outbox_paused",
                  "blocked", "oldest_active_job"):
        assert topic in text, f"the dashboard shows no {topic}"


# -- against a real Prometheus ---------------------------------------------------------------------

class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log

    def get(self, path: str, **params: Any) -> Any:
        resp = httpx.get(self.url + path, params=params, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (
            f"Prometheus refused {expr!r}: {body.get('error')}")
        assert body["data"]["resultType"] == "vector", expr
        return body["data"]["result"]

    def firing(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for alert in self.get("/api/v1/alerts")["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert)
        return out


@contextmanager
def prometheus(tmp_path: Path, targets: list[str], rules: Path) -> Iterator[Prometheus]:
    """The `prometheus` binary on a free loopback port, with its own data folder, scraping
    `targets` every second and evaluating `rules` every second."""
    binary = tool("prometheus")
    home = tmp_path / "prometheus"
    home.mkdir()
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "fax-gateway", "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    log = home / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=home)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(prom.url + "/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 30, "Prometheus to be ready")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _rules_firing_at_once(tmp_path: Path) -> Path:
    """A copy of the shipped rules with every `for:` set to 0s, so that an alert fires at the
    first evaluation that finds it true: the shipped durations (minutes) would outlast the
    test. Everything else, expressions and thresholds included, is as shipped."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    path = tmp_path / "fax-gateway.rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _substitute(expr: str, instance: str, outbox: str) -> str:
    """Grafana's variables, as Grafana fills them in: $outbox is a regex (`.*` for All)."""
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)
            .replace("$instance", instance).replace("$outbox", outbox))


def _has_a_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def _outbox(root: Path, name: str) -> dict[str, str]:
    for folder in ("outbox", "sent", "failed"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return {"name": name, "path": str(root / "outbox"), "sent": str(root / "sent"),
            "failed": str(root / "failed")}


def _drop(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def _metrics_reach(gw: Daemon, name: str, at_least: float, **labels: str) -> Callable[[], bool]:
    return lambda: (metric_value(gw.metrics(), name, **labels) or 0) >= at_least


def test_dashboard_and_rules_work_against_a_real_prometheus(daemon, make_config, tmp_path):
    """A daemon with --simulate gets documents that end delivered, failed, rejected, blocked
    and still sending; then the simulator answers fax-status with errors, then refuses the
    account, and a second outbox loses its folder. Prometheus scrapes it (and a target where
    nothing listens, for FaxGatewayDown) every second and evaluates a copy of the rules whose
    `for:` are 0s. Then every expression of the dashboard and of the rules is asked of
    Prometheus: each must parse and return data (except NOT_LIVE), every alert but NOT_LIVE's
    must be firing, and every metric they name must be in the daemon's /metrics."""
    tool("prometheus")
    main, second = tmp_path / "main", tmp_path / "second"
    config = make_config(extra={"outboxes": [_outbox(main, "main"), _outbox(second, "second")]})
    gw = daemon(config, args=("--simulate",)).start()
    announced = re.compile(r"API (http://127\.0\.0\.1:\d+)/v1 \(simulated\)")
    sim_url = wait_for(lambda: announced.search(gw.log.read_text()), 10,
                       "the simulator's address in the log").group(1)
    instance = gw.url.removeprefix("http://")
    nobody = f"127.0.0.1:{free_port()}"  # a target where no gateway answers: up == 0

    with prometheus(tmp_path, [instance, nobody], _rules_firing_at_once(tmp_path)) as prom:
        # Counters must be scraped at 0 first, or increase() would see no increase.
        wait_for(lambda: prom.query(f'fax_gateway_build_info{{instance="{instance}"}}'), 15, "a first scrape")
        # Faxes that end delivered (2, and one that cannot be filed: a file is where its sent/
        # folder should be, so it stays blocked), failed (3, ...661: the number refuses faxes),
        # and one that stays sending (...888); documents rejected as unsupported_type (5).
        outbox = main / "outbox"
        for n in ("+15551230001", "+15551230002"):
            _drop(outbox / n, f"{n}.pdf", make_pdf(1, text=n))
        for n in ("+15551230661", "+15551231661", "+15551232661"):
            _drop(outbox / n, f"{n}.pdf", make_pdf(1, text=n))
        _drop(outbox / "+15551230888", "sending.pdf", make_pdf(2))
        (main / "sent" / "+15551230003").write_bytes(b"a file where the gateway files its folder")
        _drop(outbox / "+15551230003", "blocked.pdf", make_pdf(1))
        for i in range(5):
            _drop(outbox / "+15551230004", f"notes{i}.txt", b"plain text is no fax document\n")
        for what, name, n, labels in (
                ("2 delivered", "fax_gateway_jobs_completed_total", 2,
                 {"outbox": "main", "result": "delivered"}),
                ("3 failed", "fax_gateway_jobs_completed_total", 3, {"outbox": "main", "result": "failed"}),
                ("5 rejected", "fax_gateway_files_rejected_total", 5,
                 {"outbox": "main", "reason": "unsupported_type"}),
                ("1 blocked", "fax_gateway_blocked", 1, {"outbox": "main", "stage": "filing"}),
                ("1 sending", "fax_gateway_jobs", 1, {"state": "sending"})):
            wait_for(_metrics_reach(gw, name, n, **labels), 20, what)

        # fax-status answers HTTP 500 thirty times: the ...888 fax is polled every 0.2 s.
        httpx.post(sim_url + "/_simulator/faults", json={"mode": "error", "endpoints": ["fax-status"],
                                                         "count": 30}).raise_for_status()
        wait_for(lambda: httpx.get(sim_url + "/_simulator/faults").json()["fault"]["count"] == 0, 20,
                 "30 fax-status errors")

        # iFax refuses every fax with the same message: after three documents in a row the
        # gateway takes it for the account and pauses submissions (README "Decisions").
        refuse = {"mode": "refuse_all", "endpoints": ["fax-send"], "message": "Insufficient balance"}
        httpx.post(sim_url + "/_simulator/faults", json=refuse).raise_for_status()
        for n in ("+15551230010", "+15551230011", "+15551230012"):
            _drop(outbox / n, f"{n}.pdf", make_pdf(1, text=n))
        wait_for(_metrics_reach(gw, "fax_gateway_api_paused", 1), 20, "submissions paused")

        # The second outbox's folder disappears (an unmounted share, a deleted folder).
        shutil.rmtree(second / "outbox")
        wait_for(_metrics_reach(gw, "fax_gateway_outbox_paused", 1, outbox="second"), 10, "outbox paused")

        # Prometheus loaded every rule and evaluates each without an error.
        [group] = prom.get("/api/v1/rules")["groups"]
        assert [r["name"] for r in group["rules"]] == [r["alert"] for r in _rules()]
        assert all(r["health"] == "ok" and not r.get("lastError") for r in group["rules"]), group["rules"]

        live = {rule["alert"] for rule in _rules()} - set(NOT_LIVE)
        deadline = time.monotonic() + 30
        while not live <= set(firing := prom.firing()):
            assert time.monotonic() < deadline, f"not firing after 30 s: {sorted(live - set(firing))}"
            time.sleep(0.2)
        [paused_outbox] = firing["FaxGatewayOutboxPaused"]
        assert paused_outbox["labels"]["outbox"] == "second"
        assert paused_outbox["labels"]["severity"] == "critical"
        assert f"Outbox second on {instance} is paused" in paused_outbox["annotations"]["description"]
        [spike] = firing["FaxGatewayRejectionSpike"]
        assert (spike["labels"]["outbox"], spike["labels"]["reason"]) == ("main", "unsupported_type")
        [paused_api] = firing["FaxGatewaySubmissionsPaused"]
        assert paused_api["labels"]["instance"] == instance
        assert [a["labels"]["instance"] for a in firing["FaxGatewayDown"]] == [nobody]
        assert {a["labels"]["stage"] for a in firing["FaxGatewayBlockedItems"]} == {"filing"}
        assert not set(firing) & set(NOT_LIVE)

        # Every expression of the rules, as shipped, parses and (but NOT_LIVE's) returns data.
        for rule in _rules():
            result = prom.query(rule["expr"])
            if rule["alert"] in NOT_LIVE:
                assert result == [], f"{rule['alert']} found {result}: move it out of NOT_LIVE"
            else:
                assert result, f"{rule['alert']}: {rule['expr']} returned no data"

        # Every query of the dashboard, with All outboxes and with one, returns numbers.
        queries = _dashboard_queries()
        for where, expr in queries:
            for outbox_value in (".*", "main"):
                query = _substitute(expr, instance, outbox_value)
                result = prom.query(query)
                assert _has_a_number(result), f"{where}: {query} returned {result or 'no data'}"

        # The template variables find the instance and both outboxes.
        for var in _dashboard()["templating"]["list"]:
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]).groups()
            values = prom.get(f"/api/v1/label/{label}/values",
                              **{"match[]": _substitute(metric, instance, ".*")})
            assert values == ([instance] if label == "instance" else ["main", "second"]), var["name"]

        # Every metric named is one the daemon exports (and Prometheus has scraped).
        exported = {line.split("{")[0].split(" ")[0] for line in gw.metrics().splitlines()
                    if line and not line.startswith("#")}
        scraped = set(prom.get("/api/v1/label/__name__/values"))
        named = set().union(*(_metric_names(e) for _, e in queries),
                            *(_metric_names(r["expr"]) for r in _rules()))
        assert named and not named - exported, f"not in /metrics: {sorted(named - exported)}"
        assert not named - scraped, f"not scraped by Prometheus: {sorted(named - scraped)}"
        assert "up" in scraped
