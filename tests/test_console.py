"""The web console (issue 14), used in a real headless Chromium against a real `zimsend up`.

One stack (`zimsend up --with-simulated-device --allow-insecure-webhooks` on free ports and a
fresh data directory) serves every test; each test opens its own browser context, so each
starts signed out with an empty sessionStorage. Chromium is Debian's (`chromium` on PATH,
installed by `python3 buildtools/run.py test`), driven by Playwright for Python with
`executable_path` (Playwright's own browser download cannot reach the network).

A screenshot of every page is saved under tests/artifacts/console/ (ignored by git). Every
test also fails on any browser console error, which is where CSP violations show.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from _processes import ZIMSEND, Program, start_up

from zimsend.gateway._console import CONTENT_SECURITY_POLICY, console_files
from zimsend.segments import GSM7_BASIC, GSM7_EXTENSION, plan

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent / "artifacts" / "console"
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 375, "height": 740}


# --- the stack and the browser ---------------------------------------------------------------


class Stack:
    def __init__(self, base_url: str, data_dir: Path) -> None:
        self.base_url = base_url
        creds = json.loads((data_dir / "credentials.json").read_text())
        self.client_id: str = creds["client_id"]
        self.api_key: str = creds["api_key"]

    def auth(self, api_key: str | None = None) -> dict[str, str]:
        return {"X-Client-ID": self.client_id, "X-API-Key": api_key or self.api_key}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("console") / "data"
    program, ports = start_up(
        data_dir,
        "--with-simulated-device",
        "--allow-insecure-webhooks",
        pepper="console-test-pepper",
    )
    with program:
        program.wait_until(lambda: "ZimSend is up." in program.output(), timeout=120, what="up")
        yield Stack(f"http://127.0.0.1:{ports['http']}", data_dir)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "Debian's `chromium` is not on PATH: run `python3 buildtools/run.py test` "
            "(it installs it as root) or `apt-get install chromium`."
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root; /dev/shm may be tiny in a CI container.
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


def _first(pattern: str, text: str) -> str:
    """The first match of `pattern` in `text` (there must be one)."""
    found = re.search(pattern, text)
    assert found is not None, f"no {pattern!r} in {text!r}"
    return found[0]


class Console:
    """One browser tab on the console, with what it logged and where it went."""

    def __init__(self, page: Any, stack: Stack) -> None:
        self.page = page
        self.stack = stack
        self.problems: list[str] = []
        self.origins: set[str] = set()
        page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        page.on("request", lambda r: self.origins.add(_first(r"^[a-z]+://[^/]+", r.url)))
        page.on("dialog", lambda dialog: dialog.accept())  # confirmations say yes

    def open(self, hash_path: str = "") -> None:
        self.page.goto(f"{self.stack.base_url}/{hash_path}")

    def sign_in(self, api_key: str | None = None) -> None:
        self.open()
        self.page.get_by_label("Client ID").fill(self.stack.client_id)
        self.page.get_by_label("API key").fill(api_key or self.stack.api_key)
        self.page.get_by_role("button", name="Sign in").click()

    def go(self, section: str) -> None:
        self.page.get_by_role("navigation").get_by_role("link", name=section).click()

    def shot(self, name: str) -> None:
        self.page.wait_for_load_state("networkidle")
        self.page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@pytest.fixture
def console(browser: Any, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Console]:
    options = getattr(request, "param", {})
    context = browser.new_context(
        locale=options.get("locale", "en-US"), viewport=options.get("viewport", DESKTOP)
    )
    tab = Console(context.new_page(), stack)
    yield tab
    context.close()
    assert tab.problems == [], f"browser console errors: {tab.problems}"
    assert tab.origins <= {stack.base_url}, f"requests to other origins: {tab.origins}"


def wait_for(locator: Any, timeout_ms: int = 30_000) -> Any:
    locator.wait_for(timeout=timeout_ms)
    return locator


# --- served at the edge -------------------------------------------------------------------------


def test_the_sign_in_page_is_served_at_root_with_a_strict_policy(stack: Stack) -> None:
    """`/` is the console's index.html; every file has its type and the CSP; /v1 still the API."""
    with httpx.Client(base_url=stack.base_url) as http:
        root = http.get("/")
        assert root.status_code == 200
        assert root.headers["content-type"] == "text/html; charset=utf-8"
        assert root.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert root.headers["x-content-type-options"] == "nosniff"
        assert root.headers["referrer-policy"] == "no-referrer"
        assert '<script type="module" src="/console/app.js">' in root.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", root.text), "inline script in index.html"
        assert " style=" not in root.text
        for url_path, file in console_files().items():
            served = http.get(url_path)
            assert served.status_code == 200, url_path
            assert served.content == file.read_bytes(), url_path
            assert served.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert http.get("/console/app.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/console/console.css").headers["content-type"].startswith("text/css")
        assert http.post("/").status_code != 200  # files are GET/HEAD only
        assert http.get("/v1/auth/test", headers=stack.auth()).json()["success"] is True


