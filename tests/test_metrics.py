"""The exposition: stored usage part + live part, formats, gzip, and equivalence with
what prometheus_client itself renders for the same data."""

from __future__ import annotations

import gzip
import os
from dataclasses import replace

import pytest
from helpers import promtool_check_metrics, samples
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from exporter.appkey import AppKey
from exporter.metrics import Exposition, WorkerCollector, negotiate, usage_families
from exporter.store import AppStatus, AppUsage, DiscoveryState, Store

# an account name with the characters a label value escapes (a quote, a backslash)
ACC = 'prod "eu"\\1'


def K(app: str) -> AppKey:
    return AppKey(ACC, app)


WEIRD = ['quote"d', "back\\slash", "new\nline", "café/ü/日本.mp4", "emoji-🎬", "plain.mp4"]


def usage(app: str, n: int = 5, day: str = "2026-11-26") -> AppUsage:
    videos = tuple((WEIRD[i % len(WEIRD)] + str(i), 1000 * (n - i) + 7, 3 * i) for i in range(n))
    return AppUsage(
        key=K(app),
        day=day,
        day_end=1_796_256_000.0,
        videos=videos,
        day_bytes=sum(v[1] for v in videos),
        day_requests=sum(v[2] for v in videos),
        day_videos=n,
        month_bytes=10**12 + 1,
        month_requests=5,
        previous_day_bytes=None if app.endswith("2") else 42,
    )


def reference_render(store: Store, budgets) -> bytes:
    """The same stored data rendered by prometheus_client's own exposition code."""
    families = {f.name: f for f in usage_families("UTC")}

    class Ref:
        def collect(self):
            view = store.view()
            out = []
            for name, fam in families.items():
                labels = ["account", "app", "video_url"] if fam.per_video else ["account", "app"]
                g = GaugeMetricFamily(name, fam.help, labels=labels)
                for key in sorted(view.usage):
                    u = view.usage[key]
                    if fam.per_video:
                        for url, b, r in u.videos:
                            value = b if name.endswith("bytes") else r
                            g.add_metric([key.account, key.app, url], value)
                        continue
                    value = {
                        "scaleengine_vse_app_day_bytes": u.day_bytes,
                        "scaleengine_vse_app_day_requests": u.day_requests,
                        "scaleengine_vse_app_day_videos": u.day_videos,
                        "scaleengine_vse_app_month_bytes": u.month_bytes,
                        "scaleengine_vse_app_month_requests": u.month_requests,
                        "scaleengine_vse_app_previous_day_bytes": u.previous_day_bytes,
                        "scaleengine_vse_app_day_end_timestamp_seconds": u.day_end,
                    }.get(name)
                    if value is not None:
                        g.add_metric([key.account, key.app], value)
                for key, (daily, monthly) in budgets.items():
                    if name == "scaleengine_vse_app_day_bytes_budget" and daily is not None:
                        g.add_metric([key.account, key.app], daily)
                    if name == "scaleengine_vse_app_month_bytes_budget" and monthly is not None:
                        g.add_metric([key.account, key.app], monthly)
                out.append(g)
            return out

    reg = CollectorRegistry()
    reg.register(Ref())
    return generate_latest(reg)


@pytest.fixture
def store():
    s = Store([K("app1"), K("app2"), K("app3")])
    s.publish(K("app1"), usage("app1", 6), AppStatus(K("app1"), polled=True, up=True))
    s.publish(K("app2"), usage("app2", 3), AppStatus(K("app2"), polled=True, up=False))
    return s


BUDGETS = {K("app1"): (500 * 10**9, 2 * 2**40), K("app3"): (None, 10**12)}


def test_stored_part_means_what_prometheus_client_renders(store):
    expo = Exposition(store, "UTC", BUDGETS, process_metrics=False)
    ours = samples(expo.stored())
    ref = samples(reference_render(store, BUDGETS))
    assert ours == ref
    assert len(ours) == 2 * (6 + 3) + 7 + 6 + 3  # per video, app1 gauges, app2 gauges, budgets


