"""The `fax-gateway` command: parse arguments, load the configuration, call the library,
turn errors into one sentence and an exit code (0 ok, 1 failure, 2 usage/config)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gateway import __version__
from gateway.config import Config, dump_redacted, load_config
from gateway.dblock import DatabaseLock
from gateway.errors import (
    ActionNotAllowed,
    ConfigError,
    DaemonRunning,
    GatewayError,
    JobNotFound,
    StoreError,
    UsageError,
)
from gateway.logs import setup_logging
from gateway.names import shown
from gateway.results import iso, job_document, result_document
from gateway.store import ACTIVE_ORDER, JOB_STATES, Store

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fax-gateway", description="Turns folders into fax machines (iFax).")
    p.add_argument("--version", action="version", version=f"fax-gateway {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name != "simulator":
            sp.add_argument("-c", "--config", help="configuration file (default: $FAX_GATEWAY_CONFIG, "
                            "then /etc/fax-gateway/config.yaml)")
        return sp

    run = cmd("run", "run the daemon in the foreground until SIGTERM/SIGINT")
    run.add_argument("--simulate", action="store_true",
                     help="send to the built-in iFax simulator instead of the real API")
    cmd("check-config", "validate the configuration and print it with secrets redacted")
    jobs = cmd("jobs", "list jobs, newest first")
    jobs.add_argument("--state", help="only jobs in this state: " + ", ".join(JOB_STATES))
    jobs.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    jobs.add_argument("--blocked", action="store_true",
                      help="list blocked items (what the gateway cannot act on yet, and what to fix) instead")
    jobs.add_argument("--json", action="store_true", help="print a JSON array")
    show = cmd("show", "one job with its recipients, files and events")
    show.add_argument("job", help="job id")
    show.add_argument("--json", action="store_true", help="print JSON")
    cancel = cmd("cancel", "cancel an active job (carried out by the running daemon)")
    cancel.add_argument("job", help="job id")
    resend = cmd("resend", "send a finished, not delivered job again to the recipients that did not "
                 "get it (carried out by the running daemon)")
    resend.add_argument("job", help="job id")
    insp = cmd("inspect", "say what the daemon would do with each file, and why, without moving or "
                "sending anything (exit 1 if any would be rejected or is blocked)")
    insp.add_argument("paths", nargs="+", metavar="PATH", help="files (or folders) inside an outbox")
    insp.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    backup = cmd("backup", "write an online copy of the database to FILE (safe while the daemon runs)")
    backup.add_argument("file", metavar="FILE", help="the copy to write (replaced whole if it exists)")
    sim = cmd("simulator", "run the iFax-compatible simulator as a standalone server")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8089)
    sim.add_argument("--key", default="simulator",
                     help="the API key it accepts (default 'simulator'; never use a real key here)")
    sim.add_argument("--delay", type=float, default=2.0,
                     help="seconds a fax stays 'sending' before its final status (default 2)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except (ConfigError, UsageError, DaemonRunning) as exc:
        _fail(exc, debug)
        return 2
    except (GatewayError, OSError, sqlite3.Error) as exc:
        _fail(exc, debug)
        return 1


def _reader_went_away() -> int:
    """`fax-gateway jobs | head -1`: the reader has what it wanted.  As Python's documentation
    on SIGPIPE advises, stdout is pointed at /dev/null so the final flush at exit cannot
    fail again and print "Exception ignored"; SIGPIPE keeps Python's disposition (ignored),
    so the daemon's sockets are unaffected.  Exit 0, quietly: the output was not wrong, and
    a script with `set -o pipefail` must not fail because `head` stopped reading."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        import traceback
        traceback.print_exception(exc)
    text = str(exc).strip() or type(exc).__name__
    print(f"fax-gateway: {text}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "simulator":
        return _simulator(args)
    # Commands that never call the API never open the key file (SPEC 2): they work where
    # only the service may read it.
    config = load_config(args.config)
    if command == "check-config":
        sys.stdout.write(dump_redacted(config))
        for w in config.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if config.api.key_file is not None:
            # Never read here: a systemd credential exists only while the service runs.
            print(f"note: the key file {config.api.key_file} is read when `run` starts (without "
                  "--simulate); it is not checked here", file=sys.stderr)
        elif config.api.key is None:
            print("note: no API key is set (api.key_file, api.key or IFAX_API_KEY); `run` needs one "
                  "unless --simulate", file=sys.stderr)
        return 0
    if command == "run":
        return _run(config, args)
    if command == "jobs":
        return _jobs(config, args)
    if command == "show":
        return _show(config, args)
    if command in ("cancel", "resend"):
        return _request(config, command, _job_id(args.job))
    if command == "backup":
        return _backup(config, Path(args.file))
    if command == "inspect":
        return _inspect(config, args)
    raise UsageError(f"unknown command {command}")




def _run(config: Config, args: argparse.Namespace) -> int:
    from gateway.cpu import OFF, YES, keep_on_one_cpu, other_cpu
    from gateway.service import Service
    setup_logging(config.log.level, config.log.format, forced_debug=args.debug)
    for w in config.warnings:
        log.warning(w)
    keep_on_one_cpu()  # before any thread starts: they inherit it
    # Intake in a process of its own (intakeproc.py) when it can have a CPU of its own:
    # sharing one, the two processes were slower than one (README, Decisions).
    cpus = other_cpu()
    wanted = os.environ.get("FAX_GATEWAY_INTAKE_PROCESS", "").lower()
    apart = wanted in YES or (wanted not in OFF and cpus is not None)
    service = Service(config, simulate=args.simulate, intake_apart=apart, cpus=cpus, debug=args.debug)
    service.start()
    return service.run_forever()


def _simulator(args: argparse.Namespace) -> int:
    from gateway.simulator import serve
    setup_logging("debug" if args.debug else "info")
    serve(args.host, args.port, key=args.key, delay=args.delay)
    return 0


MAX_JOB_ID = 2**63 - 1  # SQLite's largest integer


def _job_id(text: str) -> int:
    """ASCII digits only: str.isdigit() also accepts '٣' or '³', which int() would read as 3,
    and the command would act on a job nobody named."""
    digits = text.strip()
    if not digits or len(digits) > 30 or not all("0" <= c <= "9" for c in digits) \
            or not 0 < int(digits) <= MAX_JOB_ID:  # (30: int() refuses more than 4300 digits)
        raise UsageError(f"{shown(text[:40])!r} is not a job id: job ids are whole numbers from 1 to "
                         f"{MAX_JOB_ID}, written with the digits 0-9 (see `fax-gateway jobs`)")
    return int(digits)


@contextmanager
def _reading(config: Config) -> Iterator[Store | None]:
    """The database for a command that only reads; None when the daemon has not made it yet."""
    try:
        os.stat(config.database)
    except FileNotFoundError:
        yield None
        return
    except OSError as exc:  # "no jobs" would be a lie when the folder may not be searched
        raise StoreError(f"cannot read database {config.database} ({exc.strerror}): run as a user "
                         "who may read it and its folder (root, or one in the gateway's group)") from None
    store = Store.open_for_reading(config.database)
    try:
        yield store if store.has_jobs_table else None
    finally:
        store.close()


def _jobs(config: Config, args: argparse.Namespace) -> int:
    if args.state is not None and args.state not in JOB_STATES:
        raise UsageError(f"unknown state {args.state!r}: use one of " + ", ".join(JOB_STATES))
    if not 1 <= args.limit <= MAX_JOB_ID:
        raise UsageError(f"--limit must be from 1 to {MAX_JOB_ID}")
    if args.blocked:
        return _blocked(config, args)
    with _reading(config) as store:
        jobs = store.list_jobs(state=args.state, limit=args.limit) if store else []
    if args.json:
        print(json.dumps([result_document(j) for j in jobs], indent=2, ensure_ascii=False))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'JOB':>6}  {'STATE':<10}  {'OUTBOX':<12}  {'CREATED':<20}  {'TO':<16}  FILES")
    for j in jobs:
        to = ",".join(r.number for r in j.recipients) or "-"
        print(f"{j.id:>6}  {j.state:<10}  {j.outbox:<12}  {iso(j.created_at):<20}  {to:<16}  "
              f"{shown(', '.join(j.names))}")
    return 0


