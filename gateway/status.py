"""The status page (issue 11): for the people in the office, "did my fax go out, and if
not, what do I fix?"

It lives on a listener of its own, `http.status_listen` (off by default), so the port
that faces iFax never shows it; the README puts it behind nginx with a login.  It is
read-only: GET and HEAD only, and nothing it does changes a job.

- `GET /` says in words whether all is well and, if not, what is wrong and what to do
  (from `Service.health()`: a paused outbox, a refused account, blocked items), each
  outbox's queue by state, the counts kept per state, and the last RECENT jobs.
- `GET /?q=...` finds jobs by job id, fax number (normalised as the outboxes normalise
  numbers) or file name (see `search`).
- `GET /jobs/<id>` shows one job: its files, cover text, recipients and events, from
  the same document `fax-gateway show --json` prints (results.job_document).

Plain server-rendered HTML that a phone can read; /static/status.js fetches the page
every REFRESH_SECONDS and swaps the part that changes (`#live`), so the scroll
position stays.  There is no inline script or style: the Content-Security-Policy
forbids both.

Untrusted text is everywhere here: file names chosen by whoever writes to an outbox,
sidecar subjects and references, messages from iFax.  Every value reaches the HTML
through `esc` (names.shown, then html.escape); templates are this module's literal
strings, and `markup` escapes every value put into one unless it is already `Safe`.
With `log.file_names: false` names, folders, cover text and reasons that may quote
them are shown as "hidden".

Cost: every question is an indexed lookup or a walk of at most a fixed number of rows
(store.py), so a page costs the same with a million jobs kept as with a thousand.
"""

from __future__ import annotations

import html
import time
import urllib.parse
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway import numbers
from gateway.errors import JobNotFound, Rejected
from gateway.names import shown
from gateway.results import job_document, result_document
from gateway.store import ACTIVE_ORDER, JOB_STATES, Job
from gateway.web import Request, Response, Route, Routes, WebServer

REFRESH_SECONDS = 5
RECENT = 50
"""Jobs on the page, and at most this many search results."""
NAME_SEARCH_WITHIN = 5000
"""A part of a file name is looked for among this many newest jobs (a whole name: in all)."""
MAX_QUERY = 200
MAX_JOB_ID = 2**63 - 1
HIDDEN = "hidden"

SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
)

HTML = "text/html; charset=utf-8"
STATIC = Path(__file__).with_name("static")
_STATIC_FILES = {
    "/static/status.css": ("status.css", "text/css; charset=utf-8"),
    "/static/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),  # asked for by browsers whatever the page says
}

# What each active state means to the person who dropped the document.
_DOING = {
    "queued": "waiting to be sent",
    "submitting": "being handed to iFax",
    "retry_wait": "will be sent again",
    "sending": "iFax is sending it",
}
# With log.file_names: false a rejection's reason may quote a name or sidecar text: its
# code says what kind of problem it is, and `fax-gateway show` has the rest.
_REJECTED = {
    "unsupported_type": "not a PDF, TIFF, PNG or JPEG",
    "empty": "the file is empty",
    "too_large": "too large (size or pages)",
    "no_destination": "no destination: put the document in a folder named after the fax number "
                      "or add a sidecar",
    "invalid_number": "the fax number is not valid",
    "bad_sidecar": "the sidecar is not valid",
    "unsafe_file": "a link or special file, which is never sent",
    "denied_number": "allow/deny refuse the number",
    "unreadable": "the gateway may not read the file",
}
_STATE_LABELS = {"retry_wait": "retry wait"}


# -- escaping -----------------------------------------------------------------------------

class Safe(str):
    """HTML that is already escaped, or written in this module."""


def esc(value: Any) -> Safe:
    """Any value as HTML text: one printable line for names (names.shown: control
    characters and undecodable bytes escaped), then every <, >, &, " and ' escaped."""
    if isinstance(value, Safe):
        return value
    if value is None:
        return Safe("")
    return Safe(html.escape(shown(str(value)), quote=True))


def esc_text(value: Any) -> Safe:
    """Like `esc` for text that may hold line breaks (a cover message): each line alone."""
    return Safe("\n".join(esc(line) for line in str(value).split("\n")))


