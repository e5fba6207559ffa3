"""Makes docs/status-page.png, the README's picture of the status page (issue 11).

    python docs/screenshot.py [OUT.png [WIDTH]]      # WIDTH 390: as a phone shows it

Runs `fax-gateway run --simulate` on example data in a temporary folder: two outboxes,
faxes that are delivered, one that fails, one still sending, one rejected, and the second
outbox's folder removed so that it is paused; then photographs http.status_listen with
headless Chromium (apt-get install chromium chromium-driver; pip install selenium).
Nothing leaves the machine: the simulator runs inside the daemon.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import free_port, make_pdf, make_png  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WIDTH = 1200

# (outbox, number folder, file name, pages); the simulator decides by the last digits.
DOCUMENTS = [
    ("front-desk", "+1 555 010 4100", "Referral Dr Alvarez.pdf", 2),
    ("front-desk", "+15550104100", "Lab order 2211.pdf", 1),
    ("front-desk", "+44 20 7946 0958", "Invoice 2026-118.pdf", 3),
    ("front-desk", "+15550107666", "Prior authorization - Kim.pdf", 4),   # ...666 fails: USER_BUSY
    ("front-desk", "+15550109888", "Discharge summary.pdf", 5),           # ...888 stays sending
    ("billing", "+49 30 901820", "Statement March.pdf", 1),
    ("billing", "+15550101234", "Remittance advice.pdf", 2),
]


def _outbox(root: Path, name: str) -> dict[str, str]:
    base = root / name
    for sub in ("outbox", "sent", "failed"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return {"name": name, "path": str(base / "outbox"), "sent": str(base / "sent"),
            "failed": str(base / "failed")}


def _wait(what: str, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def main(out: Path, width: int = WIDTH) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="office-") as tmp:
        root = Path(tmp)
        listen, status = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        front, billing = _outbox(root, "front-desk"), _outbox(root, "billing")
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({
            "database": str(root / "jobs.db"),
            "http": {"listen": listen, "status_listen": status},
            "poll": {"interval": "0.5s"},
            "defaults": {"settle": "0.3s", "sidecar_wait": "1s", "resend": {"max": 0}},
            "outboxes": [front, billing],
        }))
        config.chmod(0o600)
        log = open(root / "daemon.log", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config), "--simulate"],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            _wait("the daemon", lambda: _answers(f"http://{listen}/healthz"))
            boxes = {"front-desk": front, "billing": billing}
            for outbox, number, name, pages in DOCUMENTS:
                folder = Path(boxes[outbox]["path"]) / number
                folder.mkdir(exist_ok=True)
                (folder / name).write_bytes(make_pdf(pages))
                time.sleep(0.4)  # a few seconds apart, as people print
            Path(front["path"], "scan-0042.png").write_bytes(make_png())  # no destination: rejected
            _wait("the faxes", lambda: len(list((root / "front-desk").glob("*/**/*.result.json"))) >= 5
                  and len(list((root / "billing" / "sent").rglob("*.result.json"))) >= 2)
            shutil.rmtree(billing["failed"])  # an unmounted share, say: the outbox pauses
            _wait("the paused outbox", lambda: httpx.get(f"http://{listen}/healthz").status_code == 503)

            options = webdriver.ChromeOptions()
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--hide-scrollbars", f"--window-size={width},900", "--force-device-scale-factor=1"):
                options.add_argument(arg)
            options.binary_location = CHROMIUM
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
            try:
                driver.get(f"http://{status}/")
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
                time.sleep(0.5)
                driver.save_screenshot(str(out))
            finally:
                driver.quit()
        finally:
            daemon.terminate()
            daemon.wait(30)
            log.close()
    print(f"wrote {out}")


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "status-page.png",
         int(sys.argv[2]) if len(sys.argv) > 2 else WIDTH)
