"""notify.command: tell someone when a job ends other than delivered.

The command runs with the result file's path as its last argument and the outcome in
its environment.  It runs in the background with a time limit: a slow or failing
command is logged and never blocks the daemon.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
from pathlib import Path

log = logging.getLogger("gateway.notify")

TIME_LIMIT = 60.0


class Notifier:
    def __init__(self, command: str, *, file_names: bool = True) -> None:
        self.argv = shlex.split(command)
        self.file_names = file_names  # False: the command's stderr (which may quote its path) is not logged

    def job_ended(self, *, job_id: int, state: str, reason_code: str | None, outbox: str,
                  result_path: Path) -> None:
        if state == "delivered":
            return
        env = {**os.environ, "FAX_GATEWAY_JOB": str(job_id), "FAX_GATEWAY_STATE": state,
               "FAX_GATEWAY_REASON_CODE": reason_code or "", "FAX_GATEWAY_OUTBOX": outbox,
               "FAX_GATEWAY_RESULT": str(result_path)}
        env.pop("IFAX_API_KEY", None)  # the command has no business with the key
        threading.Thread(target=self._run, args=(job_id, [*self.argv, str(result_path)], env),
                         name=f"notify-{job_id}", daemon=True).start()

    def _run(self, job_id: int, argv: list[str], env: dict[str, str]) -> None:
        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=TIME_LIMIT, check=False)
        except FileNotFoundError:
            log.error("job %s: notify.command %s not found", job_id, argv[0])
            return
        except subprocess.TimeoutExpired:
            log.error("job %s: notify.command did not finish within %.0fs and was killed", job_id, TIME_LIMIT)
            return
        except OSError as exc:
            log.error("job %s: notify.command could not run: %s", job_id,
                      exc if self.file_names else f"[Errno {exc.errno}] {exc.strerror}")
            return
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-300:] if self.file_names else ""
            log.error("job %s: notify.command exited with %d%s", job_id, proc.returncode,
                      f": {err}" if err else "")