def markup(template: str, *values: Any) -> Safe:
    """`template` (a literal of this module) with each {} replaced by an escaped value."""
    return Safe(template.format(*(esc(v) for v in values)))


def join(parts: Iterable[Safe], sep: str = "") -> Safe:
    return Safe(sep.join(esc(p) for p in parts))


# -- the routes ---------------------------------------------------------------------------

def status_server(service: Any, host: str, port: int, *, max_connections: int | None = None) -> WebServer:
    """The listener of `http.status_listen`, not started.  `service` is the daemon's
    Service: its config, store, outboxes, paused outboxes and health() are read."""
    return WebServer(host, port, status_routes(service), setting="http.status_listen",
                     max_connections=max_connections, headers=SECURITY_HEADERS)


def status_routes(service: Any) -> Routes:
    """GET /, /?q=, /jobs/<id> and the static files; the listener adds SECURITY_HEADERS."""

    def front(request: Request) -> Response:
        query = _query(request.query)
        return _page(200, StatusPage(service, query).render())

    def job(request: Request) -> Response:
        page = StatusPage(service, "")
        job_id = _job_id(request.path[len("/jobs/"):])
        if job_id is None:
            return _page(404, page.not_found("That is not a job number."))
        try:
            return _page(200, page.render_job(job_id))
        except JobNotFound:
            return _page(404, page.not_found(f"There is no job {job_id}: it may have been removed by "
                                             "retention, or the number is mistyped."))

    routes = [Route("/", {"GET": front}), Route("/jobs/", {"GET": job}, tail=lambda _rest: True)]
    for path, (name, content_type) in _STATIC_FILES.items():
        routes.append(Route(path, {"GET": _static(STATIC / name, content_type)}))
    return Routes(routes)


def _static(path: Path, content_type: str) -> Callable[[Request], Response]:
    body = path.read_bytes()  # read once, at start: the page never depends on the disk

    def serve(_request: Request) -> Response:
        return Response(200, body, content_type)
    return serve


def _page(status: int, body: str) -> Response:
    return Response(status, body.encode("utf-8"), HTML)


def _query(query: str) -> str:
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("q", [""])
    return values[0].strip()[:MAX_QUERY]


def _job_id(text: str) -> int | None:
    """ASCII digits only, as the command line's job ids (cli._job_id)."""
    text = text.strip().removeprefix("#")
    if not text or len(text) > 19 or not all("0" <= c <= "9" for c in text):
        return None
    value = int(text)
    return value if 0 < value <= MAX_JOB_ID else None


# -- times ----------------------------------------------------------------------------------

def _local(iso: str | None, *, seconds: bool = False) -> Safe:
    """An ISO time of a result document as the server's local time, for people."""
    if not iso:
        return Safe("")
    when = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    text = when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return markup('<time datetime="{}">{}</time>', iso, text)


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


# -- the page -------------------------------------------------------------------------------