def test_the_console_code_builds_no_markup_from_strings_and_credits_its_vendored_file() -> None:
    """Text goes into the DOM as text (dom.js), so API data can never become markup or code."""
    for url_path, file in console_files().items():
        if file.suffix != ".js" or "/vendor/" in url_path:
            continue
        code = file.read_text()
        for risky in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage.setItem(KEY",
        ):
            assert risky not in code, f"{url_path} uses {risky}"
    vendored = (console_files()["/console/vendor/qrcode-generator.mjs"]).read_text()
    assert "Copyright (c) 2009 Kazuhiko Arase" in vendored
    assert "Licensed under the MIT license" in vendored


def test_console_routes_come_before_the_api_catch_all_and_fit_the_direct_response_cap() -> None:
    from zimsend.gateway import build_config

    hcm = build_config(upstreams=("127.0.0.1:1",))["static_resources"]["listeners"][0]
    routes_config = hcm["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    names = [route["name"] for route in routes_config["virtual_hosts"][0]["routes"]]
    console_names = [name for name in names if name.startswith("console:")]
    assert set(console_names) == {f"console:{path}" for path in console_files()}
    assert names.index("server") > max(names.index(name) for name in console_names)
    for route in routes_config["virtual_hosts"][0]["routes"]:
        if route["name"].startswith("console:"):  # served by Envoy: no transcoder, no bucket
            assert set(route["typed_per_filter_config"]) == {
                "envoy.filters.http.grpc_json_transcoder",
                "envoy.filters.http.local_ratelimit",
            }
    largest = max(file.stat().st_size for file in console_files().values())
    assert routes_config["max_direct_response_body_size_bytes"] > largest


# --- sign in ------------------------------------------------------------------------------------


def test_a_wrong_key_shows_the_error_in_words_and_keeps_nothing(console: Console) -> None:
    console.sign_in(api_key="zs_live_not_a_real_key")
    alert = wait_for(console.page.get_by_role("alert"))
    assert "This API key is not valid for this client ID" in alert.inner_text()
    assert console.page.get_by_role("button", name="Sign in").is_visible()
    assert console.page.evaluate("sessionStorage.length") == 0
    console.shot("sign-in-wrong-key")
    console.problems.clear()  # the refused /v1/auth/test request logs a 401: expected


def test_signing_in_keeps_the_key_in_this_tab_only_and_shows_the_overview(
    console: Console, stack: Stack
) -> None:
    console.open()
    console.shot("sign-in")
    console.sign_in()
    wait_for(console.page.get_by_role("heading", name="Overview"))
    wait_for(console.page.locator('[data-count="online"]'))
    assert console.page.locator('[data-count="online"]').inner_text() == "1"
    stored = console.page.evaluate("JSON.stringify(sessionStorage)")
    assert stack.api_key in stored
    assert stack.api_key not in console.page.evaluate("JSON.stringify(localStorage)")
    assert stack.api_key not in console.page.url
    console.shot("overview")
    console.page.get_by_role("button", name="Sign out").click()
    wait_for(console.page.get_by_role("button", name="Sign in"))
    assert console.page.evaluate("sessionStorage.length") == 0


# --- sending ------------------------------------------------------------------------------------


def test_an_sms_sent_from_the_form_reaches_delivered_in_messages(console: Console) -> None:
    console.sign_in()
    console.go("Send")
    page = console.page
    page.get_by_label("To (E.164").fill("+33612345678")
    message = page.get_by_label("Message", exact=True)
    message.fill("Bonjour 👋 depuis la console")
    counter = page.locator("#send-counter")
    assert "UCS-2" in counter.inner_text()
    assert "1 SMS" in counter.inner_text()
    message.fill("x" * 161)
    assert "GSM-7" in counter.inner_text()
    assert "2 SMS" in counter.inner_text()
    message.fill("Hello from the console {ok}")
    assert "29 units" in counter.inner_text()  # { and } cost two septets each
    console.shot("send")
    page.get_by_role("button", name="Send SMS").click()
    queued = wait_for(page.get_by_role("status").filter(has_text="Queued as"))
    message_id = _first(r"msg_[0-9a-f]+", queued.inner_text())

    console.go("Messages")
    row = page.locator(f'tr[data-message-id="{message_id}"]')
    wait_for(row.locator('[data-status="delivered"]'), timeout_ms=60_000)
    console.shot("messages")
    row.get_by_role("link").click()
    wait_for(page.locator('#message-status[data-status="delivered"]'))
    assert "delivered" in page.locator(".timeline").inner_text()
    console.shot("message")


def test_sending_without_a_number_tells_which_field(console: Console) -> None:
    console.sign_in()
    console.go("Send")
    console.page.get_by_label("To (E.164").fill("12")
    console.page.get_by_label("Message", exact=True).fill("hello")
    console.page.get_by_role("button", name="Send SMS").click()
    alert = wait_for(console.page.get_by_role("alert").filter(has_text="E.164"))
    assert "This phone number is not valid" in alert.inner_text()
    console.problems.clear()  # the 400 is logged by the browser


def test_a_csv_file_is_previewed_then_sent_in_bulk_with_a_progress_bar(console: Console) -> None:
    console.sign_in()
    console.go("Send")
    page = console.page
    csv = (
        "to;message\n+33612345001;Premier\n"
        '+33612345002;"Deuxième; avec point-virgule"\n+33612345003;Troisième\n'
    )
    page.get_by_label("CSV file", exact=True).set_input_files(
        files=[{"name": "campaign.csv", "mimeType": "text/csv", "buffer": csv.encode()}]
    )
    preview = wait_for(page.locator("#bulk-preview table"))
    assert "Deuxième; avec point-virgule" in preview.inner_text()
    assert "3 line(s)" in page.locator("#bulk-preview").inner_text()
    page.get_by_role("button", name="Send 3 SMS").click()
    wait_for(page.get_by_role("status").filter(has_text="3 of 3 queued"))
    assert page.locator("#bulk-progress").evaluate("p => [p.value, p.max]") == [3, 3]
    console.shot("send-bulk")


def test_a_scheduled_message_is_cancelled_from_its_page(console: Console) -> None:
    console.sign_in()
    console.go("Send")
    page = console.page
    page.get_by_label("To (E.164").fill("+33612345678")
    page.get_by_label("Message", exact=True).fill("Rappel : rendez-vous demain")
    tomorrow = page.evaluate("""() => {  // datetime-local wants local time, no zone
        const d = new Date(Date.now() + 86400000), p = n => String(n).padStart(2, '0');
        return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}` +
               `T${p(d.getHours())}:${p(d.getMinutes())}`; }""")
    page.get_by_label("Send later").fill(tomorrow)
    page.get_by_role("button", name="Send SMS").click()
    wait_for(page.get_by_role("link", name="See it")).click()
    wait_for(page.locator('#message-status[data-status="queued"]'))
    assert "scheduled for" in page.locator(".timeline").inner_text()
    page.get_by_role("button", name="Cancel this message").click()
    wait_for(page.locator('#message-status[data-status="cancelled"]'))
    assert page.get_by_role("button", name="Cancel this message").count() == 0


def test_a_failed_message_shows_its_error_and_is_resent_from_its_page(
    console: Console, stack: Stack, tmp_path: Path
) -> None:
    """A phone whose every send fails, chosen in the form: the detail shows the failure and
    its code, and Resend queues it again as attempt 2."""
    with httpx.Client(base_url=stack.base_url, headers=stack.auth()) as http:
        phone = http.post("/v1/devices", json={"name": "Broken phone"}).json()
        argv = [
            ZIMSEND,
            "device",
            "run",
            "--pairing",
            phone["pairing_uri"],
            "--backend",
            "simulator",
            "--failure-rate",
            "1",
            "--failure-codes",
            "NO_CREDIT",
            "--journal",
            str(tmp_path / "journal.sqlite3"),
        ]
        with Program(argv, env=dict(os.environ), log_path=tmp_path / "agent.log", name="phone"):
            console.sign_in()
            console.go("Phones")
            card = console.page.locator(f'article[data-device-id="{phone["device_id"]}"]')
            wait_for(card.locator('[data-field="status"][data-status="online"]'), 45_000)
            console.go("Send")
            page = console.page
            page.get_by_label("To (E.164").fill("+33612345678")
            page.get_by_label("Message", exact=True).fill("Ce message échouera")
            page.get_by_label("Phone", exact=True).select_option(phone["device_id"])
            page.get_by_role("button", name="Send SMS").click()
            wait_for(page.get_by_role("link", name="See it")).click()
            wait_for(page.locator('#message-status[data-status="failed"]'), 60_000)
            details = page.locator("section", has_text="Details").inner_text()
            assert "NO_CREDIT" in details
            # What to do, naming the phone (issue 16 item 2).
            assert f"Top up the SIM of phone {phone['device_id']}" in details
            console.shot("message-failed")
            page.get_by_role("button", name="Resend this message").click()
            wait_for(page.get_by_role("status").filter(has_text="Queued again (attempt 2)"))


def test_a_message_held_for_quiet_hours_says_when_it_leaves(console: Console, stack: Stack) -> None:
    """Issue 16 item 4: quiet hours covering the recipient's time now (Paris) hold a normal
    message; its page says so and when it will go."""
    paris = dt.datetime.now(ZoneInfo("Europe/Paris"))
    window = {
        "enabled": True,
        "start": (paris - dt.timedelta(hours=1)).strftime("%H:00"),
        "end": (paris + dt.timedelta(hours=2)).strftime("%H:00"),
    }
    with httpx.Client(base_url=stack.base_url, headers=stack.auth()) as http:
        assert http.patch("/v1/settings", json={"quiet_hours": window}).status_code == 200
        try:
            sent = http.post("/v1/sms/send", json={"to": "+33612345678", "message": "Bonne nuit"})
            assert sent.status_code == 200, sent.text
            console.sign_in()
            wait_for(console.page.get_by_role("navigation"))
            console.open(f"#/messages/{sent.json()['message_id']}")
            held = wait_for(console.page.locator("#message-held"))
            assert "quiet hours of the recipient: leaves at" in held.inner_text()
        finally:
            http.patch("/v1/settings", json={"quiet_hours": {"enabled": False}})


def test_history_filters_and_pages(console: Console, stack: Stack) -> None:
    """25 messages of a campaign, found by their text among the others, 20 to a page."""
    with httpx.Client(base_url=stack.base_url, headers=stack.auth()) as http:
        bulk = http.post(
            "/v1/sms/send-bulk",
            json={
                "recipients": [f"+336123450{i:02d}" for i in range(25)],
                "message": "Soldes d'hiver : -30 % (campagne 7)",
                "scheduled_at": None,
            },
        )
        assert bulk.status_code == 200, bulk.text
    console.sign_in()
    console.go("Messages")
    page = console.page
    page.get_by_label("Text contains").fill("campagne 7")
    page.get_by_role("button", name="Apply filters").click()
    wait_for(page.get_by_text("Page 1 of 2 · 25 in all"))
    assert page.locator("#message-list tbody tr").count() == 20
    page.get_by_role("button", name="Next page").click()
    wait_for(page.get_by_text("Page 2 of 2 · 25 in all"))
    assert page.locator("#message-list tbody tr").count() == 5
    page.get_by_label("Status").select_option("cancelled")
    page.get_by_role("button", name="Apply filters").click()
    wait_for(page.get_by_text("No message matches these filters."))
    page.get_by_label("Status").select_option("")
    page.get_by_label("Number").fill("+33612345007")
    page.get_by_role("button", name="Apply filters").click()
    wait_for(page.get_by_text("Page 1 of 1 · 1 in all"))


def test_the_history_export_downloads_a_complete_csv(console: Console) -> None:
    console.sign_in()
    console.go("Messages")
    with console.page.expect_download() as download:
        console.page.get_by_role("button", name="Download CSV").click()
    path = download.value.path()
    text = Path(path).read_text()
    assert download.value.suggested_filename.endswith(".csv")
    assert text.splitlines()[0].startswith("message_id")
    assert re.search(r"# end of export: \d+ messages", text)


# --- phones, keys, webhooks ---------------------------------------------------------------------


def test_a_phone_added_and_paired_from_its_qr_code_shows_online_by_itself(
    console: Console, tmp_path: Path
) -> None:
    """Add a phone, read its QR code as drawn, pair a simulated phone with what it says: the
    card turns online without a reload (the list refreshes itself)."""
    import zxingcpp

    console.sign_in()
    console.go("Phones")
    page = console.page
    wait_for(page.locator('[data-field="status"][data-status="online"]'))
    page.locator("#phone-name").fill("Kitchen phone")
    page.get_by_role("button", name="Add phone").click()
    qr = wait_for(page.get_by_role("img", name="Pairing QR code for Kitchen phone"))
    uri = page.locator("#pairing-uri").input_value()
    assert uri.startswith("zimsend://pair?")
    # Read the code as drawn: the canvas's pixels, grey, through a real QR reader.
    pixels = qr.evaluate("""canvas => {
        const {data, width, height} = canvas.getContext('2d')
            .getImageData(0, 0, canvas.width, canvas.height);
        const grey = new Uint8Array(width * height);
        for (let i = 0; i < grey.length; i++) grey[i] = data[i * 4];
        let text = ''; for (const b of grey) text += String.fromCharCode(b);
        return {width, height, data: btoa(text)};
    }""")
    grey = base64.b64decode(pixels["data"])
    image = memoryview(grey).cast("B", (pixels["height"], pixels["width"]))
    qr_only = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    found = zxingcpp.read_barcodes(image, formats=qr_only, try_invert=False)
    assert [code.text for code in found] == [uri]
    card = wait_for(page.locator("article.phone", has_text="Kitchen phone"))
    assert card.locator('[data-field="status"]').get_attribute("data-status") == "offline"
    console.shot("phones")
    argv = [
        ZIMSEND,
        "device",
        "run",
        "--pairing",
        found[0].text,
        "--backend",
        "simulator",
        "--journal",
        str(tmp_path / "journal.sqlite3"),
    ]
    with Program(argv, env=dict(os.environ), log_path=tmp_path / "agent.log", name="phone"):
        wait_for(card.locator('[data-field="status"][data-status="online"]'), timeout_ms=45_000)
        assert card.locator('[data-field="status"]').inner_text() == "online"
        console.shot("phones-paired")


def test_a_phone_s_settings_are_saved_its_password_rotated_and_it_is_deleted(
    console: Console, stack: Stack
) -> None:
    with httpx.Client(base_url=stack.base_url, headers=stack.auth()) as http:
        spare = http.post("/v1/devices", json={"name": "Spare phone"}).json()["device_id"]
        console.sign_in()
        console.go("Phones")
        card = wait_for(console.page.locator(f'article[data-device-id="{spare}"]'))
        card.get_by_text("Settings").click()
        card.get_by_label("Daily cap").fill("50")
        card.get_by_label("Pause between SMS").fill("3000")
        card.get_by_label("SMS parts a minute").fill("12")  # the per-SIM budget (issue 16)
        card.get_by_label("Enabled").uncheck()
        card.get_by_role("button", name="Save").click()
        wait_for(console.page.get_by_role("status").filter(has_text="Saved."))
        assert card.locator('[data-field="sent-today"]').inner_text().endswith("/ 50")
        device = http.get(f"/v1/devices/{spare}").json()
        saved = (device["daily_cap"], device["send_interval_ms"], device["enabled"])
        assert saved == (50, 3000, False)
        assert device["parts_per_minute"] == 12
        card.get_by_role("button", name="New password").click()  # confirmed
        rotated = wait_for(console.page.locator("#pairing-uri")).input_value()
        assert f"device_id={spare}" in rotated
        password = console.page.locator("#device-password").input_value()
        assert password
        assert password in rotated
        card.get_by_role("button", name="Delete").click()  # the confirmation is accepted
        wait_for(console.page.get_by_role("status").filter(has_text="Spare phone deleted."))
        assert http.get(f"/v1/devices/{spare}").status_code == 404


def test_a_key_created_in_the_console_works_until_revoked_there(
    console: Console, stack: Stack
) -> None:
    console.sign_in()
    console.go("API keys")
    page = console.page
    page.get_by_label("Name", exact=True).fill("billing app")
    page.get_by_role("button", name="Create key").click()
    secret = wait_for(page.locator("#new-api-key")).input_value()
    assert secret.startswith("zs_live_")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base_url)
    page.get_by_role("button", name="Copy: API key").click()
    wait_for(page.get_by_text("Copied."))
    assert page.evaluate("navigator.clipboard.readText()") == secret
    row = wait_for(page.locator("tr", has_text="billing app"))
    assert f"…{secret[-4:]}" in row.inner_text()
    with httpx.Client(base_url=stack.base_url) as http:
        assert http.get("/v1/auth/test", headers=stack.auth(secret)).status_code == 200
        console.shot("api-keys")
        page.get_by_role("button", name="Revoke key billing app").click()
        wait_for(
            page.locator("tr", has_text="billing app").locator(
                '[data-field="state"]', has_text="revoked"
            )
        )
        refused = http.get("/v1/auth/test", headers=stack.auth(secret))
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "INVALID_API_KEY"


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []  # shared by the server's handler instances

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_webhook_test_from_the_console_is_delivered_and_logged(console: Console) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_port}/zimsend"
        console.sign_in()
        console.go("Webhooks")
        page = console.page
        page.get_by_label("URL (HTTPS)").fill(url)
        page.get_by_role("button", name="Add endpoint").click()
        assert wait_for(page.locator("#webhook-secret-shown")).input_value().startswith("whsec_")
        page.get_by_role("button", name=f"Send a test event to {url}").click()
        event_id = _first(
            r"evt_[0-9a-f]+",
            wait_for(page.get_by_role("status").filter(has_text="Test event")).inner_text(),
        )
        logged = page.locator(f'#webhook-logs tr[data-event-id="{event_id}"]')
        wait_for(logged.locator('[data-field="response-status"]', has_text="200"))
        assert "webhook.test" in logged.inner_text()
        assert any(event.get("event_id") == event_id for event in _Receiver.received)
        console.shot("webhooks")
        page.get_by_role("button", name=f"Delete endpoint {url}").click()  # confirmed
        wait_for(page.locator("#webhook-list").get_by_text("Nothing yet."))
    finally:
        receiver.shutdown()


