"""SPEC 3, `log.file_names: false`: no document name and no sidecar text (cover fields,
reference) reaches the log, in any message; numbers may.  Files with distinctive names
and cover text are delivered, rejected and blocked, and the whole log is searched."""

from __future__ import annotations

import json
import os

from conftest import make_pdf, run_cli, wait_for, without_root_file_access

OTHER_USER = 4242  # owns the folder the gateway's user may not write to

SECRETS = [
    "Smith_John", "referral", "Jones_Mary", "Brown_Alice", "Patients_Ward7",  # names and folders
    "Subject-Oncology-Xq", "Dr-Hartmann-Zz", "Clinic-Wv", "Biopsy-Kq", "Ref-Patient-4711Qz",  # sidecar
    "Subj-Secret-Rj", "Reference-Lost-Qp",
]


def test_no_name_or_cover_text_reaches_the_log(daemon, spool, make_config, simulator):
    cfg = make_config(extra={"log": {"level": "info", "file_names": False},
                             "notify": {"command": "sh -c 'echo cannot read $0 >&2; exit 3'"}})
    d = daemon(cfg, prefix=without_root_file_access()).start()

    ward = spool.folder("Patients_Ward7")  # not a number folder: just a folder
    (ward / "Smith_John_referral.pdf.yaml").write_text(
        "to: '+15551230601'\nsubject: Subject-Oncology-Xq\nfrom_name: Dr-Hartmann-Zz\n"
        "to_name: Clinic-Wv\nmessage: Biopsy-Kq\nreference: Ref-Patient-4711Qz\n")
    (ward / "Smith_John_referral.pdf").write_bytes(make_pdf(1))
    (spool.folder("+15551230602") / "Smith_John_empty_referral.pdf").write_bytes(b"")  # rejected: empty
    (ward / "Jones_Mary_letter.pdf.yaml").write_text(  # rejected: the sidecar's number is local-only
        "to: 555-1234\nsubject: Subj-Secret-Rj\nreference: Reference-Lost-Qp\n")
    (ward / "Jones_Mary_letter.pdf").write_bytes(make_pdf(1))
    locked = spool.folder("+15551230603")
    os.chown(locked, OTHER_USER, OTHER_USER)
    locked.chmod(0o755)
    (locked / "Brown_Alice_referral.pdf").write_bytes(make_pdf(1))  # blocked: the gateway may not move it

    def blocked():
        p = run_cli("jobs", "-c", str(cfg), "--blocked", "--json")
        return json.loads(p.stdout) if p.returncode == 0 else None
    [item] = wait_for(blocked, 15, "the blocked item")
    assert "Brown_Alice" in item["item"]  # the database keeps what the operator needs
    spool.wait_results(1, "sent")
    failed = spool.wait_results(2, "failed")
    assert sorted(r["reason_code"] for r in failed) == ["empty", "invalid_number"]
    os.chown(locked, 0, 0)  # fixed: it is claimed and delivered
    spool.wait_results(2, "sent")
    wait_for(lambda: d.log.read_text(errors="replace").count("notify.command exited with 3") == 2, 10,
             "the notify command's failures (one per rejected job)")
    assert d.terminate() == 0

    log = d.log.read_text(errors="replace")
    leaked = [s for s in SECRETS if s.lower() in log.lower()]
    assert not leaked, f"{leaked} in the log:\n{log}"
    assert "rejected: empty" in log and "blocked (claim)" in log  # the log still says what happened
    assert "notify.command exited with 3" in log
