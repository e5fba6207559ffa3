"""`fax-gateway inspect` says what the daemon will do: a corpus of good, rejected, waiting,
ignored and blocked files is inspected first, then the daemon is started on the same
outbox, and what it does with each file must be what inspect said (SPEC 2, issue 8.1)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import make_pdf, make_png, make_tiff, run_cli, wait_for, without_root_file_access

OTHER_USER = 12345  # owns the folder a scanner made with mode 0755


def _inspect(config: Path, *paths: Path | str, json_out: bool = True):
    args = ["inspect", "-c", str(config), *map(str, paths)]
    proc = run_cli(*args, *(["--json"] if json_out else []))
    return proc, (json.loads(proc.stdout) if json_out and proc.stdout.strip() else None)


def _corpus(spool, tmp_path: Path) -> dict[str, object]:
    """Writes the corpus; returns what the test holds open (a writer still writing)."""
    def put(rel: str, data: bytes | str) -> Path:
        path = spool.outbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    put("+15551230601/good.pdf", make_pdf(2))
    put("letters/letter.pdf", make_pdf(1))
    put("letters/letter.pdf.yaml", "to: '+15551230602'\nsubject: Hello\nreference: ref-42\n")
    put("letters/letter-annex.png", make_png())
    (spool.outbox / "letters/letter.pdf.yaml").write_text(
        "to: '+15551230602'\nsubject: Hello\nreference: ref-42\nfiles: [letter-annex.png]\n")
    later = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    put("later/plan.pdf", make_pdf(1))
    put("later/plan.pdf.yaml", f"to: '+15551230609'\nsend_at: '{later.strftime('%Y-%m-%dT%H:%M:%SZ')}'\n")
    put("+15551230603/empty.pdf", b"")
    put("+15551230604/notes.pdf", "just some text, not a PDF\n")
    put("+15551230605/long.tif", make_tiff(4))
    put("lonely.pdf", make_pdf(1))
    put("555-1234/local.pdf", make_pdf(1))
    put("bad/x.pdf", make_pdf(1))
    put("bad/x.pdf.yaml", "to: [unclosed\n")
    secret = tmp_path / "secret.pdf"
    secret.write_bytes(make_pdf(1))
    (spool.folder("+15551230606") / "link.pdf").symlink_to(secret)
    put("+19005550100/premium.pdf", make_pdf(1))
    put("+15551230610/locked.pdf", make_pdf(1)).chmod(0)
    # ignored: never touched
    put(".hidden.pdf", make_pdf(1))
    put("~lock.pdf", make_pdf(1))
    put("scan.pdf.part", make_pdf(1))
    put("+15551230601/Thumbs.db", "junk")
    put(".dot/inside.pdf", make_pdf(1))
    # blocked: a folder a scanner made, owned by another user, mode 0755
    stuck = spool.folder("+15551230608")
    put("+15551230608/stuck.pdf", make_pdf(1))
    stuck.chmod(0o755)
    os.chown(stuck, OTHER_USER, OTHER_USER)
    # waiting: a writer still holds it open
    writing = open(spool.folder("+15551230607") / "open.pdf", "wb")  # closed by the test
    writing.write(make_pdf(1))
    writing.flush()
    return {"writing": writing, "secret": secret, "stuck": stuck}


EXPECTED = {  # path -> (action, reason_code)
    "+15551230601/good.pdf": ("send", None),
    "letters/letter.pdf": ("send", None),
    "letters/letter.pdf.yaml": ("send", None),
    "letters/letter-annex.png": ("send", None),
    "later/plan.pdf": ("send", None),
    "later/plan.pdf.yaml": ("send", None),
    "+15551230603/empty.pdf": ("reject", "empty"),
    "+15551230604/notes.pdf": ("reject", "unsupported_type"),
    "+15551230605/long.tif": ("reject", "too_large"),
    "lonely.pdf": ("reject", "no_destination"),
    "555-1234/local.pdf": ("reject", "invalid_number"),
    "bad/x.pdf": ("reject", "bad_sidecar"),
    "bad/x.pdf.yaml": ("reject", "bad_sidecar"),
    "+15551230606/link.pdf": ("reject", "unsafe_file"),
    "+19005550100/premium.pdf": ("reject", "denied_number"),
    "+15551230610/locked.pdf": ("reject", "unreadable"),
    "+15551230608/stuck.pdf": ("blocked", None),
    "+15551230607/open.pdf": ("wait", None),
}


def test_inspect_says_what_the_daemon_then_does(daemon, make_config, spool, simulator, tmp_path):
    config = make_config(defaults={"max_pages": 3, "deny": ["+1900"]})
    held = _corpus(spool, tmp_path)
    before = sorted(p for p in spool.outbox.rglob("*"))

    # -- what inspect says -----------------------------------------------------------
    proc, verdicts = _inspect(config, spool.outbox)
    assert proc.returncode == 1, proc.stderr  # some would be rejected or are blocked
    said = {v["path"]: v for v in verdicts}
    assert {p: (v["action"], v["reason_code"]) for p, v in said.items()} == EXPECTED
    good = said["+15551230601/good.pdf"]
    assert good["recipients"] == ["+15551230601"] and good["rule"] == "number folder +15551230601"
    assert good["types"] == ["pdf"] and good["pages"] == 2 and good["sidecar"] is None
    letter = said["letters/letter.pdf"]
    assert letter["recipients"] == ["+15551230602"] and letter["rule"] == "sidecar letter.pdf.yaml"
    assert letter["sidecar"] == "letter.pdf.yaml"
    assert letter["group"] == ["letter.pdf", "letter-annex.png", "letter.pdf.yaml"]
    assert letter["types"] == ["pdf", "png"] and letter["pages"] == 2
    assert letter["options"]["subject"] == "Hello" and letter["options"]["reference"] == "ref-42"
    assert said["later/plan.pdf"]["options"]["send_at"].endswith(".000Z")
    assert said["lonely.pdf"]["waits_first"] and "sidecar_wait" in said["lonely.pdf"]["waits_first"]
    assert "more than" not in said["bad/x.pdf"]["reason"] and "x.pdf.yaml" in said["bad/x.pdf"]["reason"]
    blocked = said["+15551230608/stuck.pdf"]["reason"]
    assert "write permission" in blocked and "cannot write to" in blocked
    assert f"{OTHER_USER}:{OTHER_USER}, mode 0755" in blocked and "default ACL" in blocked
    assert "still being written" in said["+15551230607/open.pdf"]["reason"]

    # ignored files are named one by one; they are not part of a folder's listing
    proc, ignored = _inspect(config, *(spool.outbox / n for n in (".hidden.pdf", "~lock.pdf", "scan.pdf.part",
                                                                  "+15551230601/Thumbs.db",
                                                                  ".dot/inside.pdf")))
    assert proc.returncode == 0, proc.stderr
    assert [v["action"] for v in ignored] == ["ignore"] * 5

    # the text form: one file, the rule and the reason as the result file will say
    proc, _ = _inspect(config, spool.outbox / "+15551230601/good.pdf", json_out=False)
    assert proc.returncode == 0 and "would be sent to +15551230601 (chosen by number folder" in proc.stdout
    assert "type: pdf; pages: 2" in proc.stdout
    proc, _ = _inspect(config, spool.outbox / "+15551230603/empty.pdf", json_out=False)
    assert proc.returncode == 1 and "would be rejected [empty]" in proc.stdout

    # it moved, wrote and sent nothing, and made no database
    assert sorted(p for p in spool.outbox.rglob("*")) == before
    assert not (tmp_path / "jobs.db").exists() and simulator.requests() == []

    # -- what the daemon does ----------------------------------------------------------
    d = daemon(config, prefix=without_root_file_access()).start()
    rejected = {r["_path"].relative_to(spool.failed): r for r in spool.wait_results(9, "failed")}
    sent = wait_for(lambda: [r for r in spool.results("sent")] if len(spool.results("sent")) >= 2 else None,
                    20, "the two good jobs")
    by_file: dict[str, dict] = {}
    for results in (rejected.values(), sent):
        for r in results:
            folder = r["_path"].parent.relative_to(spool.failed if r["state"] != "delivered" else spool.sent)
            primary = r["_path"].name.removesuffix(".result.json")  # a removed link is not in files
            for n in [*r["files"], primary]:
                by_file[str(folder / n) if str(folder) != "." else n] = r
    for path, (action, code) in EXPECTED.items():
        v = said[path]
        if action == "reject":
            r = by_file[path]
            assert (r["state"], r["reason_code"]) == ("rejected", code), path
            assert r["reason"] == v["reason"], path
        elif action == "send" and not path.startswith("later/"):
            r = by_file[path]
            assert r["state"] == "delivered", path
            assert [x["to"] for x in r["recipients"]] == v["recipients"], path
            assert r["recipients"][0]["pages"] == v["pages"], path
    # scheduled: accepted and waiting for its time, to the number inspect named
    jobs = json.loads(run_cli("jobs", "-c", str(config), "--json").stdout)
    [plan] = [j for j in jobs if j["files"][0] == "plan.pdf"]
    assert plan["state"] not in ("rejected", "failed")
    assert [x["to"] for x in plan["recipients"]] == said["later/plan.pdf"]["recipients"]
    # blocked: listed by the daemon, and still where it was
    items = wait_for(lambda: json.loads(run_cli("jobs", "-c", str(config), "--blocked", "--json").stdout),
                     10, "the blocked item")
    assert [b["item"].endswith("+15551230608/stuck.pdf") for b in items] == [True]
    assert (spool.outbox / "+15551230608/stuck.pdf").exists()
    # waiting: still in the outbox while its writer holds it; sent once closed
    assert (spool.outbox / "+15551230607/open.pdf").exists()
    held["writing"].close()
    wait_for(lambda: any(r["files"] == ["open.pdf"] for r in spool.results("sent")), 20, "open.pdf sent")
    # ignored files are untouched
    for n in (".hidden.pdf", "~lock.pdf", "scan.pdf.part", "+15551230601/Thumbs.db", ".dot/inside.pdf"):
        assert (spool.outbox / n).exists(), n
    d.terminate()


def test_the_outboxs_number_and_a_path_outside(make_config, spool, tmp_path):
    config = make_config(outbox={"number": "+15551230620"})
    (spool.outbox / "scan.pdf").write_bytes(make_pdf(1))
    proc, [v] = _inspect(config, spool.outbox / "scan.pdf")
    assert proc.returncode == 0, proc.stderr
    assert v["action"] == "send" and v["recipients"] == ["+15551230620"]
    assert v["rule"] == "the outbox's number (+15551230620)" and v["waits_first"] is None
    elsewhere = tmp_path / "elsewhere.pdf"
    elsewhere.write_bytes(make_pdf(1))
    proc, _ = _inspect(config, elsewhere, json_out=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "elsewhere.pdf is not inside any outbox" in proc.stderr and "Traceback" not in proc.stderr


def test_never_reads_the_key_and_needs_no_database(make_config, spool, tmp_path):
    config = make_config(api={"key": None, "key_file": str(tmp_path / "no-such-credential")})
    folder = spool.folder("+15551230621")
    (folder / "a.pdf").write_bytes(make_pdf(1))
    proc, [v] = _inspect(config, folder / "a.pdf")
    assert proc.returncode == 0, proc.stderr
    assert v["action"] == "send"
    assert not (tmp_path / "jobs.db").exists()


def _set_acl(folder: Path, *, root_perm: int, other_perm: int) -> None:
    """A POSIX access ACL with a named entry for root (what `setfacl -m u:root:...` writes)."""
    import struct
    undefined = 0xFFFFFFFF
    entries = [(0x01, 7, undefined), (0x02, root_perm, 0), (0x04, 5, undefined), (0x10, 7, undefined),
               (0x20, other_perm, undefined)]
    os.setxattr(folder, "system.posix_acl_access",
                struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))


def test_acls_are_judged_as_the_kernel_judges_them(daemon, make_config, spool, simulator):
    """Judged for the service user (here root without its file-access override, owner of the
    database's folder): a named ACL entry beats the mode bits, both ways."""
    config = make_config()
    granted, refused = spool.folder("+15551230631"), spool.folder("+15551230632")
    for folder in (granted, refused):
        (folder / "doc.pdf").write_bytes(make_pdf(1))
        os.chown(folder, OTHER_USER, OTHER_USER)
    _set_acl(granted, root_perm=7, other_perm=5)  # the modes alone would say: others may not write
    _set_acl(refused, root_perm=5, other_perm=7)  # the modes alone would say: others may write
    proc, verdicts = _inspect(config, spool.outbox)
    assert proc.returncode == 1, proc.stderr
    said = {v["path"]: v for v in verdicts}
    assert said["+15551230631/doc.pdf"]["action"] == "send"
    assert said["+15551230632/doc.pdf"]["action"] == "blocked"
    assert "with an ACL" in said["+15551230632/doc.pdf"]["reason"]
    d = daemon(config, prefix=without_root_file_access()).start()
    [result] = spool.wait_results(1, "sent")
    assert result["recipients"][0]["to"] == "+15551230631"
    items = wait_for(lambda: json.loads(run_cli("jobs", "-c", str(config), "--blocked", "--json").stdout),
                     10, "the blocked item")
    assert [b["item"].endswith("+15551230632/doc.pdf") for b in items] == [True]
    d.terminate()