def test_live_part_and_whole_output_is_promtool_clean(store):
    store.count_request(K("app1"), "success")
    store.count_request(K("app2"), "timeout")
    store.count_request(K("app2"), "timeout")
    expo = Exposition(store, "UTC", BUDGETS)
    text = expo.text()
    s = samples(text)
    assert (
        s[
            (
                "scaleengine_up",
                (
                    ("account", ACC),
                    ("app", "app1"),
                ),
            )
        ]
        == 1
    )
    assert (
        s[
            (
                "scaleengine_up",
                (
                    ("account", ACC),
                    ("app", "app2"),
                ),
            )
        ]
        == 0
    )
    assert (
        s[
            (
                "scaleengine_api_requests_total",
                (("account", ACC), ("app", "app2"), ("outcome", "timeout")),
            )
        ]
        == 2
    )
    assert [k for k in s if k[0] == "scaleengine_exporter_build_info"]
    assert promtool_check_metrics(text).strip() == ""


def test_gzip_body_is_one_member_equal_to_plain(store):
    expo = Exposition(store, "UTC", BUDGETS, process_metrics=False)
    plain_chunks, _ = expo.payload(gzip=False)
    gz_chunks, _ = expo.payload(gzip=True)
    body = b"".join(gz_chunks)
    assert gzip.decompress(body) == b"".join(plain_chunks)
    # a single member: zlib's one-shot decoder of one gzip stream consumes it all
    import zlib

    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert d.decompress(body) == b"".join(plain_chunks)
    assert d.eof and d.unused_data == b""


def test_openmetrics_negotiated_and_parseable(store):
    expo = Exposition(store, "UTC", BUDGETS, process_metrics=False)
    chunks, ctype = expo.payload(openmetrics=True)
    text = b"".join(chunks).decode()
    assert ctype.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    names = {f.name for f in om_parse(text)}
    assert "scaleengine_vse_day_bytes" in names
    assert "scaleengine_vse_bytes" in names  # counter family, samples named *_total
    om = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in om_parse(text)
        for s in f.samples
    }
    assert om == samples(b"".join(expo.payload()[0]))


def test_snapshot_swap_replaces_series_whole(store):
    expo = Exposition(store, "UTC", {}, process_metrics=False)
    before = samples(expo.stored())
    assert any(k[0] == "scaleengine_vse_day_bytes" and ("app", "app1") in k[1] for k in before)
    new = usage("app1", 2, day="2026-11-27")
    store.publish(K("app1"), new, AppStatus(K("app1"), polled=True, up=True))
    assert expo.render_now()
    after = samples(expo.stored())
    app1_videos = [
        k for k in after if k[0] == "scaleengine_vse_day_bytes" and ("app", "app1") in k[1]
    ]
    assert len(app1_videos) == 2  # the four other series of the old day are gone
    store.publish(K("app2"), None, AppStatus(K("app2"), polled=True, up=False))
    expo.render_now()
    assert not any(("app", "app2") in k[1] for k in samples(expo.stored()))


def test_render_skipped_when_usage_unchanged(store):
    expo = Exposition(store, "UTC", {}, process_metrics=False)
    renders = expo.renders
    store.publish(
        K("app1"), store.view().usage[K("app1")], AppStatus(K("app1"), polled=True, up=True)
    )
    assert not expo.render_now()
    assert expo.renders == renders


def test_background_renderer_follows_the_store(store):
    from helpers import wait_for

    expo = Exposition(store, "UTC", {}, process_metrics=False, debounce=0.01)
    expo.start()
    try:
        store.publish(K("app3"), usage("app3", 1), AppStatus(K("app3"), polled=True, up=True))
        wait_for(lambda: b'app="app3"' in expo.stored(), 5, "app3 in the stored exposition")
    finally:
        expo.stop()


