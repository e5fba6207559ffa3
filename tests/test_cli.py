"""The command line as an operator uses it: exit codes, messages, read-only listing."""

from __future__ import annotations

import json

import httpx
from conftest import make_pdf, run_cli, wait_for


def test_check_config_prints_resolved_yaml_with_secrets_redacted(make_config):
    cfg = make_config(api={"key": "super-secret-key-123"})
    p = run_cli("check-config", "-c", str(cfg))
    assert p.returncode == 0, p.stderr
    assert "super-secret-key-123" not in p.stdout + p.stderr
    assert "key: '***'" in p.stdout or 'key: "***"' in p.stdout
    assert "settle: 0.3" in p.stdout


def test_check_config_error_names_file_key_and_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("database: x.db\noutboxes:\n  - name: main\n    path: o\n    sent: s\n"
                   "    failed: f\n    setle: 2s\n")
    p = run_cli("check-config", "-c", str(cfg))
    assert p.returncode == 2
    assert str(cfg) in p.stderr and "setle" in p.stderr and "line 7" in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_missing_config_file_exits_2(tmp_path):
    p = run_cli("jobs", "-c", str(tmp_path / "nope.yaml"))
    assert p.returncode == 2 and "nope.yaml" in p.stderr


def test_config_from_environment_variable(make_config):
    cfg = make_config()
    p = run_cli("jobs", "--json", env={"FAX_GATEWAY_CONFIG": str(cfg)})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []


def test_jobs_and_show_read_the_database_while_the_daemon_runs(daemon, spool, simulator, make_config):
    cfg = make_config()
    d = daemon(cfg).start()
    folder = spool.folder("+15551230301")
    (folder / "x.pdf").write_bytes(make_pdf(2))
    [result] = spool.wait_results(1, "sent")

    p = run_cli("jobs", "-c", str(cfg), "--json")
    assert p.returncode == 0, p.stderr
    [job] = json.loads(p.stdout)
    assert job["job"] == result["job"] and job["state"] == "delivered"
    assert job["recipients"][0]["to"] == "+15551230301"

    p = run_cli("jobs", "-c", str(cfg), "--state", "failed", "--json")
    assert json.loads(p.stdout) == []
    p = run_cli("jobs", "-c", str(cfg))
    assert "delivered" in p.stdout and "+15551230301" in p.stdout

    p = run_cli("show", "-c", str(cfg), str(job["job"]), "--json")
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    states = [e["state"] for e in shown["events"]]
    assert states[0] == "claiming" and "sending" in states and states[-1] == "filed"
    p = run_cli("show", "-c", str(cfg), str(job["job"]))
    assert "delivered" in p.stdout and "events:" in p.stdout
    d.terminate()


def test_show_errors(make_config, service):
    cfg = make_config()
    service(cfg)
    p = run_cli("show", "-c", str(cfg), "12x")
    assert p.returncode == 2 and "not a job id" in p.stderr
    p = run_cli("show", "-c", str(cfg), "999")
    assert p.returncode == 1 and "no job 999" in p.stderr
    p = run_cli("jobs", "-c", str(cfg), "--state", "lost")
    assert p.returncode == 2 and "unknown state" in p.stderr


def test_second_daemon_on_the_same_database_exits_2(daemon, make_config):
    cfg = make_config()
    first = daemon(cfg).start()
    second_cfg = make_config(name="second.yaml")  # same database, another port
    p = run_cli("run", "-c", str(second_cfg), timeout=20)
    assert p.returncode == 2
    assert f"process {first.proc.pid}" in p.stderr
    first.terminate()


def test_sigterm_exits_0(daemon):
    d = daemon().start()
    assert d.terminate() == 0