def _blocked(config: Config, args: argparse.Namespace) -> int:
    """The daemon's own rows (SPEC 4.5): the same set /healthz and fax_gateway_blocked show."""
    with _reading(config) as store:
        items = store.list_blocked(limit=args.limit) if store and store.has_table("blocked") else []
    if args.json:
        print(json.dumps([{"outbox": b.outbox, "stage": b.stage, "item": b.item, "reason": b.reason,
                           "since": iso(b.since), "job": b.job_id} for b in items], indent=2))
        return 0
    if not items:
        print("nothing is blocked")
        return 0
    for b in items:
        print(f"{b.outbox} ({b.stage}, since {iso(b.since)}): {b.item}\n    {b.reason}")
    return 0


def _show(config: Config, args: argparse.Namespace) -> int:
    job_id = _job_id(args.job)
    with _reading(config) as store:
        if store is None:
            raise JobNotFound(f"no job {job_id}: the database {config.database} holds no jobs yet")
        job = store.get_job(job_id)
        events = store.events(job_id)
    doc = job_document(job, events)
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    print(f"job {job.id}: {job.state}" + (" (simulated)" if job.simulated else ""))
    if job.reason:
        print(f"reason: {job.reason} [{job.reason_code or '-'}]")
    print(f"outbox: {job.outbox}   folder: {shown(job.rel_dir) or '.'}")
    print(f"files: {shown(', '.join(job.names))}")
    if job.filed_to:
        print(f"filed in: {job.filed_root}")
    print(f"created: {iso(job.created_at)}   completed: {iso(job.completed_at) or '-'}")
    for r in job.recipients:
        print(f"  to {r.number}: {r.state}, attempts {r.attempts}, iFax job {r.ifax_job_id or '-'}, "
              f"pages {r.pages if r.pages is not None else '-'}"
              + (f", {r.message}" if r.message else ""))
    print("events:")
    for e in doc["events"]:
        who = f" {e['recipient']}" if e["recipient"] else ""
        print(f"  {e['at']}  {e['state']}{who}" + (f": {e['detail']}" if e["detail"] else ""))
    return 0


