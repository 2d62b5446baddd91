"""The whole journey in a real browser: Playwright drives Debian's Chromium.

Sign in, upload a text file through the form, watch the three badges turn done with a
live worker, find the file through search, delete it, and check that another user sees
none of it. Each step leaves a screenshot in ``<artifacts>/browser/`` and the whole run a
Playwright trace (``trace.zip``; open it with ``.venv/bin/playwright show-trace``).

Chromium comes from the distribution (``bin/setup --with-browser``); Playwright never
downloads one. A missing Chromium fails the test unless ``SKIP_BROWSER_TESTS=1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from tests.factories import upload_consumers
from tests.processes import wait_for

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "correct horse battery"  # the ``user`` and ``other_user`` fixtures' password
# A bound on waiting for the live worker, never a timing assertion.
WORKER_WAIT_MS = 60_000
FILE_NAME = "field-notes.txt"
# A word no other text in the pages contains, so a hit can only come from the file.
WORD = "kittiwake"
FILE_TEXT = f"Field notes, cliff path.\nA {WORD} nesting above the puffins.\n".encode()


@pytest.fixture
def system_chromium() -> Path:
    """The distribution's Chromium; checked before the server and worker start."""
    if os.environ.get("SKIP_BROWSER_TESTS") == "1":
        pytest.skip("SKIP_BROWSER_TESTS=1")
    if not os.access(CHROMIUM, os.X_OK):
        # Fail, never skip: CI must not pass without having run the browser test.
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (bin/setup --with-browser, "
            "which bin/test runs) or set SKIP_BROWSER_TESTS=1 to skip the browser test",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
def browser(
    system_chromium: Path, live_server, live_worker, user: User, other_user: User
) -> Iterator[Browser]:
    """A headless system Chromium for one test.

    Function-scoped on purpose: while Playwright's sync API runs, the test thread has a
    running event loop, and Django refuses ORM calls from it (SynchronousOnlyOperation).
    Depending on the database fixtures here makes them set up before and tear down
    (flush) after the browser is gone.
    """
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(system_chromium), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def shots_dir(artifacts_dir: Path) -> Path:
    """Screenshots of this run: emptied once per session, so every case's stay."""
    path = artifacts_dir / "browser"
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.png"):
        old.unlink()
    return path


def new_page(browser: Browser, base_url: str, errors: list[str]) -> Page:
    """A page in a fresh context (its own cookies), failing the test on any script error."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    return page


def sign_in(page: Page, username: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/$"))


def search(page: Page, query: str) -> None:
    page.goto("/search/")
    page.fill("#id_q", query)
    page.press("#id_q", "Enter")
    page.wait_for_url(re.compile(r"/search/\?q="))


def test_upload_badges_search_delete_and_privacy_in_a_real_browser(
    browser: Browser, live_server, shots_dir: Path, tmp_path: Path
) -> None:
    errors: list[str] = []
    alice = new_page(browser, live_server.url, errors)
    alice.context.tracing.start(screenshots=True, snapshots=True)
    try:
        # 1. Sign in.
        sign_in(alice, "alice")
        expect(alice.locator(".signout .who")).to_have_text("alice")
        expect(alice.locator(".empty")).to_contain_text("No uploads yet")
        alice.screenshot(path=shots_dir / "01-signed-in.png", full_page=True)

        # 2. Upload a text file through the form; the script posts it with a progress bar.
        text_file = tmp_path / FILE_NAME
        text_file.write_bytes(FILE_TEXT)
        alice.get_by_role("link", name="New", exact=True).click()
        alice.set_input_files("#id_file", text_file)
        alice.get_by_role("button", name="Upload", exact=True).click()
        item = alice.locator("#upload-list li.upload-item")
        expect(item).to_have_class(re.compile(r"\bdone\b"))
        expect(item.locator("progress")).to_have_js_property("value", 100)
        expect(item.locator(".status")).to_contain_text("Uploaded.")
        upload_id = item.get_attribute("data-upload-id")
        assert upload_id and upload_id.isdecimal()
        expect(item.get_by_role("link", name="Open")).to_have_attribute(
            "href", f"/uploads/{upload_id}/"
        )
        alice.screenshot(path=shots_dir / "02-uploading.png", full_page=True)

        # 3. The list shows the file; its badges turn done as the live worker delivers.
        alice.get_by_role("link", name="See your uploads").click()
        row = alice.locator(f'[data-upload-id="{upload_id}"]')
        expect(row.locator(".upload-name")).to_have_text(FILE_NAME)
        for consumer in upload_consumers():
            expect(row.locator(f'[data-consumer="{consumer}"]')).to_have_attribute(
                "data-state", "done", timeout=WORKER_WAIT_MS
            )
        alice.screenshot(path=shots_dir / "03-badges-done.png", full_page=True)

        # 4. Search finds the file by a word inside it, highlighted.
        search(alice, WORD)
        hit = alice.locator("ol.hits li")
        expect(hit).to_have_count(1)
        expect(hit.get_by_role("link", name=FILE_NAME)).to_have_attribute(
            "href", f"/uploads/{upload_id}/"
        )
        expect(hit.locator("mark").first).to_have_text(re.compile(WORD, re.IGNORECASE))
        alice.screenshot(path=shots_dir / "04-search.png", full_page=True)

        # Another user, signed in while the file still exists, sees none of it.
        bob = new_page(browser, live_server.url, errors)
        sign_in(bob, "bob")
        assert_sees_nothing_of(bob, "bob", upload_id)

        # 5. Delete it from its page, accepting the confirm() dialog.
        dialogs: list[str] = []

        def accept(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        alice.once("dialog", accept)
        alice.goto(f"/uploads/{upload_id}/")
        alice.get_by_role("button", name="Delete").click()
        alice.wait_for_url(re.compile(r"/$"))
        assert len(dialogs) == 1 and FILE_NAME in dialogs[0]
        expect(alice.locator(".messages")).to_contain_text(f"Deleted “{FILE_NAME}”")
        expect(alice.locator("[data-upload-id]")).to_have_count(0)
        alice.screenshot(path=shots_dir / "05-deleted.png", full_page=True)
        assert alice.goto(f"/uploads/{upload_id}/").status == 404
        # Search forgets the file once the indexing consumer has handled the deletion.
        wait_for(
            lambda: no_match(alice, WORD),
            timeout=WORKER_WAIT_MS / 1000,
            what="the deleted file to leave search",
        )

        # 6. The other user still sees none of it.
        assert_sees_nothing_of(bob, "bob", upload_id)
        search(bob, WORD)
        bob.screenshot(path=shots_dir / "06-second-user.png", full_page=True)
    finally:
        alice.context.tracing.stop(path=shots_dir / "trace.zip")

    assert errors == []


def no_match(page: Page, query: str) -> bool:
    search(page, query)
    return page.locator("ol.hits li").count() == 0


def assert_sees_nothing_of(page: Page, username: str, upload_id: str) -> None:
    """``page``'s user has no trace of the upload: not listed, not found, a 404 by id."""
    page.goto("/")
    expect(page.locator(".signout .who")).to_have_text(username)
    expect(page.locator("[data-upload-id]")).to_have_count(0)
    expect(page.get_by_text(FILE_NAME)).to_have_count(0)
    search(page, WORD)
    expect(page.get_by_text(f"No files match “{WORD}”")).to_be_visible()
    for path in (f"/uploads/{upload_id}/", f"/uploads/{upload_id}/download/"):
        assert page.goto(path).status == 404, path
    states = page.request.get(f"/uploads/states/?ids={upload_id}")
    assert states.ok and states.json() == {}


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def scrolls_sideways(page: Page) -> bool:
    """Whether the page is wider than the viewport (a sideways scrollbar on a phone)."""
    return page.evaluate("document.documentElement.scrollWidth > window.innerWidth")


def test_phone_sized_pages_live_attempts_refused_bar_favicon_and_admin_columns(
    admin_user: User, browser: Browser, live_server, live_worker, shots_dir: Path, tmp_path: Path
) -> None:
    errors: list[str] = []
    phone_context = browser.new_context(base_url=live_server.url, viewport=PHONE)
    phone = phone_context.new_page()
    phone.on("pageerror", lambda exc: errors.append(f"{phone.url}: {exc}"))
    phone_context.tracing.start(screenshots=True, snapshots=True)
    try:
        # The worker waits until the detail page is open, so the page sees pending first.
        live_worker.stop()
        sign_in(phone, "alice")
        assert not scrolls_sideways(phone)

        # 1. A good file and a refused (empty) one: the refused bar has its own colour.
        good = tmp_path / "a-rather-long-file-name-from-a-phone-camera-roll-2026-11-26.txt"
        good.write_bytes(FILE_TEXT)
        empty = tmp_path / "empty.txt"
        empty.write_bytes(b"")
        phone.goto("/uploads/new/")
        phone.set_input_files("#id_file", [good, empty])
        phone.get_by_role("button", name="Upload", exact=True).click()
        done_item = phone.locator("#upload-list li.upload-item.done")
        refused_item = phone.locator("#upload-list li.upload-item.error")
        expect(done_item).to_have_count(1)
        expect(refused_item).to_have_count(1)
        expect(refused_item.locator(".status")).to_contain_text("Refused")

        def bar_colour(item) -> str:
            return item.locator("progress").evaluate("e => getComputedStyle(e).accentColor")

        phone.screenshot(path=shots_dir / "phone-01-new.png", full_page=True)
        assert bar_colour(refused_item) != bar_colour(done_item)
        assert not scrolls_sideways(phone)
        upload_id = done_item.get_attribute("data-upload-id")

        # 2. Its page while nothing ran yet: pending, 0 attempts, nothing sideways.
        phone.goto(f"/uploads/{upload_id}/")
        attempts = phone.locator("table.states td.attempts")
        expect(attempts).to_have_text(["0"] * len(upload_consumers()))
        phone.screenshot(path=shots_dir / "phone-02-detail-pending.png", full_page=True)
        assert not scrolls_sideways(phone)

        # 3. The worker starts: states and attempts update live, without a reload.
        live_worker.start()
        for consumer in upload_consumers():
            expect(phone.locator(f'.states [data-consumer="{consumer}"]')).to_have_attribute(
                "data-state", "done", timeout=WORKER_WAIT_MS
            )
        expect(attempts).to_have_text(["1"] * len(upload_consumers()))
        phone.screenshot(path=shots_dir / "phone-03-detail-done.png", full_page=True)
        assert not scrolls_sideways(phone)

        for path in ("/", f"/search/?q={WORD}"):
            phone.goto(path)
            assert not scrolls_sideways(phone), path
        phone.screenshot(path=shots_dir / "phone-04-search.png", full_page=True)

        # 4. Every page has an icon: /favicon.ico answers, and pages link one.
        icon = phone.request.get("/favicon.ico")
        assert icon.ok and icon.headers["content-type"].startswith("image/")
        assert phone.locator('link[rel="icon"]').count() == 1
    finally:
        phone_context.tracing.stop(path=shots_dir / "trace-phone.zip")

    # 5. Admin at 1280 px: the consumer state columns are shown whole, not clipped.
    desk = browser.new_context(base_url=live_server.url, viewport=DESKTOP).new_page()
    desk.on("pageerror", lambda exc: errors.append(f"{desk.url}: {exc}"))
    desk.goto("/admin/login/")
    desk.fill("input[name=username]", "admin")
    desk.fill("input[name=password]", "password")
    desk.get_by_role("button", name="Log in").click()
    for name, path, cell in (
        ("uploads", "/admin/uploads/upload/", "td.field-delivery_states"),
        ("deliveries", "/admin/events/delivery/", "td.field-state"),
    ):
        desk.goto(path)
        expect(desk.locator(cell).first).to_be_visible()
        desk.screenshot(path=shots_dir / f"admin-{name}-1280.png", full_page=True)
        assert not scrolls_sideways(desk), path
        results = desk.locator("#changelist .results")
        assert results.evaluate("e => e.scrollWidth <= e.clientWidth"), path
    desk.goto("/admin/events/event/overview/")
    expect(desk.locator("svg.overview-chart").first).to_be_visible()
    desk.screenshot(path=shots_dir / "admin-overview-1280.png", full_page=True)

    assert errors == []