def test_simulate_refuses_a_database_with_real_jobs(daemon, spool, simulator, make_config, tmp_path):
    cfg = make_config()
    d = daemon(cfg).start()
    folder = spool.folder("+15551230302")
    (folder / "real.pdf").write_bytes(make_pdf(1))
    spool.wait_results(1, "sent")
    assert d.terminate() == 0
    p = run_cli("run", "-c", str(cfg), "--simulate", timeout=20)
    assert p.returncode == 2, p.stderr
    assert "--simulate refuses" in p.stderr


def test_simulate_marks_every_result_simulated(daemon, spool, make_config, simulator):
    cfg = make_config(api={"key": None})
    d = daemon(cfg, args=("--simulate",)).start()
    folder = spool.folder("+15551230303")
    (folder / "sim.pdf").write_bytes(make_pdf(1))
    [result] = spool.wait_results(1, "sent")
    assert result["simulated"] is True
    assert simulator.requests() == []  # the built-in simulator, not the test's
    assert httpx.get(d.url + "/healthz").json()["simulated"] is True
    d.terminate()


def test_run_without_a_key_says_how_to_set_one(make_config):
    cfg = make_config(api={"key": None})
    p = run_cli("run", "-c", str(cfg), env={"IFAX_API_KEY": ""}, timeout=20)
    assert p.returncode == 1
    assert "IFAX_API_KEY" in p.stderr and "Traceback" not in p.stderr


def test_python_dash_m_and_version():
    p = run_cli("--version")
    assert p.returncode == 0 and "fax-gateway" in p.stdout


def test_simulator_command_serves_the_api(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "simulator", "--port", str(port),
                             "--key", "k1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1/customer/fax-status"

        def answers():
            try:
                return httpx.post(url, json={"jobId": 1}, headers={"accessToken": "wrong"}, timeout=1)
            except httpx.HTTPError:
                return None
        r = wait_for(answers, 15, "the simulator to listen")
        assert r.status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_job_ids_are_ascii_digits_in_range(make_config, service):
    cfg = make_config()
    service(cfg)
    for command, text in (("cancel", "\u0663"), ("resend", "\u00b3"), ("show", "\uff13"),
                          ("show", "99999999999999999999"), ("show", "7" * 5000), ("show", "0"),
                          ("show", "-3"), ("show", " ")):
        p = run_cli(command, "-c", str(cfg), text)
        assert p.returncode == 2, (command, text, p.stderr)
        assert "not a job id" in p.stderr and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    p = run_cli("show", "-c", str(cfg), "9223372036854775807")
    assert p.returncode == 1 and "no job" in p.stderr
    p = run_cli("jobs", "-c", str(cfg), "--limit", "99999999999999999999")
    assert p.returncode == 2 and "--limit" in p.stderr and "Traceback" not in p.stderr


def test_a_closed_pipe_ends_the_listing_quietly(make_config):
    """`fax-gateway jobs | head -1`: the reader went away before the first line."""
    import subprocess
    import sys

    from conftest import REPO
    cfg = make_config()
    for args in (("jobs",), ("jobs", "--json"), ("check-config",)):
        proc = subprocess.Popen([sys.executable, "-m", "gateway", *args, "-c", str(cfg)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # before the command writes anything
        err = proc.stderr.read().decode()
        assert proc.wait(30) == 0, (args, err)
        assert "Broken pipe" not in err and "Errno 32" not in err and "Exception ignored" not in err


def test_check_config_refuses_an_outbox_number_that_would_reject_every_document(tmp_path):
    cfg = tmp_path / "local.yaml"
    cfg.write_text("database: x.db\noutboxes:\n  - name: main\n    path: o\n    sent: s\n"
                   "    failed: f\n    number: 555-1234\n")
    p = run_cli("check-config", "-c", str(cfg))
    assert p.returncode == 2
    assert str(cfg) in p.stderr and "outboxes[0].number" in p.stderr and "line 7" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_check_config_warns_when_a_stop_could_outlast_the_unit(make_config):
    p = run_cli("check-config", "-c", str(make_config(api={"timeout": "40s"})))
    assert p.returncode == 0 and "TimeoutStopSec=35" in p.stderr
