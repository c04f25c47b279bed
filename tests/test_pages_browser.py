"""The pages in real Chromium against a real ``icsfeed serve`` (demo config + the lab account)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import expect

if TYPE_CHECKING:  # imported by pytest as a plugin (so its asserts are rewritten), not here
    from browser import Site

pytest_plugins = ["browser"]
pytestmark = pytest.mark.slow  # one server start with a first poll, and a browser, per session


def cell(pg, day, kind: str):  # type: ignore[no-untyped-def]
    return pg.locator(f'td.day[data-date="{day.isoformat()}"] li.kind[data-kind="{kind}"]')


def assert_no_console_errors(pg) -> None:  # type: ignore[no-untyped-def]
    csp = [e for e in pg.errors if "Content Security Policy" in e or "Refused to" in e]
    assert not csp, csp
    assert not pg.errors, pg.errors


def test_hover_shows_the_events_detail_and_the_icon_links_to_the_origin(page, site: Site) -> None:
    page.goto(site.view("lab"))
    backup = cell(page, site.lab.backup_day, "backup")
    icon = backup.locator("a.icon")
    assert icon.get_attribute("href") == "https://origin.example/backups/7"
    pop = backup.locator(".pop")
    assert not pop.is_visible()
    icon.hover()
    pop.wait_for(state="visible")
    assert "snapshot 7 of lab01" in pop.inner_text()
    assert "02:00–02:20" in pop.inner_text()
    assert pop.locator("a.title").get_attribute("href") == "https://origin.example/backups/7"
    assert "backup on" in icon.get_attribute("aria-label")
    assert_no_console_errors(page)


def test_several_events_list_each_as_a_link_with_a_count(page, site: Site) -> None:
    page.goto(site.view("lab"))
    alerts = cell(page, site.lab.alert_day, "alert")
    button = alerts.locator("button.icon")
    day = site.lab.alert_day
    assert button.get_attribute("aria-label") == f"2 alerts on {day.day} {day:%B}"
    assert button.locator(".count").inner_text() == "2"
    button.hover()
    links = alerts.locator(".pop a.title")
    links.first.wait_for(state="visible")
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
        "https://origin.example/alerts/1", "https://origin.example/alerts/2"]
    # click pins the popover; Escape closes it
    button.click()
    assert alerts.get_attribute("class") and "open" in alerts.get_attribute("class")
    assert button.get_attribute("aria-expanded") == "true"
    page.mouse.move(1, 1)
    assert alerts.locator(".pop").is_visible()
    page.keyboard.press("Escape")
    assert not alerts.locator(".pop").is_visible()
    assert button.get_attribute("aria-expanded") == "false"


def test_a_script_title_renders_as_text_and_never_runs(page, site: Site) -> None:
    page.goto(site.view("lab"))
    alerts = cell(page, site.lab.alert_day, "alert")
    alerts.locator("button.icon").hover()
    first = alerts.locator(".pop a.title").first
    first.wait_for(state="visible")
    assert first.inner_text() == site.xss_title
    assert "fired on lab01 <b>not bold</b>" in alerts.locator(".pop").inner_text()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("main script, main img").count() == 0
    assert site.lab_name in page.locator("h1").inner_text()
    assert_no_console_errors(page)


def test_a_javascript_url_is_never_a_link(page, site: Site) -> None:
    page.goto(site.view("lab"))
    ticket = cell(page, site.lab.alert_day, "ticket")
    assert ticket.locator("a").count() == 0
    assert ticket.locator("button.icon").count() == 1
    assert ticket.locator(".pop .title").inner_text() == "#42 javascript link"
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    assert hrefs and not [h for h in hrefs if not re.match(r"^(https?://|webcal://|/|\?|#)", h)], hrefs


def test_next_month_and_recurring_birthdays(page, site: Site) -> None:
    lab = site.lab
    page.goto(site.view("lab"))
    assert cell(page, lab.birthday_day, "birthday").count() == 1
    page.locator("a.month-link.next").click()
    page.wait_for_url(re.compile(rf"month={lab.month_after(1)}"))
    assert cell(page, lab.maintenance_day, "maintenance").count() == 1
    assert page.locator("li.kind[data-kind=alert]").count() == 0
    assert page.locator("li.kind[data-kind=birthday]").count() == 0
    # the birthday comes back on its anniversary, a year on
    page.goto(site.view("lab", lab.month_after(12)))
    anniversary = lab.birthday_day.replace(year=lab.year + 1)
    birthday = cell(page, anniversary, "birthday")
    assert birthday.count() == 1
    assert birthday.locator("a.icon").get_attribute("href") == "https://inventory.example/hosts/lab01"


def test_kind_toggles_hide_icons_and_are_kept_in_the_url(page, site: Site) -> None:
    lab = site.lab
    page.goto(site.view("lab"))
    alerts, ticket = cell(page, lab.alert_day, "alert"), cell(page, lab.alert_day, "ticket")
    assert alerts.is_visible() and ticket.is_visible()
    page.locator('input.kind-toggle[value="alert"]').uncheck()
    assert not alerts.is_visible()
    assert ticket.is_visible()
    assert page.evaluate("location.hash") == "#hide=alert"
    assert page.locator("a.month-link.next").get_attribute("href").endswith("#hide=alert")
    page.reload()
    assert not cell(page, lab.alert_day, "alert").is_visible()
    assert not page.locator('input.kind-toggle[value="alert"]').is_checked()
    page.locator('input.kind-toggle[value="alert"]').check()
    assert cell(page, lab.alert_day, "alert").is_visible()
    assert page.evaluate("location.hash") == ""


def test_keyboard_reaches_an_icon_and_its_popover_opens_on_focus(page, site: Site) -> None:
    page.goto(site.view("lab"))
    for _ in range(80):  # bounded: skip link, nav, toggles, then the first icon
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('icon')"):
            break
    else:
        pytest.fail("Tab never reached an icon")
    focused_pop = page.evaluate("document.activeElement.closest('li.kind').querySelector('.pop').id")
    pop = page.locator(f"#{focused_pop}")
    assert pop.is_visible()
    page.keyboard.press("Escape")
    assert not pop.is_visible()
    page.keyboard.press("Tab")  # moving on reopens nothing stale
    assert_no_console_errors(page)


def test_today_is_marked(page, site: Site) -> None:
    page.goto(site.view("lab"))
    today = page.locator("td.day.today")
    assert today.count() == 1
    assert today.get_attribute("data-date") == site.lab.today.isoformat()
    assert today.get_attribute("aria-current") == "date"
    assert "today" in today.inner_text().lower()


def test_month_view_screenshots_desktop_and_phone(page, site: Site) -> None:
    page.goto(site.view("acme"))
    page.locator("td.today li.kind .icon").first.hover()
    site.screenshot(page, "month-desktop")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(site.view("lab"))
    # on a phone the grid is a list of the days that have something
    assert page.locator("td.day.empty").first.is_hidden()
    assert page.locator(f'td.day[data-date="{site.lab.alert_day.isoformat()}"]').is_visible()
    site.screenshot(page, "month-phone")
    alerts = cell(page, site.lab.alert_day, "alert")
    alerts.locator("button.icon").click()  # a tap: no hover on a phone
    pop = alerts.locator(".pop")
    pop.wait_for(state="visible")
    box = pop.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
    page.screenshot(path=str(site.screenshot_path("month-phone-popover")))
    page.goto(site.view("acme"))
    site.screenshot(page, "month-phone-acme")
    assert_no_console_errors(page)


def test_subscribe_page_links_carry_the_encoded_feed_url(page, site: Site) -> None:
    page.goto(site.base + "/")
    assert page.locator("article.feed-card").count() == len(site.feed_urls)
    for feed_id, url in site.feed_urls.items():
        card = page.locator(f'article.feed-card[data-feed="{feed_id}"]')
        assert card.locator("input.feed-url").input_value() == url
        webcal = re.sub(r"^https?://", "webcal://", url)
        google = card.locator("a[data-client=google]").get_attribute("href")
        assert google.startswith("https://calendar.google.com/calendar/r?cid=webcal%3A%2F%2F")
        assert parse_qs(urlsplit(google).query)["cid"] == [webcal]
        name = card.locator("h2").inner_text()
        for client, host in (("outlook", "outlook.live.com"), ("office", "outlook.office.com")):
            href = card.locator(f"a[data-client={client}]").get_attribute("href")
            parts = urlsplit(href)
            assert (parts.scheme, parts.netloc, parts.path) == ("https", host, "/calendar/0/addfromweb")
            query = parse_qs(parts.query)
            assert query["url"] == [url]
            assert query["name"][0] in name
        assert card.locator("a[data-client=webcal]").get_attribute("href") == webcal
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base)
    page.locator('article.feed-card[data-feed="account/lab"] button.copy').click()
    # the clipboard write resolves asynchronously: wait for the note rather than read it at once
    expect(page.locator('article.feed-card[data-feed="account/lab"] .copied')).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == site.feed_urls["account/lab"]
    site.screenshot(page, "subscribe")
    assert_no_console_errors(page)


def test_status_page_shows_sources_feeds_and_the_failing_one(page, site: Site) -> None:
    page.goto(site.base + "/status")
    broken = page.locator('tr.source[data-source="lab-broken"]')
    assert "bad" in broken.get_attribute("class")
    assert "FAILING" in broken.locator("td.health").inner_text()
    assert "file not found" in broken.locator("td.last-error").inner_text()
    good = page.locator('tr.source[data-source="lab-events"]')
    assert "ok" in good.get_attribute("class").split()
    assert good.locator("td.num").last.inner_text() == "6"
    assert page.locator('tr[data-feed="account/lab"]').count() == 1
    site.screenshot(page, "status")
    assert_no_console_errors(page)


def test_admin_pages_need_the_credentials_over_real_http(site: Site) -> None:
    for path in ("/", "/status", "/metrics"):
        refused = requests.get(site.base + path, timeout=10)
        assert refused.status_code == 401, path
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")
        assert requests.get(site.base + path, auth=(site.admin[0], "wrong"), timeout=10).status_code == 401
        assert requests.get(site.base + path, auth=site.admin, timeout=10).status_code == 200, path
    metrics = requests.get(site.base + "/metrics", auth=site.admin, timeout=10).text
    assert 'icsfeed_source_polls_total{source="lab-events"}' in metrics
    assert re.search(r'icsfeed_source_failures_total\{source="lab-broken"\} [1-9]', metrics)
    assert 'icsfeed_feed_events{feed="account/lab"}' in metrics
    assert re.search(r'icsfeed_http_requests_total\{endpoint="pages.status",status="401"\} [1-9]', metrics)


def test_wrong_token_on_the_view_is_the_feeds_404(site: Site) -> None:
    feed_404 = requests.get(f"{site.base}/feeds/lab.ics?token=wrong", timeout=10)
    assert feed_404.status_code == 404
    for url in (f"{site.base}/view/lab?token=wrong", f"{site.base}/view/lab",
                f"{site.base}/view/nobody?token={site.token('account/lab')}",
                f"{site.base}/view/acme?token={site.token('account/lab')}",
                f"{site.base}/view/team/ops?token=wrong"):
        got = requests.get(url, timeout=10)
        assert (got.status_code, got.content, got.headers["Content-Type"]) == \
               (404, feed_404.content, feed_404.headers["Content-Type"]), url


def test_pages_carry_the_csp_and_work_under_it(page, site: Site) -> None:
    response = page.goto(site.view("lab"))
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    html = page.content()
    assert " style=" not in html and "<script>" not in html.replace("&lt;script&gt;", "")
    # the external script ran (toggles set up the month links) and no CSP violation was logged
    assert page.evaluate("document.querySelectorAll('input.kind-toggle').length") > 0
    page.locator('input.kind-toggle[value="ticket"]').uncheck()
    assert page.evaluate("location.hash") == "#hide=ticket"
    assert_no_console_errors(page)


def test_month_view_offers_the_feed_to_subscribe(page, site: Site) -> None:
    page.goto(site.view("lab"))
    box = page.locator("section.subscribe-box")
    url = site.feed_urls["account/lab"]
    assert box.locator("input.feed-url").input_value() == url
    assert box.locator("a[data-client=webcal]").get_attribute("href") == re.sub(r"^https?://", "webcal://", url)
    feed = requests.get(url, timeout=10)
    assert feed.status_code == 200 and feed.headers["Content-Type"].startswith("text/calendar")