def test_a_message_page_lists_its_own_webhook_deliveries(console: Console, stack: Stack) -> None:
    """Issue 14's gap closed: the message page shows that message's deliveries (event,
    attempt, result, HTTP status, time, URL) from `/v1/webhooks/logs?message_id=`, not another
    message's, and still links to the whole log."""
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_port}/per-message"
    with httpx.Client(base_url=f"{stack.base_url}/v1", headers=stack.auth(), timeout=15) as http:
        hook = http.post(
            "/webhooks/configure", json={"url": url, "events": ["sms.sent", "sms.delivered"]}
        )
        assert hook.status_code == 200, hook.text
        try:
            ids = [
                http.post("/sms/send", json={"to": to, "message": "Suivi de livraison"}).json()[
                    "message_id"
                ]
                for to in ("+33612345081", "+33612345082")
            ]
            console.sign_in()
            wait_for(console.page.get_by_role("heading", name="Overview"))
            console.open(f"#/messages/{ids[0]}")
            page = console.page
            deliveries = page.locator("#message-webhooks tbody tr")
            for event in ("sms.sent", "sms.delivered"):
                row = deliveries.filter(has_text=event)
                wait_for(
                    row.locator('[data-field="response-status"]', has_text="200"), timeout_ms=90_000
                )
                assert url in row.inner_text()
                assert "delivered" in row.inner_text()  # the result badge

            def events_of(message_id: str) -> set[str]:
                return {
                    e["event_id"]
                    for e in list(_Receiver.received)
                    if e.get("data", {}).get("message_id") == message_id
                }

            deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
            while len(events_of(ids[1])) < 2:
                assert dt.datetime.now(dt.UTC) < deadline, "the other message's two deliveries"
                page.wait_for_timeout(200)
            page.wait_for_timeout(5_500)  # one more refresh of the page's deliveries
            shown = {
                deliveries.nth(i).get_attribute("data-event-id") for i in range(deliveries.count())
            }
            assert shown == events_of(ids[0])
            assert not shown & events_of(ids[1])
            head = page.locator("#message-webhooks thead").inner_text()
            for column in ("Time", "Event", "URL", "HTTP status", "Attempt", "Result"):
                assert column in head
            assert (
                page.get_by_role("link", name="Webhooks").last.get_attribute("href") == "#/webhooks"
            )
            console.shot("message-webhooks")
            page.get_by_label("Language").select_option("fr")
            wait_for(page.get_by_role("heading", name="Livraisons de webhooks"))
            wait_for(page.locator("#message-webhooks thead", has_text="Tentative"))
        finally:
            http.delete(f"/webhooks/{hook.json()['webhook_id']}")
            receiver.shutdown()


