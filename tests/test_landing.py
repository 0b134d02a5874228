"""The landing page "/": its content, its escaping, and how a real browser shows it.

The browser test drives Debian's chromium headless against the demo daemon. To refresh the
screenshot in docs/: ``LANDING_SCREENSHOT=docs/landing.png pytest tests/test_landing.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser

from helpers import ROOT, free_port, http_get, need_binary, wait_for

from exporter.appkey import AppKey
from exporter.config import parse_config
from exporter.metrics import Exposition
from exporter.store import AppStatus, AppUsage, Store
from exporter.web.app import WebApp
from exporter.web.landing import human_age, human_bytes, render_landing

EVIL = '<script>alert("x")</script>'


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def page(apps: list[dict], demo: bool = False) -> str:
    config = parse_config(
        {"scaleengine": {"cdn_id": 1, "api_key": "k" * 8, "api_secret": "s" * 8}, "apps": apps},
        env={},
    )
    names = [AppKey("1", a["name"]) for a in apps]  # the single form's account: its cdn_id
    store = Store(names)
    store.publish(
        names[0],
        AppUsage(names[0], "2026-11-28", 0.0, (), 850_000_000, 10, 3, month_bytes=12 * 10**12),
        AppStatus(names[0], polled=True, up=True, last_success=1000.0, poll_duration=0.25),
    )
    if len(names) > 1:
        store.publish(
            names[1],
            None,
            AppStatus(names[1], polled=True, up=False, last_error=f"http_status: {EVIL}"),
        )
    expo = Exposition(store, "UTC", {}, process_metrics=False)
    web = WebApp(expo, store, lambda: True, config=config, demo=demo)
    return render_landing(web.landing_view(), now=1125.0)


def test_budgets_percent_interval_age_and_banner():
    text = page(
        [
            {"name": "news", "daily_bytes_budget": "1GB", "monthly_bytes_budget": "10TB"},
            {"name": "sport"},
        ],
        demo=True,
    )
    assert "850 MB" in text and "85.0% of 1 GB" in text  # decimal, as budgets are written
    assert "12 TB" in text and "120.0% of 10 TB" in text and 'class="over"' in text
    assert "5 min" in text  # the default poll.interval
    assert "2 min ago" in text  # 125 s since the last success
    assert "Demo mode" in text
    assert "Demo mode" not in page([{"name": "news"}])


def test_every_server_text_is_escaped():
    text = page([{"name": "news"}, {"name": EVIL}])
    parser = Tags()
    parser.feed(text)
    assert "script" not in parser.tags
    assert any(EVIL in t for t in parser.text), "shown as text"
    assert text.count("&lt;script&gt;") == 2  # the app name and its error


def test_each_row_names_its_account_escaped():
    """Two accounts with the same app name: two rows, each with its account (escaped)."""
    keys = [AppKey(EVIL, "news"), AppKey("partner", "news")]
    store = Store(keys)
    for key in keys:
        store.publish(key, None, AppStatus(key, polled=True, up=True))
    expo = Exposition(store, "UTC", {}, process_metrics=False)
    text = render_landing(WebApp(expo, store, lambda: True).landing_view(), now=1125.0)
    parser = Tags()
    parser.feed(text)
    assert "script" not in parser.tags and "<th>Account</th><th>App</th>" in text
    assert "<tr><td>partner</td><td>news</td>" in text
    assert "<tr><td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</td><td>news</td>" in text


def test_units():
    assert human_bytes(999) == "999 B" and human_bytes(500e9) == "500 GB"
    assert human_bytes(1.5e12) == "1.5 TB"
    assert human_age(10) == "10 s" and human_age(600) == "10 min" and human_age(7500) == "2 h 5 min"


def _chromium(*args: str, profile) -> subprocess.CompletedProcess:
    binary = need_binary("chromium", "chromium")
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_landing_page_in_headless_chromium(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--demo", "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
    )  # fmt: skip
    try:

        def ready():
            try:
                if http_get(url + "-/ready", timeout=2)[0] != 200:
                    return False
                return b"% of" in http_get(url, timeout=2)[2]  # a month total is in, too
            except OSError:
                return False

        wait_for(ready, 60, "every demo app polled")
        dom = _chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        for app in ("demo-origin", "live-events", "vod-library"):
            assert f"<td>{app}</td>" in dom.stdout
        assert "Demo mode." in dom.stdout and "% of" in dom.stdout
        assert '<td class="ok">ok</td>' in dom.stdout
        shot = tmp_path / "landing.png"
        result = _chromium(
            f"--screenshot={shot}", "--window-size=1280,470", "--hide-scrollbars", url,
            profile=tmp_path / "profile-shot",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        target = os.environ.get("LANDING_SCREENSHOT")
        if target:
            shutil.copy(shot, ROOT / target)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