REQUEST_WAIT = 10.0
ALLOWED = {"cancel": ACTIVE_ORDER, "resend": ("failed", "canceled")}


def _request(config: Config, action: str, job_id: int) -> int:
    """Record the request and wait for the daemon's outcome (SPEC 2): the API key stays
    with the service, and the daemon is the only one that changes the job."""
    if not config.database.exists():
        raise JobNotFound(f"no job {job_id}: the database {config.database} does not exist yet")
    if not os.access(config.database, os.W_OK):  # else SQLite's "attempt to write a readonly database"
        raise GatewayError(f"{action} records a request in the database, and this user may not write to "
                           f"{config.database}: run it as root or as the gateway's user")
    # Before SQLite opens the file: the probe closes its descriptor, which would drop the
    # locks SQLite holds on it (dblock.py).
    daemon_running = DatabaseLock(config.database).held_by_another()
    store = Store(config.database)
    try:
        job = store.get_job(job_id)
        if job.state not in ALLOWED[action]:
            raise ActionNotAllowed(f"job {job_id} is {job.state}: {action} needs a job that is "
                                   + " or ".join(ALLOWED[action]))
        if not daemon_running:
            raise GatewayError(f"no fax-gateway daemon is running for {config.database}, so nothing was "
                               f"done: start it (systemctl start fax-gateway) and run {action} again")
        request_id = store.add_request(job_id, action)
        deadline = time.monotonic() + REQUEST_WAIT
        while time.monotonic() < deadline:
            req = store.get_request(request_id)
            if req["done_at"] is not None:
                if req["ok"]:
                    print(req["outcome"])
                    return 0
                raise ActionNotAllowed(req["outcome"])
            time.sleep(0.1)
    finally:
        store.close()
    raise GatewayError(f"the daemon has not finished the {action} of job {job_id} within "
                       f"{REQUEST_WAIT:.0f} seconds; it carries on: see `fax-gateway show {job_id}`")


def _inspect(config: Config, args: argparse.Namespace) -> int:
    """A dry run of intake (gateway/inspection.py): reads, never writes; no database needed."""
    import signal

    from gateway.inspection import inspect_paths, render
    # As the daemon does before taking the read leases that tell a file still held open by
    # its writer (watcher.open_for_writing): a lease break is SIGIO, which would kill us.
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    verdicts = inspect_paths(config, args.paths)
    if args.json:
        print(json.dumps([v.as_json() for v in verdicts], indent=2, ensure_ascii=False))
    else:
        for v in verdicts:
            print(render(v))
    return 1 if any(v.fails for v in verdicts) else 0


def _backup(config: Config, target: Path) -> int:
    """SQLite's backup API through a read-only connection (Store.backup): a consistent copy
    while the daemon writes, never a copy of the files under it.  Written beside FILE and
    renamed over it, so FILE is always a whole copy, mode 0600 (it holds fax numbers)."""
    if not config.database.exists():
        raise GatewayError(f"the database {config.database} does not exist yet: nothing to back up")
    if target.is_dir():
        raise UsageError(f"{target} is a folder: name the file to write, e.g. {target / 'jobs.db'}")
    if target.exists() and os.path.samefile(target, config.database):
        raise UsageError(f"{target} is the database itself: name another file")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise GatewayError(f"cannot write the copy beside {target}: {exc.strerror}; choose a folder "
                           "you may write to") from None
    try:
        store = Store(config.database, readonly=True)
        try:
            store.backup(tmp)
        finally:
            store.close()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"copied {config.database} to {target}")
    return 0