# --- languages, keyboard, small screens ---------------------------------------------------------


def test_switching_to_french_translates_the_console_and_is_remembered(console: Console) -> None:
    console.sign_in()
    wait_for(console.page.get_by_role("heading", name="Overview"))
    console.page.get_by_label("Language").select_option("fr")
    wait_for(console.page.get_by_role("heading", name="Vue d’ensemble"))
    assert console.page.evaluate("document.documentElement.lang") == "fr"
    nav = console.page.get_by_role("navigation").inner_text()
    assert "Téléphones" in nav
    assert "Clés d’API" in nav
    console.shot("overview-fr")
    console.page.reload()
    wait_for(console.page.get_by_role("link", name="Envoyer")).click()
    wait_for(console.page.get_by_role("button", name="Envoyer le SMS"))
    console.shot("send-fr")


def test_every_text_exists_in_french_and_english(console: Console) -> None:
    """Same keys in both languages, and every literal key the code asks for is there."""
    console.open()
    console.page.wait_for_load_state("networkidle")
    texts = console.page.evaluate("""async () => {
        const {en} = await import('/console/texts/en.js');
        const {fr} = await import('/console/texts/fr.js');
        return {en: Object.keys(en), fr: Object.keys(fr)};
    }""")
    assert sorted(texts["en"]) == sorted(texts["fr"])
    asked = set()
    for file in console_files().values():
        if file.suffix == ".js":
            asked |= set(re.findall(r"\bt\(\"([\w.]+)\"\s*[,)]", file.read_text()))
    assert asked, 'no t("…") call found'
    assert asked <= set(texts["en"]), asked - set(texts["en"])