class StatusPage:
    """One answer: reads what it shows once, then renders it."""

    def __init__(self, service: Any, query: str) -> None:
        self.service = service
        self.query = query
        self.file_names: bool = service.config.log.file_names
        store = service.store
        if store is None:
            raise RuntimeError("the database is not open")
        self.store = store

    # -- whole pages ----------------------------------------------------------------

    def render(self) -> str:
        ok, health = self.service.health()
        parts = [self._health(ok, health)]
        if self.query:
            jobs, searched = self.search(self.query)
            parts.append(self._results(jobs, searched))
        else:
            parts.append(self._outboxes(health))
            recent = markup('Recent jobs <span class="hint">the last {}, newest first</span>', RECENT)
            parts.append(self._jobs_table(self.store.list_jobs(limit=RECENT), recent,
                                          "No job yet: documents dropped into an outbox appear here."))
            parts.append(self._totals())
        title = "fax-gateway: all is well" if ok else "fax-gateway: needs attention"
        return self._document(title, join(parts))

    def render_job(self, job_id: int) -> str:
        job = self.store.get_job(job_id)
        doc = job_document(job, self.store.events(job_id))
        return self._document(f"fax-gateway: job {job_id} {doc['state']}", self._job(job, doc))

    def not_found(self, sentence: str) -> str:
        body = markup('<nav class="crumbs"><a href="/">&larr; All jobs</a></nav>'
                      '<section class="card"><h1>Not found</h1><p>{}</p></section>', sentence)
        return self._document("fax-gateway: not found", body)

    def _document(self, title: str, live: Safe) -> str:
        now = time.localtime()
        footer = markup('<footer>Updated <time id="updated">{}</time> &middot; times are the server\'s '
                        '({}) &middot; this page refreshes itself every {} s</footer>',
                        time.strftime("%H:%M:%S", now), time.strftime("%Z", now), REFRESH_SECONDS)
        return markup(
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="referrer" content="no-referrer">\n'
            '<title>{}</title>\n'
            '<link rel="stylesheet" href="/static/status.css">\n'
            '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">\n'
            '<script src="/static/status.js" defer></script>\n'
            '<noscript><meta http-equiv="refresh" content="30"></noscript>\n'
            '</head>\n<body>\n'
            '<header class="top"><a class="brand" href="/">fax-gateway</a>'
            '<form class="search" action="/" method="get" role="search">'
            '<input type="search" name="q" value="{}" maxlength="{}" '
            'placeholder="File name, fax number or job" aria-label="Find a job by file name, fax number or '
            'job number"><button type="submit">Find</button></form></header>\n'
            '<p id="stale" class="stale" hidden>The gateway does not answer: what you see may be out of '
            'date.</p>\n'
            '<main id="live" data-refresh="{}">\n{}\n{}\n</main>\n</body>\n</html>\n',
            title, self.query, MAX_QUERY, REFRESH_SECONDS * 1000, live, footer)

    # -- health ---------------------------------------------------------------------

    def _health(self, ok: bool, health: dict[str, Any]) -> Safe:
        parts = []
        if health.get("simulated"):
            parts.append(Safe('<p class="note">Simulated: faxes go to the built-in iFax simulator; '
                              'nothing is really sent.</p>'))
        if ok:
            parts.append(Safe('<section class="health ok"><h1>All is well</h1><p>The gateway is watching '
                              'its outboxes and sending.</p></section>'))
        else:
            paused = set(self.service.paused.values())
            items = [markup('<li>{}<span class="fix">{}</span></li>', reason, _advice(reason, paused))
                     for reason in health.get("reasons", [])]
            parts.append(markup('<section class="health bad"><h1>Needs attention</h1>'
                                '<ul class="problems">{}</ul></section>', join(items)))
        for held in health.get("rate_limited", []):
            parts.append(markup('<p class="note">Outbox {}: {} (until {}).</p>', held["outbox"],
                                held["reason"], _local(held["until"])))
        parts.append(self._blocked(health.get("blocked", {})))
        return join(parts)

    def _blocked(self, blocked: dict[str, Any]) -> Safe:
        count = blocked.get("count", 0)
        if not count:
            return Safe("")
        items = []
        for b in blocked.get("items", []):
            if self.file_names:
                what = markup('<code>{}</code><span class="fix">{}</span>', b["item"], b["reason"])
            else:
                what = Safe(f'{HIDDEN} <span class="fix">log.file_names is false: <code>fax-gateway jobs '
                            '--blocked</code> shows what and why</span>')
            items.append(markup('<li><span class="where">{} &middot; {}</span> {}</li>', b["outbox"],
                                b["stage"], what))
        more = count - len(items)
        tail = markup('<p>&hellip; and {} more: <code>fax-gateway jobs --blocked</code> lists them '
                      'all.</p>', f"{more:,}") if more > 0 else Safe("")
        return markup('<section class="card blocked"><h2>{}</h2><p>A blocked item stays where it is and '
                      'nothing of it is sent; the gateway tries again by itself. Fix what the sentence says.'
                      '</p><ul class="items">{}</ul>{}</section>', f"Blocked: {_count(count, 'item')}",
                      join(items), tail)

    # -- outboxes and counts ----------------------------------------------------------

    def _outboxes(self, health: dict[str, Any]) -> Safe:
        active = self.store.active_counts_by_outbox()
        blocked: dict[str, int] = {}
        for (outbox, _stage), n in self.store.count_blocked().items():
            blocked[outbox] = blocked.get(outbox, 0) + n
        held = {h["outbox"]: h for h in health.get("rate_limited", [])}
        names = list(self.service.outboxes)
        names += sorted(n for n in active if n not in self.service.outboxes)  # removed by a reload
        rows = []
        for name in names:
            if name in self.service.paused:
                status = markup('<span class="badge bad">paused</span> <span class="why">{}</span>',
                                self.service.paused[name])
            elif name not in self.service.outboxes:
                status = Safe('<span class="badge muted">removed</span> <span class="why">no longer in the '
                              'configuration; its jobs finish</span>')
            elif name in held:
                status = Safe('<span class="badge warn">held back</span> <span class="why">'
                              'max_faxes_per_hour reached</span>')
            else:
                status = Safe('<span class="badge ok">running</span>')
            counts = active.get(name, {})
            cells = join(markup('<td data-label="{}" class="num">{}</td>', _STATE_LABELS.get(s, s),
                                f"{counts.get(s, 0):,}") for s in ACTIVE_ORDER)
            rows.append(markup('<tr><th scope="row">{}</th><td data-label="status">{}</td>{}'
                               '<td data-label="blocked" class="num">{}</td></tr>', name, status, cells,
                               f"{blocked.get(name, 0):,}"))
        heads = join(markup('<th scope="col" class="num">{}</th>', _STATE_LABELS.get(s, s))
                     for s in ACTIVE_ORDER)
        return markup('<section class="card"><h2>Outboxes</h2><table class="outboxes"><thead><tr>'
                      '<th scope="col">outbox</th><th scope="col">status</th>{}<th scope="col" class="num">'
                      'blocked</th></tr></thead><tbody>{}</tbody></table></section>', heads, join(rows))

    def _totals(self) -> Safe:
        counts = self.store.count_by_state()
        parts = [markup('<li><span class="badge {}">{}</span> {}</li>', s, _STATE_LABELS.get(s, s),
                        f"{counts.get(s, 0):,}") for s in JOB_STATES]
        return markup('<section class="card"><h2>All jobs in the database</h2><ul class="totals">{}</ul>'
                      '</section>', join(parts))

    # -- jobs -----------------------------------------------------------------------

    def _jobs_table(self, jobs: list[Job], heading: str | Safe, empty: str) -> Safe:
        if not jobs:
            return markup('<section class="card"><h2>{}</h2><p class="empty">{}</p></section>',
                          heading, empty)
        rows = [self._job_row(job, result_document(job)) for job in jobs]
        return markup('<section class="card"><h2>{}</h2><table class="jobs"><thead><tr>'
                      '<th scope="col">job</th><th scope="col">time</th><th scope="col">outbox</th>'
                      '<th scope="col">files</th><th scope="col">to</th>'
                      '<th scope="col" class="num">pages</th>'
                      '<th scope="col">state</th><th scope="col">reason</th></tr></thead><tbody>{}</tbody>'
                      '</table></section>', heading, join(rows))

    def _job_row(self, job: Job, doc: dict[str, Any]) -> Safe:
        files = (join((markup("<span>{}</span>", n) for n in doc["files"]), "<br>")
                 if self.file_names else Safe(HIDDEN))
        to = join((markup("<span>{}</span>", r["to"]) for r in doc["recipients"]), "<br>")
        return markup('<tr class="{}"><td data-label="job"><a href="/jobs/{}">{}</a></td>'
                      '<td data-label="time">{}</td><td data-label="outbox" class="nowrap">{}</td>'
                      '<td data-label="files" class="name">{}</td><td data-label="to" class="nowrap">{}</td>'
                      '<td data-label="pages" class="num">{}</td><td data-label="state">{}</td>'
                      '<td data-label="reason" class="reason">{}</td></tr>',
                      doc["state"], doc["job"], doc["job"], _local(doc["created_at"]), doc["outbox"], files,
                      to or Safe("&ndash;"), job.pages if job.pages is not None else "", _badge(doc["state"]),
                      self._reason(doc, job))

    def _reason(self, doc: dict[str, Any], job: Job) -> Safe:
        state = doc["state"]
        if state == "retry_wait":
            # When, and why the last try failed (iFax's words): the person may fix the number.
            waiting = [r for r in job.recipients if r.state == "retry_wait"]
            at = min((r.next_action_at for r in waiting if r.next_action_at), default=None)
            last = next((r.message for r in waiting if r.message), None)
            when = time.strftime("%H:%M", time.localtime(at)) if at else ""
            return markup('<span class="doing">{}{}</span>{}', _DOING[state], f" at {when}" if when else "",
                          f" (last try: {last})" if last else "")
        if state in _DOING:
            return markup('<span class="doing">{}</span>', _DOING[state])
        if state == "delivered":
            return Safe("")
        if state == "rejected" and not self.file_names:
            code = doc["reason_code"] or "rejected"
            return markup('{}: {} <span class="fix">(details hidden: <code>fax-gateway show {}</code>)'
                          '</span>', code, _REJECTED.get(code, "rejected"), doc["job"])
        return esc(doc["reason"] or state)

    def _job(self, job: Job, doc: dict[str, Any]) -> Safe:
        hidden = not self.file_names
        facts = [("outbox", esc(doc["outbox"])),
                 ("folder", Safe(HIDDEN) if hidden else esc(shown(job.rel_dir) or "(the outbox itself)")),
                 ("files", Safe(HIDDEN) if hidden else
                  markup('<ul class="plain">{}</ul>', join(markup('<li class="name">{}</li>', n)
                                                           for n in doc["files"]))),
                 ("pages", esc(job.pages if job.pages is not None else "")),
                 ("created", _local(doc["created_at"], seconds=True)),
                 ("completed", _local(doc["completed_at"], seconds=True) or Safe("&ndash;")),
                 ("filed in", esc(f"{job.filed_to}/" if job.filed_to else "–"))]
        if doc["simulated"]:
            facts.append(("simulated", Safe("yes: nothing was really faxed")))
        cover = [(label, job.options.get(key)) for key, label in
                 (("reference", "reference"), ("subject", "cover subject"), ("from_name", "cover from"),
                  ("to_name", "cover to"), ("message", "cover message"))]
        for label, value in cover:
            if value:
                facts.append((label, Safe(HIDDEN) if hidden else markup('<span class="text">{}</span>',
                                                                       esc_text(value))))
        if job.options.get("send_at"):
            facts.append(("send at", _local(str(job.options["send_at"]).replace(".000Z", "Z"), seconds=True)))
        dl = join(markup("<dt>{}</dt><dd>{}</dd>", k, v) for k, v in facts)
        reason = self._reason(doc, job)
        head = markup('<nav class="crumbs"><a href="/">&larr; All jobs</a></nav>'
                      '<section class="card job"><h1>Job {} {}</h1>{}<dl class="facts">{}</dl></section>',
                      doc["job"], _badge(doc["state"]),
                      markup('<p class="reason">{}</p>', reason) if reason else Safe(""), dl)
        recips = [markup('<tr><td data-label="to">{}</td><td data-label="state">{}</td>'
                         '<td data-label="attempts" class="num">{}</td><td data-label="iFax job">{}</td>'
                         '<td data-label="pages" class="num">{}</td><td data-label="cost" class="num">{}</td>'
                         '<td data-label="code">{}</td><td data-label="message" class="reason">{}</td></tr>',
                         r["to"], _badge(r["state"]), r["attempts"], r["ifax_job_id"] or "–",
                         _pages(r), "" if r["cost"] is None else f"{r['cost']:.2f}",
                         "" if r["code"] is None else r["code"], r["message"] or "")
                  for r in doc["recipients"]]
        recipients = markup('<section class="card"><h2>Recipients</h2><table class="jobs"><thead><tr>'
                            '<th scope="col">to</th><th scope="col">state</th><th scope="col" class="num">'
                            'attempts</th><th scope="col">iFax job</th><th scope="col" class="num">pages</th>'
                            '<th scope="col" class="num">cost</th><th scope="col">code</th>'
                            '<th scope="col">message</th></tr></thead><tbody>{}</tbody></table></section>',
                            join(recips)) if recips else Safe("")
        events = [markup('<tr><td data-label="time">{}</td><td data-label="what">{}</td>'
                         '<td data-label="recipient">{}</td>'
                         '<td data-label="detail" class="reason">{}</td></tr>',
                         _local(e["at"], seconds=True), e["state"], e["recipient"] or "",
                         self._detail(e)) for e in doc["events"]]
        history = markup('<section class="card"><h2>History</h2><table class="jobs events"><thead><tr>'
                         '<th scope="col">time</th><th scope="col">what</th><th scope="col">recipient</th>'
                         '<th scope="col">detail</th></tr></thead><tbody>{}</tbody></table></section>',
                         join(events))
        return join([head, recipients, history])

    def _detail(self, event: dict[str, Any]) -> Safe:
        """With file_names: false only details that cannot quote a name are shown: those of
        a recipient (numbers, iFax's answers) and a job's final reason (not a rejection's)."""
        detail = event["detail"]
        if not detail:
            return Safe("")
        if self.file_names or event["recipient"] or event["state"] in ("delivered", "failed", "canceled"):
            return esc(detail)
        return Safe(HIDDEN)

    # -- search ---------------------------------------------------------------------

    def search(self, query: str) -> tuple[list[Job], list[str]]:
        """Jobs matching `query`, newest first, and what was looked for (in words).

        - a job number (`12` or `#12`): that job;
        - a fax number, in any form the outboxes accept (`+1 555 123-4567`, `00 44 ...`, a
          national number in an outbox's `country`): the newest jobs sent to it (index);
        - a file name typed whole, as written: the newest jobs named after it (index), in
          the whole history;
        - part of a file name, in any case: among the newest NAME_SEARCH_WITHIN jobs.
        File names are not searched with `log.file_names: false`."""
        ids: set[int] = set()
        searched = []
        job_id = _job_id(query)
        if job_id is not None:
            ids |= self.store.existing_job_ids([job_id])
            searched.append(f"job {job_id}")
        if numbers.is_number_folder(query):
            found = set()
            for country in sorted({ob.country for ob in self.service.config.outboxes}):
                try:
                    found.add(numbers.normalize(query, country))
                except Rejected:
                    continue
            for number in sorted(found):
                ids.update(self.store.job_ids_by_number(number, RECENT))
                searched.append(f"fax number {number}")
        if self.file_names:
            ids.update(self.store.job_ids_by_name(query, RECENT))
            ids.update(self.store.job_ids_by_name_part(query, within=NAME_SEARCH_WITHIN, limit=RECENT))
            searched.append(f"file names: “{query}” in every job, a part of it in the newest "
                            f"{NAME_SEARCH_WITHIN:,} jobs")
        newest = sorted(ids, reverse=True)[:RECENT]
        return self.store.jobs_by_ids(newest), searched

    def _results(self, jobs: list[Job], searched: list[str]) -> Safe:
        heading = f"{_count(len(jobs), 'job')} found for “{self.query}”" + (
            f" (the newest {RECENT})" if len(jobs) >= RECENT else "")
        how = markup('<p class="how">Looked for {}. <a href="/">Show the last {} jobs</a></p>',
                     "; ".join(searched) or "nothing (file names are hidden)", RECENT)
        table = self._jobs_table(jobs, heading, "No job matches. A fax number may be written in any "
                                 "form; a file name is found whole in every job, or by a part of it "
                                 "in recent ones.")
        return join([table, how])


def _badge(state: str) -> Safe:
    return markup('<span class="badge {}">{}</span>', state, _STATE_LABELS.get(state, state))


def _pages(r: dict[str, Any]) -> str:
    if r["transferred_pages"] is not None and r["pages"] is not None:
        return f"{r['transferred_pages']}/{r['pages']}"
    return "" if r["pages"] is None else str(r["pages"])


def _advice(reason: str, paused: set[str]) -> str:
    """What a person can do about a problem /healthz reports, in one sentence."""
    if reason.startswith("iFax refuses the account"):
        return ("Check the API key and the account's balance in the iFax dashboard; sending resumes by "
                "itself within a minute once iFax accepts the account again. Nothing is lost meanwhile.")
    if reason in paused:
        return ("Nothing is taken from this outbox or filed into its folders until the folder is back "
                "(create it again, or mount the share); it resumes by itself. Nothing is lost meanwhile.")
    if "database" in reason:
        return "Look at the daemon's log (journalctl -u fax-gateway) and restart it once the cause is fixed."
    return "Look at the daemon's log (journalctl -u fax-gateway); systemd restarts a daemon that hangs."
