"""The offline playground driven in a real browser, as a newcomer would use it.

``loracord run`` (no token) runs as a subprocess; Debian's chromium, driven by Playwright,
types the commands into SimCord's page: /help, /session new, a refused upload, /data add,
/data report, /train start on the tiny local Llama (``LORACORD_ALLOWED_MODELS`` points the
playground's default text model at it), the progress message changing and the samples
arriving without pressing Refresh, /sample, and /adapter export, whose zip is downloaded and
opened. Every check reads the page (text in the DOM); screenshots of the main moments land in
the test's temporary folder (``SCREENSHOTS``).

Needs Playwright for Python (test extras) and ``/usr/bin/chromium`` (``.ci/run`` installs it):
without them the test fails under CI (``CI=true``) and skips elsewhere, saying what is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from storage.testing import free_port
from tests.conftest import TINY_CORPUS

CHROMIUM = Path(os.environ.get("LORACORD_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ["01-start.png", "02-help.png", "03-session.png", "04-refused-upload.png", "05-data.png",
               "06-report.png", "07-training.png", "08-trained.png", "09-sample.png", "10-export.png", "11-eta.png"]


@pytest.fixture
def sync_playwright():
    """Playwright's sync API and the browser, or a clear fail (CI) / skip (elsewhere) naming what is missing."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("Playwright for Python (`.venv/bin/pip install playwright`, part of the test extras)")
    if not CHROMIUM.exists():
        missing.append(f"Debian's chromium at {CHROMIUM} (`apt-get install -y chromium`; .ci/run installs it)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


@pytest.fixture
def playground(sync_playwright, tmp_path, tiny_llama):
    """``loracord run`` without a token, on a free port, in a fresh folder; yields (url, console log path)."""
    port, log_path = free_port(), tmp_path / "console.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "LORACORD_DISCORD_TOKEN")}
    env.update({
        "LORACORD_DATA_DIR": str(tmp_path / "data"),
        "LORACORD_ALLOWED_MODELS": str(tiny_llama),  # the playground's default text model: a local folder
        "LORACORD_TEXT_TRAIN_DEFAULTS": json.dumps({"seq_len": 64, "batch_size": 2, "max_new_tokens": 8,
                                                    "precision": "fp32", "augment": 0.0}),
        "LORACORD_TRAIN_THREADS": "1", "LORACORD_TRAIN_COOLDOWN_S": "0",
        "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
    })
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "loracord", "run", "--no-open", "--port", str(port)],
                                   cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            found = re.search(r"loracord playground: open (http://127\.0\.0\.1:\d+/#\S+)", log_path.read_text())
            url = found and found.group(1)
        assert url, f"the playground did not start:\n{log_path.read_text()}"
        yield url, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Ctrl+C, as the console says
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def embed_fields(text: str) -> dict[str, str]:
    """An embed's inline fields as the page shows them (a name line, then its value line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    names = ("Status", "Loss", "Validation loss", "ETA")
    return {line: lines[i + 1] for i, line in enumerate(lines[:-1]) if line in names}


class Page:
    """The playground page, driven by a person's moves: type a command, fill its options, press Enter."""

    def __init__(self, page, shots: Path):
        self.page, self.shots = page, shots

    def text(self) -> str:
        return self.page.locator("#channel-message-list").inner_text()

    def message(self, text: str):
        """The newest message in the channel showing ``text``."""
        return self.page.locator("#channel-message-list article.channel-message", has_text=text).last

    def wait_for(self, text: str, timeout_s: float = 60):
        """Wait until the channel shows ``text`` (published by the playground, no Refresh pressed)."""
        message = self.message(text)
        message.wait_for(state="attached", timeout=timeout_s * 1000)
        return message

    def shot(self, name: str, message=None) -> None:
        if message is not None:
            message.scroll_into_view_if_needed()
        self.page.screenshot(path=str(self.shots / name))

    def command(self, invocation: str, options: dict | None = None, files: dict | None = None) -> None:
        """Type ``/invocation``, pick it, fill ``options`` (and attach ``files``), press Enter; wait for the answer."""
        page = self.page
        box = page.locator("#channel-composer-input")
        box.click()
        box.press_sequentially("/" + invocation, delay=30)
        title = page.locator("strong", has_text=re.compile(rf"^/{re.escape(invocation)}$"))
        page.locator(".command-entry", has=title).click()
        for name, value in list((options or {}).items()) + list((files or {}).items()):
            pill = page.locator(f'.command-pill[data-option="{name}"]')
            if not pill.count():  # an optional option: add it from the command's option list
                page.locator(".command-chip").click()
                page.locator(f'.command-suggestion[data-value="{name}"]').click()
            if files and name in files:
                pill.locator("input[type=file]").set_input_files(str(value))
                continue
            field = pill.locator("input.command-option-input")
            field.click()
            field.press_sequentially(str(value), delay=30)
            choice = page.locator(f'.command-suggestion[data-value="{value}"]')
            if choice.count():
                choice.click()
        page.locator(".command-chip").focus()
        page.keyboard.press("Escape")  # close the list of optional options the page may have opened
        try:
            with page.expect_response(lambda r: r.url.endswith("/api/action") and r.request.method == "POST",
                                      timeout=90_000) as sent:
                page.keyboard.press("Enter")
        except Exception:
            page.screenshot(path=str(self.shots.parent / "failure.png"))
            raise AssertionError(f"/{invocation} was not sent; the page says "
                                 f"{page.locator('#action-status').inner_text()!r} (see failure.png)") from None
        receipt = sent.value.json()
        assert (receipt.get("command") or {}).get("invocation") == invocation, receipt
        page.wait_for_function("() => /^Action (completed|was not completed|outcome uncertain)/"
                               ".test(document.querySelector('#action-status').textContent)", timeout=90_000)
        status = page.locator("#action-status").inner_text()
        assert not receipt.get("rejected"), f"/{invocation} was refused by the page: {receipt.get('diagnostics')}"
        if status != "Action completed" or not page.locator("#channel-composer-input").is_visible():
            page.screenshot(path=str(self.shots.parent / "failure.png"))
        assert status == "Action completed", f"/{invocation}: the page says {status!r} (see failure.png)"
        page.locator("#channel-composer-input").wait_for(state="visible")  # the composer is back for the next one