@pytest.mark.parametrize("console", [{"locale": "fr-FR"}], indirect=True)
def test_a_french_browser_gets_french_by_default(console: Console) -> None:
    console.open()
    wait_for(console.page.get_by_role("heading", name="Connexion à ZimSend"))
    console.page.get_by_label("Clé d’API").fill("zs_live_wrong")
    console.page.get_by_label("Client ID").fill(console.stack.client_id)
    console.page.get_by_role("button", name="Se connecter").click()
    alert = wait_for(console.page.get_by_role("alert"))
    assert "Cette clé d’API n’est pas valable" in alert.inner_text()
    console.shot("sign-in-fr")
    console.problems.clear()  # the refused request's 401


def test_the_keyboard_alone_signs_in_and_moves_between_pages(console: Console) -> None:
    console.open()
    page = console.page
    wait_for(page.get_by_label("Client ID"))
    page.keyboard.type(console.stack.client_id)  # the client ID field has the focus
    page.keyboard.press("Tab")
    page.keyboard.type(console.stack.api_key)
    page.keyboard.press("Enter")
    wait_for(page.get_by_role("heading", name="Overview"))
    for _ in range(20):  # Tab from wherever the focus is until the Phones link has it
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Phones":
            break
    else:
        pytest.fail("Tab never reached the Phones link")
    page.keyboard.press("Enter")
    wait_for(page.get_by_role("heading", name="Phones", exact=True))
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Tab")  # into the page: the first control of the phone list
    assert page.evaluate("document.getElementById('main').contains(document.activeElement)")


