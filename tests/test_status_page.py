"""The status page (issue 11) without a browser: what it shows, that every value is
escaped, its headers, that it only reads, its search, its cost, and that it is off
unless `http.status_listen` is set.  tests/test_status_browser.py drives it in Chromium."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Daemon, free_port, make_pdf

from gateway import status
from gateway.config import Config, load_config
from gateway.errors import StartupError
from gateway.store import SourceFile, Store
from gateway.web import connection_cap

HOSTILE = "<script>alert(1)</script>\"'&<img src=x onerror=alert(2)><b>"
NAME = "<img src=x onerror=alert(1)>.pdf"
UNDECODABLE = "scan\udcff\x1b[31m<i>.pdf"  # byte 0xFF and an ESC, as os.fsdecode gives them

# Every tag the page's own templates write; anything else would have come from data.
OWN_TAGS = {"html", "head", "meta", "title", "link", "script", "noscript", "body", "header", "a", "form",
            "input", "button", "p", "main", "section", "h1", "h2", "ul", "li", "span", "code", "table",
            "thead", "tbody", "tr", "th", "td", "time", "nav", "dl", "dt", "dd", "footer", "br"}


class Page(HTMLParser):
    """The tags, attributes and text of an answer, as a browser's parser would see them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.feed(text)
        self.close()
        self.text = "".join(self.chunks)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    def assert_only_own_markup(self) -> None:
        for tag, attrs in self.tags:
            assert tag in OWN_TAGS, f"<{tag}> comes from data"
            assert not any(name.startswith("on") for name in attrs), f"<{tag} {attrs}> has a handler"
            if tag == "script":
                assert attrs == {"src": "/static/status.js", "defer": None}
            if tag == "a":
                assert (attrs.get("href") or "").startswith("/")


# -- a store with hostile rows, and the page over it -------------------------------------

