"""notify.command: tell someone when a job ends other than delivered.

The command runs with the result file's path as its last argument and the outcome in
its environment.  It runs in the background with a time limit: a slow or failing
command is logged and never blocks the daemon.  The intent to notify is committed with
the filing (`Store.mark_filed`) and cleared by `on_done` once the command has ended,
whatever its exit code, so it runs at least once: again after a crash or a stop that
interrupted it.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.cpu import spread

log = logging.getLogger("gateway.notify")

TIME_LIMIT = 60.0


class Notifier:
    def __init__(self, command: str, *, file_names: bool = True) -> None:
        self.argv = shlex.split(command)
        self.file_names = file_names  # False: the command's stderr (which may quote its path) is not logged

    @staticmethod
    def wants(state: str) -> bool:
        """Whether a job that ended in `state` is notified: every ending but delivered."""
        return state != "delivered"

    def job_ended(self, *, job_id: int, state: str, reason_code: str | None, outbox: str,
                  result_path: Path, on_done: Callable[[str], None] = lambda outcome: None) -> None:
        """Run the command in the background; `on_done(outcome)` once it has ended."""
        if not self.wants(state):
            return
        env = {**os.environ, "FAX_GATEWAY_JOB": str(job_id), "FAX_GATEWAY_STATE": state,
               "FAX_GATEWAY_REASON_CODE": reason_code or "", "FAX_GATEWAY_OUTBOX": outbox,
               "FAX_GATEWAY_RESULT": str(result_path)}
        env.pop("IFAX_API_KEY", None)  # the command has no business with the key
        threading.Thread(target=self._run_then, args=(job_id, [*self.argv, str(result_path)], env, on_done),
                         name=f"notify-{job_id}", daemon=True).start()

    def _run_then(self, job_id: int, argv: list[str], env: dict[str, str],
                  on_done: Callable[[str], None]) -> None:
        spread()  # the command gets every CPU the daemon may use, not the daemon's one (cpu.py)
        outcome = self._run(job_id, argv, env)
        try:
            on_done(outcome)
        except Exception as exc:  # the daemon is stopping: it runs again at the next start
            log.warning("job %s: notify.command ran but that could not be recorded: %s", job_id, exc)

    def _run(self, job_id: int, argv: list[str], env: dict[str, str]) -> str:
        """Runs the command once; a failure is logged, not repeated (it would fail again)."""
        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=TIME_LIMIT, check=False)
        except FileNotFoundError:
            log.error("job %s: notify.command %s not found", job_id, argv[0])
            return "notify.command not found"
        except subprocess.TimeoutExpired:
            log.error("job %s: notify.command did not finish within %.0fs and was killed", job_id, TIME_LIMIT)
            return "notify.command killed after the time limit"
        except OSError as exc:
            brief = f"[Errno {exc.errno}] {exc.strerror}"
            log.error("job %s: notify.command could not run: %s", job_id, exc if self.file_names else brief)
            return f"notify.command could not run: {brief}"
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-300:] if self.file_names else ""
            log.error("job %s: notify.command exited with %d%s", job_id, proc.returncode,
                      f": {err}" if err else "")
        return f"notify.command exited with {proc.returncode}"