def test_every_form_field_on_every_page_has_a_label(console: Console) -> None:
    console.sign_in()
    wait_for(console.page.get_by_role("heading", name="Overview"))
    for section in ("Messages", "Send", "Phones", "API keys", "Webhooks"):
        console.go(section)
        console.page.wait_for_load_state("networkidle")
        unlabelled = console.page.evaluate("""() => [...document.querySelectorAll(
            'input:not([type=hidden]), select, textarea')]
            .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label'))
            .map(c => c.outerHTML)""")
        assert unlabelled == [], f"{section}: {unlabelled}"


@pytest.mark.parametrize("console", [{"viewport": PHONE}], indirect=True)
def test_every_page_fits_a_375_pixel_wide_screen(console: Console) -> None:
    def fits(what: str) -> None:
        console.page.wait_for_load_state("networkidle")
        width = console.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{what} is {width} px wide"

    console.open()
    wait_for(console.page.get_by_role("button", name="Sign in"))
    fits("the sign-in page")
    console.shot("sign-in-375px")
    console.sign_in()
    wait_for(console.page.get_by_role("heading", name="Overview"))
    for section, name in [
        ("Overview", "overview"),
        ("Messages", "messages"),
        ("Send", "send"),
        ("Phones", "phones"),
        ("API keys", "api-keys"),
        ("Webhooks", "webhooks"),
    ]:
        console.go(section)
        wait_for(console.page.get_by_role("heading", name=section, exact=True))
        fits(section)
        console.shot(f"{name}-375px")
        if section == "Messages":  # and one message's page
            wait_for(console.page.locator("#message-list tbody a").first).click()
            wait_for(console.page.locator("#message-status"))
            fits("a message's page")
            console.shot("message-375px")
            console.page.go_back()