class Office:
    """What the status page reads of the daemon's Service: its configuration, its store,
    its outboxes, the paused ones and health().  The real Service is tested below and in
    the browser test; this one lets a test say what health() answers."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.outboxes = {o.name: o for o in config.outboxes}
        self.paused: dict[str, str] = {}
        self.problems: list[str] = []
        self.rate_limited: list[dict[str, Any]] = []

    def health(self) -> tuple[bool, dict[str, Any]]:
        problems = [*self.problems, *self.paused.values()]
        blocked = [{"outbox": b.outbox, "stage": b.stage, "item": b.item, "reason": b.reason}
                   for b in self.store.list_blocked(limit=20)]
        count = sum(self.store.count_blocked().values())
        body: dict[str, Any] = {"status": "ok" if not problems else "unhealthy", "simulated": False,
                                "blocked": {"count": count, "items": blocked}}
        if self.rate_limited:
            body["rate_limited"] = self.rate_limited
        if problems:
            body["reasons"] = problems
        return not problems, body


def _config(tmp_path: Path, **log: Any) -> Config:
    for d in ("outbox", "sent", "failed", "outbox2", "sent2", "failed2"):
        (tmp_path / d).mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "database": str(tmp_path / "jobs.db"), "log": log,
        "http": {"listen": f"127.0.0.1:{free_port()}", "status_listen": f"127.0.0.1:{free_port()}"},
        "outboxes": [{"name": "main", "path": "outbox", "sent": "sent", "failed": "failed"},
                     {"name": "second", "path": "outbox2", "sent": "sent2", "failed": "failed2"}]}))
    path.chmod(0o600)
    return load_config(path)


def add_job(store: Store, name: str, *, number: str = "+15551230100", outbox: str = "main",
            sidecar: str | None = None, options: dict[str, Any] | None = None) -> tuple[int, int]:
    """A job as intake leaves it once accepted (queued); returns (job id, recipient id)."""
    names = [name] + ([sidecar] if sidecar else [])
    job_id = store.record_claim_intent(
        outbox=outbox, outbox_path="/srv/outbox", rel_dir=number, primary=name, simulated=False,
        sources=[SourceFile(n, 1, 10, 1) for n in names], documents=[name], sidecar=sidecar, settled_at=None)
    store.mark_held(job_id)
    store.accept_job(job_id, numbers=[number], options=options or {}, sha256=[None] * len(names), pages=2)
    return job_id, store.get_job(job_id).recipients[0].id


def deliver(store: Store, recipient_id: int) -> None:
    store.record_submit_intent(recipient_id)
    store.mark_submit_accepted(recipient_id, str(5000 + recipient_id), next_poll_at=0)
    store.record_status(recipient_id, new_state="delivered", next_action_at=0, transferred_pages=2, cost=0.2,
                        code=0, message="NORMAL_CLEARING", ifax_status="success", call_start=None,
                        sending_seconds=1, polled_at=0, awaiting_fresh=False)


class StatusSite:
    def __init__(self, office: Office) -> None:
        self.office = office
        self.server = status.status_server(office, "127.0.0.1", 0)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}"
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.client.get(path, params=params or None)

    def page(self, path: str = "/", **params: str) -> Page:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        return Page(response.text)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[StatusSite]:
    sites: list[StatusSite] = []

    def make(**log: Any) -> StatusSite:
        config = _config(tmp_path, **log)
        store = Store(config.database)
        s = StatusSite(Office(config, store))
        sites.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in sites:
        s.close()
        s.office.store.close()


def hostile_office(site_factory: Any, **log: Any) -> tuple[StatusSite, dict[str, int]]:
    """Hostile text in every field the page shows: names, sidecar text, iFax's words,
    a rejection's reason, a blocked item, health's reasons."""
    s = site_factory(**log)
    store = s.office.store
    ids: dict[str, int] = {}
    cover = {"subject": HOSTILE, "from_name": HOSTILE, "to_name": HOSTILE, "message": HOSTILE + "\nline 2",
             "reference": HOSTILE, "callerId": None, "faxQuality": "Standard"}
    ids["failed"], rid = add_job(store, NAME, sidecar=HOSTILE + ".yaml", options=cover)
    store.record_submit_intent(rid)
    store.mark_submit_refused(rid, "iFax says " + HOSTILE, code=HOSTILE)
    ids["rejected"] = store.record_claim_intent(
        outbox="main", outbox_path="/srv/outbox", rel_dir=HOSTILE, primary=UNDECODABLE, simulated=False,
        sources=[SourceFile(UNDECODABLE, 2, 10, 1)], documents=[UNDECODABLE], sidecar=None, settled_at=None)
    store.mark_held(ids["rejected"])
    store.reject_job(ids["rejected"], "bad_sidecar", f"{HOSTILE}.yaml: unknown key {HOSTILE}")
    ids["delivered"], rid = add_job(store, "invoice.pdf", number="+442079460958")
    deliver(store, rid)
    ids["waiting"], _ = add_job(store, HOSTILE + ".pdf", number="+15551230101")
    store.set_blocked(outbox="main", stage="claim", item=f"/srv/outbox/{HOSTILE}.pdf",
                      reason=f"cannot claim {HOSTILE}.pdf: fix the folder's permissions {HOSTILE}")
    s.office.problems.append("iFax refuses the account: " + HOSTILE)
    s.office.paused["second"] = f"outbox second: the outbox folder /srv/{HOSTILE} is missing"
    return s, ids


# -- escaping -------------------------------------------------------------------------------

def test_every_field_is_escaped_and_shown_literally(site):
    s, ids = hostile_office(site)
    front = s.page("/")
    front.assert_only_own_markup()
    text = front.text
    assert NAME in text and HOSTILE + ".pdf" in text
    assert "scan\\xff\\x1b[31m<i>.pdf" in text  # names.shown, then escaped: one printable line
    assert "iFax says " + HOSTILE in text  # the failed job's reason quotes iFax's message
    assert f"{HOSTILE}.yaml: unknown key {HOSTILE}" in text  # the rejection's reason
    assert f"/srv/outbox/{HOSTILE}.pdf" in text and f"permissions {HOSTILE}" in text  # blocked
    assert "iFax refuses the account: " + HOSTILE in text and f"/srv/{HOSTILE} is missing" in text

    job = s.page(f"/jobs/{ids['failed']}")
    job.assert_only_own_markup()
    assert NAME in job.text and HOSTILE + ".yaml" in job.text
    assert job.text.count(HOSTILE) >= 8  # subject, from, to, message, reference, code, message, sidecar
    assert HOSTILE + "\nline 2" in job.text  # a cover message keeps its lines

    rejected = s.page(f"/jobs/{ids['rejected']}")
    rejected.assert_only_own_markup()
    assert HOSTILE in rejected.text and "scan\\xff\\x1b[31m<i>.pdf" in rejected.text

    found = s.page("/", q=HOSTILE)
    found.assert_only_own_markup()
    assert any(tag == "input" and attrs.get("value") == HOSTILE for tag, attrs in found.tags)
    assert f"found for “{HOSTILE}”" in found.text


def test_with_file_names_false_names_and_cover_text_are_hidden(site):
    s, ids = hostile_office(site, file_names=False)
    for path in ("/", f"/jobs/{ids['failed']}", f"/jobs/{ids['rejected']}", f"/jobs/{ids['waiting']}"):
        page = s.page(path)
        page.assert_only_own_markup()
        for secret in (NAME, "invoice.pdf", "scan\\xff", HOSTILE + ".pdf", HOSTILE + ".yaml", "line 2",
                       f"/srv/outbox/{HOSTILE}", f"permissions {HOSTILE}"):
            assert secret not in page.text, (path, secret)
        assert "hidden" in page.text
    front = s.page("/")
    assert f"bad_sidecar: the sidecar is not valid (details hidden: fax-gateway show {ids['rejected']})" \
        in front.text
    assert "fax-gateway jobs --blocked" in front.text
    job = s.page(f"/jobs/{ids['failed']}")
    assert f"Job {ids['failed']}" in job.text and "+15551230100" in job.text  # numbers are not names
    assert "iFax says " + HOSTILE in job.text  # iFax's words quote no name
    # A name cannot be searched for either: the page would tell whether it exists.
    assert "0 jobs found" in s.page("/", q="invoice.pdf").text


# -- headers, methods, answers ------------------------------------------------------------

def test_every_answer_carries_the_security_headers(site):
    s, ids = hostile_office(site)
    answers = [s.get("/"), s.get("/", q="x"), s.get(f"/jobs/{ids['failed']}"), s.get("/jobs/999"),
               s.get("/static/status.css"), s.get("/static/status.js"), s.get("/nowhere"),
               s.client.post("/"), s.client.request("HEAD", "/")]
    for r in answers:
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "default-src 'self'" in csp and "unsafe" not in csp
        assert "style-src 'self'" in csp and "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "base-uri 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/jobs/1", "/static/status.js"])
def test_only_get_and_head_are_answered(site, method, path):
    s = site()
    add_job(s.office.store, "a.pdf")
    before = s.office.store.get_job(1)
    r = s.client.request(method, path, content=b"q=1")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert s.office.store.get_job(1) == before


def test_head_gives_the_headers_without_a_body(site):
    s = site()
    r = s.client.request("HEAD", "/")
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) > 500


@pytest.mark.parametrize("path", ["/jobs/999", "/jobs/0", "/jobs/abc", "/jobs/", "/jobs/1x",
                                  "/jobs/99999999999999999999", "/jobs/%31", "/jobs/1/2"])
def test_an_unknown_job_is_404_with_a_page_that_says_so(site, path):
    s = site()
    add_job(s.office.store, "a.pdf")
    r = s.get(path)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    page = Page(r.text)
    page.assert_only_own_markup()
    assert "Not found" in page.text and "All jobs" in page.text


def test_static_files_have_their_types(site):
    s = site()
    assert s.get("/static/status.css").headers["content-type"] == "text/css; charset=utf-8"
    assert s.get("/static/status.js").headers["content-type"] == "text/javascript; charset=utf-8"
    assert s.get("/static/favicon.svg").headers["content-type"] == "image/svg+xml"
    assert s.get("/favicon.ico").status_code == 200  # browsers ask for it whatever the page says


def test_the_page_has_no_inline_script_or_style_and_fits_a_phone(site):
    s = site()
    r = s.get("/")
    page = Page(r.text)
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in page.tags
    assert "<style" not in r.text and " style=" not in r.text
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{"src": "/static/status.js", "defer": None}]
    assert "<script src=\"/static/status.js\" defer></script>" in r.text  # nothing between the tags
    assert ("link", {"rel": "stylesheet", "href": "/static/status.css"}) in page.tags


# -- what it says ---------------------------------------------------------------------------

def test_health_in_words_with_what_to_do(site):
    s, _ = hostile_office(site)
    text = s.page("/").text
    assert "Needs attention" in text
    assert "Check the API key and the account's balance" in text
    assert "until the folder is back" in text
    assert "Blocked: 1 item" in text
    s.office.problems.clear()
    s.office.paused.clear()
    s.office.rate_limited.append({"outbox": "main", "max_faxes_per_hour": 5, "until": "2030-01-01T00:00:00Z",
                                  "reason": "max_faxes_per_hour (5) reached: its faxes wait"})
    text = s.page("/").text
    assert "All is well" in text and "Needs attention" not in text
    assert "Outbox main: max_faxes_per_hour (5) reached" in text and "held back" in text


def test_each_outbox_shows_its_queue_by_state(site):
    s = site()
    store = s.office.store
    for _ in range(3):
        add_job(store, "q.pdf")
    _, rid = add_job(store, "s.pdf", outbox="second")
    store.record_submit_intent(rid)
    store.mark_submit_accepted(rid, "77", next_poll_at=0)
    s.office.paused["second"] = "outbox second: the sent folder /srv/sent2 is missing"
    page = s.page("/")
    html = s.get("/").text
    assert '<th scope="row">main</th><td data-label="status"><span class="badge ok">running</span></td>' \
           '<td data-label="queued" class="num">3</td>' in html
    assert '<td data-label="sending" class="num">1</td>' in html
    assert "outbox second: the sent folder /srv/sent2 is missing" in page.text
    # Counts kept per state in the database (job_counts), not counted from the jobs.
    assert '<span class="badge queued">queued</span> 3</li>' in html


def test_the_last_jobs_show_time_outbox_files_numbers_pages_state_and_reason(site):
    s, ids = hostile_office(site)
    html = s.get("/").text
    row = html.split(f'<a href="/jobs/{ids["delivered"]}">')[1].split("</tr>")[0]
    assert "invoice.pdf" in row and "+442079460958" in row and ">2</td>" in row and "delivered" in row
    assert "<time datetime=" in row
    row = html.split(f'<a href="/jobs/{ids["waiting"]}">')[1].split("</tr>")[0]
    assert "waiting to be sent" in row
    # At most RECENT rows, newest first.
    for _ in range(status.RECENT + 5):
        add_job(s.office.store, "more.pdf")
    assert s.get("/").text.count('<td data-label="job">') == status.RECENT


# -- search ---------------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["+1 (555) 123-0100", "+15551230100", "555-123-0100", "1 555 123 0100",
                                   "0015551230100"])
def test_search_by_number_in_any_form(site, query):
    s = site()
    a, _ = add_job(s.office.store, "a.pdf", number="+15551230100")
    add_job(s.office.store, "b.pdf", number="+15551230199")
    page = s.page("/", q=query)
    assert f"/jobs/{a}" in s.get("/", q=query).text
    assert "1 job found" in page.text and "fax number +15551230100" in page.text


def test_search_by_job_id(site):
    s = site()
    for _ in range(3):
        add_job(s.office.store, "a.pdf")
    for query in ("2", "#2"):
        html = s.get("/", q=query).text
        assert '<a href="/jobs/2">' in html and '<a href="/jobs/1">' not in html
    assert "0 jobs found" in s.page("/", q="9").text


def test_search_by_whole_name_in_all_history_and_by_part_in_recent_jobs(site, monkeypatch):
    monkeypatch.setattr(status, "NAME_SEARCH_WITHIN", 3)
    s = site()
    old, _ = add_job(s.office.store, "Referral Alvarez.pdf")
    for _ in range(4):
        add_job(s.office.store, "scan.pdf")
    assert f"/jobs/{old}\"" in s.get("/", q="Referral Alvarez.pdf").text  # whole: by index, any age
    assert "0 jobs found" in s.page("/", q="alvarez").text                 # a part: the newest 3 only
    new, _ = add_job(s.office.store, "Referral Alvarez 2.pdf")
    html = s.get("/", q="ALVAREZ").text                                      # any case
    assert f"/jobs/{new}\"" in html and f"/jobs/{old}\"" not in html
    assert "a part of it in the newest 3 jobs" in Page(html).text


def test_search_shows_at_most_the_newest_recent(site):
    s = site()
    for _ in range(status.RECENT + 3):
        add_job(s.office.store, "scan.pdf")
    html = s.get("/", q="scan.pdf").text
    assert html.count('<td data-label="job">') == status.RECENT
    assert f'<a href="/jobs/{status.RECENT + 3}">' in html and '<a href="/jobs/1">' not in html


def test_the_quick_name_check_agrees_with_decoding_every_name():
    """store._names_contain passes over plain rows without decoding: never a row that
    decoding the names would have matched."""
    import json
    import random

    from gateway.names import shown
    from gateway.store import _names_contain

    alphabet = ["a", "B", "x", "0", "8", "7", "f", " ", ".", '"', "\\", "\n", "\b", "\f", "\x7f", "\x1b",
                "ß", "\u212a", "é", "\udcff", "u", "{", ":", "name"]
    rng = random.Random(11)
    for _ in range(4000):
        names = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
                 for _ in range(rng.randint(1, 2))]
        sources = json.dumps([{"name": n, "ino": 1, "size": 2, "mtime_ns": 3} for n in names])
        primary = os.fsencode(names[0])
        shown_names = [shown(n) for n in names]
        needle = rng.choice(["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))),
                             rng.choice(shown_names)[1:3], "x08", "x7f", "ss", "k", "ino", "name"])
        needle = needle.casefold()
        expected = any(needle in n.casefold() for n in shown_names)
        assert _names_contain(needle, sources, primary) == expected, (names, needle)


def test_a_search_that_finds_nothing_says_what_it_looked_for(site):
    s = site()
    page = s.page("/", q="nothing-like-it")
    assert "0 jobs found for “nothing-like-it”" in page.text and "No job matches" in page.text
    assert "Show the last 50 jobs" in page.text


# -- cost -----------------------------------------------------------------------------------

def test_every_question_is_an_index_lookup_or_a_bounded_walk(site):
    """A page must cost the same with 1,000,000 jobs as with 1,000 (benchmarks/status_page.py
    measures it): each query the page asks is planned through an index or the primary key,
    with no sort of the whole history."""
    s = site()
    add_job(s.office.store, "a.pdf")
    conn = s.office.store.conn
    asked: list[str] = []
    with s.office.store._lock:  # no other thread in SQLite meanwhile (see test_dispatch_rounds)
        conn.set_trace_callback(asked.append)
    try:
        for path, params in (("/", {}), ("/", {"q": "+1 555 123 0100"}), ("/", {"q": "a.pdf"}),
                             ("/", {"q": "1"}), ("/jobs/1", {})):
            assert s.get(path, **params).status_code == 200
    finally:
        with s.office.store._lock:
            conn.set_trace_callback(None)
    selects = {q for q in asked if q.lstrip().upper().startswith("SELECT")}
    assert len(selects) >= 8
    for sql in sorted(selects):
        plan = " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
        if "FROM jobs ORDER BY id DESC LIMIT" in sql:  # the newest N: the primary key, backwards
            assert plan == "SCAN jobs" and " LIMIT " in sql
            continue
        if "job_counts" in sql or "FROM blocked" in sql:  # small tables of their own
            continue
        assert "SCAN" not in plan, (sql, plan)
        # Sorting is only ever of one job's rows (or of the 50 shown), never of what a search matched.
        assert "TEMP B-TREE FOR ORDER BY" not in plan or "job_id=" in sql or "job_id IN" in sql \
            or "WHERE id IN" in sql, (sql, plan)


# -- the real daemon ------------------------------------------------------------------------

def _listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on, from /proc (no tool needed)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_status_page_is_off_by_default_and_nothing_else_listens(make_config, tmp_path):
    config = make_config()
    assert "status_listen" not in yaml.safe_load(config.read_text())["http"]
    d = Daemon(config).start()
    assert d.proc is not None
    listen = int(d.url.rsplit(":", 1)[1])
    assert _listening_ports(d.proc.pid) == {listen}
    assert d.terminate() == 0
    port = free_port()
    on = make_config(extra={"http": {"listen": f"127.0.0.1:{free_port()}",
                                     "status_listen": f"127.0.0.1:{port}"}}, name="on.yaml")
    d = Daemon(on).start()
    assert d.proc is not None
    assert _listening_ports(d.proc.pid) == {int(d.url.rsplit(":", 1)[1]), port}
    assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    assert httpx.get(f"{d.url}/").status_code == 404  # never on the port that faces iFax
    assert d.terminate() == 0


def test_a_status_port_that_cannot_be_bound_names_the_key(service, make_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(extra={"http": {"listen": f"127.0.0.1:{free_port()}",
                                             "status_listen": f"127.0.0.1:{port}"}})
        with pytest.raises(StartupError, match=rf"http.status_listen: cannot listen on 127.0.0.1:{port}: "
                                               "another program is already listening"):
            service(config)


def test_the_running_service_shows_its_jobs(service, make_config, spool):
    port = free_port()
    svc = service(make_config(extra={"http": {"listen": f"127.0.0.1:{free_port()}",
                                              "status_listen": f"127.0.0.1:{port}"}}))
    assert svc.status_web is not None and svc.web is not None
    # The two listeners share the connections the descriptor limit allows.
    assert svc.status_web.max_connections + svc.web.max_connections <= max(32, connection_cap())
    assert svc.status_web.max_connections < svc.web.max_connections
    (spool.folder("+15551230100") / "letter.pdf").write_bytes(make_pdf(1))
    spool.wait_results(1, "sent")
    html = httpx.get(f"http://127.0.0.1:{port}/").text
    assert "All is well" in html and "letter.pdf" in html and "delivered" in html
    job = httpx.get(f"http://127.0.0.1:{port}/jobs/1").text
    assert "letter.pdf" in job and "iFax job" in job and "filed" in job
    # The page reads log.file_names at each request: a reload applies it.
    doc = yaml.safe_load(svc.config.path.read_text())
    svc.config.path.write_text(yaml.safe_dump({**doc, "log": {"file_names": False}}))
    assert svc.reload()
    html = httpx.get(f"http://127.0.0.1:{port}/").text
    assert "letter.pdf" not in html and "hidden" in html