def test_a_newcomer_trains_samples_and_downloads_in_the_browser(sync_playwright, playground, tmp_path):
    url, console = playground
    shots = tmp_path / "screenshots"
    shots.mkdir()
    verses = tmp_path / "verses.txt"
    verses.write_text("\n\n".join(f"{line} Verse {i}." for i, line in enumerate(TINY_CORPUS * 3)) + "\n")
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            page.locator("#channel-composer-input").wait_for(state="visible")
            p = Page(page, shots)
            assert page.locator("#channel-name").inner_text() == "training"
            assert "/help" in page.locator("#channel-topic").inner_text()
            p.shot("01-start.png")

            p.command("help")
            p.shot("02-help.png", p.wait_for("How training works here"))
            assert "/session new" in p.text() and "/adapter export" in p.text()

            # The session lives in the channel the page shows: every next command finds it.
            p.command("session new", {"kind": "text", "title": "My verses"})
            p.wait_for("Started public text session #1")
            p.shot("03-session.png", p.wait_for("Welcome to My verses"))

            p.command("data add", files={"file": scan})
            refused = p.wait_for("0 file(s) added, 1 rejected")
            assert "scan.pdf" in refused.inner_text() and "PDF document" in refused.inner_text()
            p.shot("04-refused-upload.png", refused)

            p.command("data add", files={"file": verses})
            added = p.wait_for("1 file(s) added, 0 rejected")
            assert "verses.txt" in added.inner_text() and "24 example(s)" in added.inner_text()
            p.shot("05-data.png", added)

            p.command("data report")
            p.shot("06-report.png", p.wait_for("Report card"))
            assert "24 examples" in p.message("Report card").inner_text()

            # The progress message changes and the samples arrive in the open page, Refresh never pressed.
            p.command("train start", {"steps": 4})
            answer = p.message("Training (text) · job #1")
            progress = page.locator(f'article[data-message-id="{answer.get_attribute("data-message-id")}"]')
            first = progress.inner_text()
            assert "Training (text) · job #1" in first and "100%" not in first
            p.shot("07-training.png", progress)
            p.wait_for("Job #1 finished", timeout_s=240)
            final = progress.inner_text()
            assert final != first and "100%" in final and "step 4/4" in final
            assert "Refresh preview" in page.locator("#refresh").inner_text()  # there, and never clicked
            p.wait_for("Sample #1 (job #1")
            chart = p.wait_for("Loss curve of job #1").locator("img").first
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=chart.element_handle())
            p.shot("08-trained.png", chart)

            p.command("sample", {"prompt": "Once upon a time"})
            sample = p.wait_for("prompt: Once upon a time", timeout_s=120)
            assert re.search(r"Sample #\d+ \(job #1, seed \d+\)", sample.inner_text())
            p.shot("09-sample.png", sample)

            p.command("adapter export")
            exported = p.wait_for("Adapter of job #1")
            p.shot("10-export.png", exported)
            with page.expect_download() as download_info:
                exported.get_by_role("button", name="Download loracord-job-1-adapter.zip").click()
            download = download_info.value
            assert download.suggested_filename == "loracord-job-1-adapter.zip"
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)

            # A longer run: the ETA shows while its steps run, and still after a validation loss arrived.
            p.command("train start", {"steps": 5000})
            p.wait_for("Training (text) · job #3")  # job #2 was the sampling
            long_run = p.message("Training (text) · job #3")
            seen = []  # (validation loss shown, ETA shown) of each running state the page showed
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not any(val for val, _ in seen):
                fields = embed_fields(long_run.inner_text())
                if fields.get("Status") == "running" and "ETA" in fields:
                    seen.append((fields.get("Validation loss", "–") != "–", fields["ETA"]))
                time.sleep(0.5)
            p.shot("11-eta.png", long_run)
            assert seen and all(re.fullmatch(r"\d+s|\d+m \d\ds|\d+h \d\dm", eta) for _, eta in seen), seen
            assert any(val for val, _ in seen), f"no running state with a validation loss was shown: {seen}"
            p.command("train cancel")
            p.wait_for("Job #3 was cancelled", timeout_s=120)
        finally:
            browser.close()

    with zipfile.ZipFile(saved) as archive:
        names = {Path(name).name for name in archive.namelist()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names, names
        config = json.loads(next(archive.read(n) for n in archive.namelist() if n.endswith("adapter_config.json")))
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"]
    assert sorted(p.name for p in shots.iterdir()) == SCREENSHOTS

    # What the console told the newcomer: the address, what to type first, how to stop; no noise.
    said = console.read_text()
    assert "loracord playground: open http://127.0.0.1:" in said and "/help" in said and "Ctrl+C" in said
    for noise in ("PyNaCl", "davey", "Guilds intent", "FutureWarning", "logging in using static token"):
        assert noise not in said, f"console shows {noise!r}:\n{said}"