@pytest.mark.parametrize(
    "accept,encoding,expected",
    [
        (None, None, (False, False)),
        (
            "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5",
            None,
            (True, False),
        ),
        ("text/plain", "gzip", (False, True)),
        ("application/openmetrics-text;q=0", "gzip;q=0, identity", (False, False)),
        ("*/*", "br, GZIP;q=0.8", (False, True)),
    ],
)
def test_negotiate(accept, encoding, expected):
    assert negotiate(accept, encoding) == expected


def test_readme_metrics_table_matches_the_code():
    """Every metric the exporter can emit is in the README's table, and nothing else is."""
    import re

    from helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `(scaleengine_[a-z_]+)`", readme, re.M))
    store = Store([K("a")])
    store.count_request(K("a"), "success")
    store.count_poll_error(K("a"), "timeout")
    status = AppStatus(K("a"), True, True, last_success=1.0, poll_duration=0.1)
    store.publish(K("a"), usage("a", 2), replace(status, bytes_total=5, requests_total=1))
    store.record_state_save(True, 1.0)  # with state.path
    store.set_listed({K("a"): None})  # once app.list has answered
    # with discovery.enabled, after a good listing and a failed one
    store.set_discovery("acc", DiscoveryState(frozenset({"a"}), 0, 1.0, {"timeout": 1}))
    # the daemon passes its poll.interval (--once does not)
    expo = Exposition(store, "UTC", {K("a"): (1, 2)}, process_metrics=False, poll_interval=300.0)
    # the daemon's serving process also describes its poll worker (here: this process)
    expo.process_registry.register(WorkerCollector(os.getpid))
    emitted = {k[0] for k in samples(expo.text())}
    assert emitted == table


def test_an_app_that_cannot_be_rendered_is_down_and_the_others_update():
    """Rendering is per app: one app's unencodable data drops its usage and marks it down
    (outcome render); the others, the counters and the live part keep updating."""
    store = Store([K("bad"), K("good")])
    expo = Exposition(store, "UTC", process_metrics=False)
    bad = replace(usage("bad", 3), videos=(("x\ud800y", 5, 1),))
    for app, u in (("bad", bad), ("good", usage("good", 3))):
        store.publish(K(app), u, AppStatus(K(app), True, True, bytes_total=7, requests_total=1))
    assert expo.render_now()
    s = samples(expo.text())
    assert (
        s[
            (
                "scaleengine_up",
                (
                    ("account", ACC),
                    ("app", "bad"),
                ),
            )
        ]
        == 0
    )
    assert (
        s[
            (
                "scaleengine_poll_errors_total",
                (("account", ACC), ("app", "bad"), ("outcome", "render")),
            )
        ]
        == 1
    )
    assert (
        s[
            (
                "scaleengine_vse_bytes_total",
                (
                    ("account", ACC),
                    ("app", "bad"),
                ),
            )
        ]
        == 7
    )  # counters stay
    assert not [k for k in s if ("app", "bad") in k[1] and "day" in k[0]]  # usage dropped
    assert (
        s[
            (
                "scaleengine_up",
                (
                    ("account", ACC),
                    ("app", "good"),
                ),
            )
        ]
        == 1
    )
    # a later poll of the good app still shows
    store.publish(K("good"), usage("good", 4), AppStatus(K("good"), True, True, bytes_total=9))
    assert expo.render_now()
    s = samples(expo.text())
    assert (
        s[
            (
                "scaleengine_vse_app_day_videos",
                (
                    ("account", ACC),
                    ("app", "good"),
                ),
            )
        ]
        == 4
    )
    promtool_check_metrics(expo.text())


def test_metrics_package_has_no_import_circle_and_knows_no_poller():
    """issue 16: usage, live and exposition apart; none imports the poller or the server."""
    from test_poller import assert_no_circle, package_imports

    import exporter.metrics

    imports = package_imports(exporter.metrics)
    assert set(imports) == {"__init__", "usage", "live", "exposition"}
    assert_no_circle(imports)
    for module, deps in imports.items():
        assert not deps & {".poller", ".web", ".worker", ".cli"}, (module, deps)
