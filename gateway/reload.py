"""What a reload (SIGHUP, SPEC 10) changes, decided before anything is touched.

A reload is all or nothing: the new file is read and checked in full, and a change
the running daemon cannot make (`database`, `http.listen`, `http.status_listen`: the open
file and the bound ports) refuses the whole reload, so the daemon never runs half of one configuration and
half of another.  Outboxes are compared by name: a name that disappears is *retired*
(its jobs finish with the settings and into the folders recorded with them), a new name
is added, and a renamed outbox is both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.config import Config, OutboxConfig
from gateway.errors import GatewayError

# Bound once at start: changing them needs a restart.
FIXED = (("database", lambda c: c.database), ("http.listen", lambda c: c.http.listen),
         ("http.status_listen", lambda c: c.http.status_listen))
# A new API client is made when one of these changes (the key is compared by the service).
API_KEYS = ("base_url", "key", "key_file", "timeout", "max_in_flight")


class ReloadRefused(GatewayError):
    """The new configuration cannot be applied without a restart; the old one stays."""


@dataclass(frozen=True)
class Reload:
    config: Config
    outboxes: dict[str, OutboxConfig]  # the outboxes from now on (folders resolved)
    retired: dict[str, OutboxConfig]   # outboxes gone from the configuration whose jobs may still run
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    api_changed: bool = False

    @property
    def known(self) -> dict[str, OutboxConfig]:
        """Every outbox a job may belong to: retired ones first, so a name back in the
        configuration takes its new settings."""
        return {**self.retired, **self.outboxes}

    def summary(self) -> str:
        parts = [f"{what}: {', '.join(names)}" for what, names in
                 (("added", self.added), ("removed", self.removed), ("changed", self.changed)) if names]
        if self.removed:
            parts.append("jobs of removed outboxes finish into the folders recorded with them")
        return "; ".join(parts) if parts else "no outbox changed"


def plan_reload(old: Config, new: Config, current: Mapping[str, OutboxConfig],
                retired: Mapping[str, OutboxConfig],
                resolve: Callable[[OutboxConfig], OutboxConfig]) -> Reload:
    """Compare the running configuration with a new one; raise ReloadRefused if it
    changes what only a restart can."""
    for key, value in FIXED:
        if value(old) != value(new):
            was, now = (v if v is not None else "null" for v in (value(old), value(new)))
            raise ReloadRefused(f"{key} changed from {was} to {now}: that needs a restart "
                                "(systemctl restart fax-gateway); the running configuration is kept")
    outboxes = {o.name: resolve(o) for o in new.outboxes}
    added = tuple(n for n in outboxes if n not in current)
    removed = tuple(n for n in current if n not in outboxes)
    changed = tuple(n for n in outboxes if n in current and outboxes[n] != current[n])
    still_retired = {n: ob for n, ob in retired.items() if n not in outboxes}
    still_retired.update({n: current[n] for n in removed})
    api_changed = any(getattr(old.api, k) != getattr(new.api, k) for k in API_KEYS)
    return Reload(new, outboxes, still_retired, added, removed, changed, api_changed)


def watching_changed(old: OutboxConfig, new: OutboxConfig) -> bool:
    """A change that needs the outbox's folder watched afresh (its watcher is made again);
    other changes only need its folders planned again."""
    return any(getattr(old, k) != getattr(new, k) for k in ("path", "private", "settle", "rescan", "polling"))