# --- the segment counter is the server's --------------------------------------------------------

SEGMENT_TEXTS = [
    "",
    "Hello",
    "x" * 160,
    "x" * 161,
    "x" * 306,
    "x" * 307,
    "{" * 80,
    "{" * 81,
    "a" + "€" * 80,
    "x" * 152 + "€" + "x" * 10,  # an escape pair at a part boundary
    "é" * 160,  # é is GSM-7
    "ê",  # ê is not
    "Votre code de vérification est : 123456",
    "ç" * 70,  # Ç is GSM-7, ç is not
    "ç" * 71,
    "😀" * 35,
    "😀" * 36,
    "a" + "😀" * 40,  # a surrogate pair at a part boundary
    "🇫🇷" * 20,  # flags: a grapheme of two surrogate pairs
    "e\u0301" * 50,  # e + combining accent
    "👍🏽" * 30,
    "Line\nbreak\r\nand\ttab",
    "[]\\^~|" * 30,
    "Ω" * 161,
    "\f" * 3,
    "x" * 1600,
]


def test_the_live_counter_splits_texts_as_the_server_does(console: Console) -> None:
    """segments.js against zimsend.segments: encoding, units and every part, and the tables."""
    console.open()
    console.page.wait_for_load_state("networkidle")
    result = console.page.evaluate(
        """async (texts) => {
            const s = await import('/console/segments.js');
            return {
                plans: texts.map(t => {
                    const p = s.plan(t);
                    return [p.encoding, p.units, p.parts];
                }),
                basic: [...s.GSM7_BASIC].sort(), extension: [...s.GSM7_EXTENSION].sort(),
            };
        }""",
        SEGMENT_TEXTS,
    )
    assert sorted(result["basic"]) == sorted(GSM7_BASIC)
    assert sorted(result["extension"]) == sorted(GSM7_EXTENSION)
    for text, (encoding, units, parts) in zip(SEGMENT_TEXTS, result["plans"], strict=True):
        expected = plan(text)
        assert (encoding, units, parts) == (expected.encoding, expected.units, expected.parts), text
