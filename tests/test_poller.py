"""The poller against the simulator over real HTTP: snapshots, folding, day changes, faults."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime

import pytest
from helpers import samples, sim_config

from exporter.appkey import AppKey
from exporter.config import parse_config
from exporter.metrics import Exposition
from exporter.poller import Poller, fold_videos, label_value
from exporter.simulator import SimClock, Simulator
from exporter.state import StateFile
from exporter.store import OTHER, Store

APPS = {"alpha": 30, "beta": 8, "gamma": 5}
ACCOUNT = "4242"  # the single form's account: the simulator's cdn_id (scaleengine.account unset)


def K(app: str) -> AppKey:
    return AppKey(ACCOUNT, app)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.fixture
def sim():
    clock = SimClock(ts(2026, 3, 10, 15, 0))
    with Simulator(apps=APPS, clock=clock, seed=7) as s:
        s.fault_delay = 1.5
        yield s


def make(sim, store=None, **overrides):
    data = sim_config(
        sim, poll={"interval": "1m", "page_size": 7, "retries": 1, "month_interval": "1h"}
    )
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    config = parse_config(data, env={})
    store = store or Store(config.app_keys())
    state_file = StateFile(config.state.path) if config.state.path else None
    return Poller(config, store, clock=sim.clock.now, state_file=state_file), store


# -- folding ----------------------------------------------------------------------------


def test_fold_keeps_top_by_bytes_and_sums_the_rest():
    videos = {f"v{i}": (i * 10, i) for i in range(1, 11)}
    out = fold_videos(videos, 3)
    assert [v[0] for v in out] == ["v10", "v9", "v8", OTHER]
    assert out[-1] == (OTHER, sum(i * 10 for i in range(1, 8)), sum(range(1, 8)))
    assert sum(v[1] for v in out) == sum(b for b, _ in videos.values())
    assert fold_videos(videos, 10)[-1][0] != OTHER  # nothing folded: no __other__


def test_fold_include_exclude_and_ties():
    videos = {"a.mp4": (5, 1), "b.mp4": (5, 1), "live/x": (9, 2), OTHER: (1, 1)}
    out = fold_videos(videos, 10, include=re.compile(r"\.mp4$"), exclude=re.compile("^b"))
    assert out == (("a.mp4", 5, 1), (OTHER, 15, 4))
    assert fold_videos({"b": (5, 0), "a": (5, 0)}, 1) == (("a", 5, 0), (OTHER, 5, 0))


# -- polls ------------------------------------------------------------------------------


def test_poll_publishes_exact_totals_with_duplicates_summed(sim):
    poller, store = make(sim)
    assert poller.poll_app(K("alpha"))
    usage = store.view().usage[K("alpha")]
    today = date(2026, 3, 10)
    assert (usage.day_bytes, usage.day_requests) == sim.reported("alpha", today)
    assert usage.day == "2026-03-10"
    assert usage.day_end == ts(2026, 3, 11)
    per_video = sim.reported_videos("alpha", 2026, 3, 10)
    assert usage.day_videos == len(per_video)
    assert {url: (b, r) for url, b, r in usage.videos} == per_video
    month = sim.reported_videos("alpha", 2026, 3, None)
    assert usage.month_bytes == sum(b for b, _ in month.values())
    assert usage.month_requests == sum(r for _, r in month.values())
    # paged at 7 rows: more than one request per fetch
    assert sim.requests_for("alpha") > 2


def test_cap_folds_and_still_adds_up(sim):
    poller, store = make(sim, limits={"max_videos_per_app": 4})
    poller.poll_app(K("alpha"))
    usage = store.view().usage[K("alpha")]
    assert len(usage.videos) == 5 and usage.videos[-1][0] == OTHER
    assert sum(v[1] for v in usage.videos) == usage.day_bytes
    assert sum(v[2] for v in usage.videos) == usage.day_requests


def test_new_day_replaces_per_video_series_and_counts_on(sim):
    poller, store = make(sim, poll={"late_data_window": "2h"})
    expo = Exposition(store, "UTC", {}, process_metrics=False)
    poller.poll_app(K("beta"))
    first = store.view().status[K("beta")]
    assert first.bytes_total == 0  # a day under way at start only sets the baseline
    sim.clock.set(ts(2026, 3, 10, 23, 0))
    poller.poll_app(K("beta"))
    poller.poll_app(K("beta"))  # growth is counted once a second read confirms it
    grown = store.view().status[K("beta")].bytes_total
    assert (
        grown
        == sim.reported("beta", date(2026, 3, 10))[0]
        - sim.reported("beta", date(2026, 3, 10), at=ts(2026, 3, 10, 15, 0))[0]
    )
    sim.clock.set(ts(2026, 3, 11, 0, 30))
    poller.poll_app(K("beta"))
    poller.poll_app(K("beta"))
    expo.render_now()
    s = samples(expo.stored())
    usage = store.view().usage[K("beta")]
    assert usage.day == "2026-03-11"
    assert (
        s[
            (
                "scaleengine_vse_app_day_bytes",
                (
                    ("account", ACCOUNT),
                    ("app", "beta"),
                ),
            )
        ]
        == sim.reported("beta", date(2026, 3, 11))[0]
    )
    assert (
        s[
            (
                "scaleengine_vse_app_previous_day_bytes",
                (
                    ("account", ACCOUNT),
                    ("app", "beta"),
                ),
            )
        ]
        == sim.reported("beta", date(2026, 3, 10))[0]
    )
    # only the new day's videos are shown
    shown = {dict(k[1])["video_url"] for k in s if k[0] == "scaleengine_vse_day_bytes"}
    assert shown == {u for u, _, _ in usage.videos}
    total = store.view().status[K("beta")].bytes_total
    assert total == (
        sim.reported("beta", date(2026, 3, 10))[0]
        - sim.reported("beta", date(2026, 3, 10), at=ts(2026, 3, 10, 15, 0))[0]
        + sim.reported("beta", date(2026, 3, 11))[0]
    )


def test_failing_app_is_down_others_untouched_then_stale_series_dropped(sim):
    poller, store = make(sim, poll={"interval": "1m", "stale_after": "3m"})
    poller.poll_all()
    before = store.view()
    sim.set_fault("alpha", "http_500")
    sim.clock.advance(60)
    assert not poller.poll_app(K("alpha"))
    assert poller.poll_app(K("beta"))
    view = store.view()
    assert view.status[K("alpha")].up is False and view.status[K("beta")].up is True
    assert view.usage[K("alpha")] is before.usage[K("alpha")]  # last good snapshot still served
    assert view.requests[(K("alpha"), "http_status")] == 2  # the first try and poll.retries=1
    sim.clock.advance(200)
    poller.poll_app(K("alpha"))
    view = store.view()
    assert K("alpha") not in view.usage  # stale: dropped rather than shown forever
    assert K("beta") in view.usage and K("gamma") in view.usage
    sim.set_fault("alpha", None)
    assert poller.poll_app(K("alpha"))
    assert store.view().usage[K("alpha")].day_bytes > 0


def test_month_to_date_moves_with_today(sim):
    poller, store = make(sim)
    poller.poll_app(K("gamma"))
    u1 = store.view().usage[K("gamma")]
    requests_before = sim.requests_for("gamma")
    sim.clock.advance(600)  # within month_interval: month is not fetched again
    poller.poll_app(K("gamma"))
    u2 = store.view().usage[K("gamma")]
    assert u2.month_bytes - u1.month_bytes == u2.day_bytes - u1.day_bytes
    log = [e for e in sim.request_log if e.get("app") == "gamma"]
    assert [e for e in log[:requests_before] if e.get("day") is None], "month fetched first"
    second = log[requests_before:]
    assert second and all(e.get("day") == 10 for e in second), "month fetched again"


# -- restarts ---------------------------------------------------------------------------


def test_restart_goes_on_from_saved_counters(sim, tmp_path):
    state = {"path": str(tmp_path / "state.json")}
    poller, store = make(sim, state=state)
    poller.poll_app(K("beta"))
    poller.poll_app(K("beta"))  # confirms the first read: the baseline
    sim.clock.advance(3600)
    poller.poll_app(K("beta"))
    poller.poll_app(K("beta"))  # confirms the growth
    counted = store.view().status[K("beta")].bytes_total
    assert counted > 0
    poller.shutdown()
    sim.clock.advance(1800)  # down for half an hour
    poller2, store2 = make(sim, state=state)
    # absent until a poll confirms it (the last saves may have failed), never 0 nor lower
    assert store2.view().status[K("beta")].bytes_total is None
    poller2.poll_app(K("beta"))  # reads today twice
    today = date(2026, 3, 10)
    assert (
        store2.view().status[K("beta")].bytes_total
        == sim.reported("beta", today)[0]
        - (sim.reported("beta", today, at=ts(2026, 3, 10, 15, 0))[0])
    )


def test_state_from_an_old_day_starts_fresh(sim, tmp_path, caplog):
    state = {"path": str(tmp_path / "state.json")}
    poller, store = make(sim, state=state)
    poller.poll_app(K("beta"))
    sim.clock.advance(3600)
    poller.poll_app(K("beta"))
    poller.shutdown()
    sim.clock.advance(3 * 86400)
    with caplog.at_level("WARNING"):
        poller2, store2 = make(sim, state=state)
    assert "earlier day" in caplog.text
    poller2.poll_app(K("beta"))
    assert store2.view().status[K("beta")].bytes_total == 0  # a baseline, nothing counted twice


def test_corrupt_state_file_warns_once_and_polls(sim, tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_bytes(b'{"version": 1, "day": "2026-03-10", "apps": {"beta": {"bytes_tot')
    with caplog.at_level("WARNING"):
        poller, store = make(sim, state={"path": str(path)})
    assert [r.getMessage() for r in caplog.records] == ["state file corrupt, starting fresh"]
    assert poller.poll_app(K("beta"))
    assert path.read_bytes().startswith(b'{"version":2')  # rewritten whole after the poll


# -- label values: valid UTF-8, capped, distinct, totals exact ---------------------------


def test_fold_makes_labels_valid_utf8_and_caps_their_length():
    long_a = "https://cdn.example/" + "a" * 5000 + "/one.mp4"
    long_b = "https://cdn.example/" + "a" * 5000 + "/two.mp4"
    videos = {
        "bad\ud800url": (100, 1),
        "bad" + chr(0xDFFF) + "url": (50, 1),  # the same label once cleaned: summed
        long_a: (30, 3),
        long_b: (20, 2),
        "é" * 600: (10, 1),  # 1200 bytes: cut on a character boundary
        "plain.mp4": (5, 1),
    }
    out = fold_videos(videos, 100, max_label_length=256)
    labels = [v[0] for v in out]
    for label in labels:
        assert len(label.encode("utf-8")) <= 256  # encodes: no lone surrogate left
    assert ("bad\ufffdurl", 150, 2) in out
    cut = [v for v in out if v[0].startswith("https://")]
    assert len(cut) == 2 and cut[0][0] != cut[1][0]  # distinct URLs stay distinct series
    assert all(len(v[0].encode()) == 256 for v in cut)
    assert {v[1] for v in cut} == {30, 20}
    assert "plain.mp4" in labels
    assert sum(v[1] for v in out) == sum(b for b, _ in videos.values())
    assert sum(v[2] for v in out) == sum(r for _, r in videos.values())
    # the default cap is 1024 bytes, and the positional form still works
    default = fold_videos({long_a: (1, 1)}, 10, None, None)
    assert len(default[0][0].encode()) == 1024
    assert label_value("short.mp4") == "short.mp4"


def test_reconfigure_adds_removes_and_keeps_counters(sim):
    """Poller.reconfigure (a config reload): apps that stay keep counters and data, a removed
    app's series and request counts leave the store and its late results are ignored, an
    added app starts like a fresh start (today only sets its baseline)."""
    from exporter.store import AppStatus

    data = sim_config(sim, poll={"interval": "1m", "page_size": 7, "retries": 1})
    data["apps"] = ["alpha", "beta"]
    poller, store = make(sim)
    poller.reconfigure(parse_config(data, env={}))  # gamma goes
    assert poller.poll_all()
    assert poller.poll_all()
    sim.clock.advance(3600)  # traffic grows through the day
    assert poller.poll_all()
    assert poller.poll_all()
    before = store.view()
    alpha_total = before.status[K("alpha")].bytes_total
    assert alpha_total > 0

    data["apps"] = ["alpha", {"name": "gamma", "daily_bytes_budget": "1GB"}]
    poller.reconfigure(parse_config(data, env={}))
    view = store.view()
    assert set(view.status) == {K("alpha"), K("gamma")} and K("beta") not in view.usage
    assert not any(app == K("beta") for app, _ in view.requests)
    assert view.usage[K("alpha")] is before.usage[K("alpha")]  # untouched until its next poll
    store.publish(K("beta"), None, AppStatus(K("beta"), polled=True, up=True))  # a late poll
    store.count_request(K("beta"), "success")
    assert K("beta") not in store.view().status
    assert not store.view().requests.get((K("beta"), "success"))
    assert poller.poll_all()
    after = store.view()
    assert after.status[K("alpha")].bytes_total == alpha_total  # not reset, nothing counted twice
    assert after.status[K("gamma")].bytes_total == 0 and after.usage[K("gamma")].day_bytes > 0
    assert not poller.poll_app(K("beta"))  # a removed app's queued run does nothing
    poller.shutdown()


def test_app_missing_from_the_state_file_starts_from_a_baseline(sim, tmp_path):
    """An app added to the config since the state was saved: what it delivered today before
    the exporter saw it is not growth the exporter saw (as on a fresh start)."""
    state = {"path": str(tmp_path / "state.json")}
    poller, _ = make(sim, state=state)
    poller.poll_app(K("alpha"))  # the state file now holds every configured app but...
    poller.shutdown()
    path = tmp_path / "state.json"
    data = json.loads(path.read_text())
    del data["accounts"][ACCOUNT][
        "beta"
    ]  # ...beta, as if beta was added to the config after the save
    path.write_text(json.dumps(data))
    sim.clock.advance(600)
    poller2, store2 = make(sim, state=state)
    assert poller2.poll_app(K("beta"))
    assert store2.view().status[K("beta")].bytes_total == 0
    assert store2.view().usage[K("beta")].day_bytes > 0
    before = sim.reported("beta", date(2026, 3, 10))[0]
    sim.clock.advance(600)
    assert poller2.poll_app(K("beta"))
    assert poller2.poll_app(K("beta"))  # confirms the growth
    grown = sim.reported("beta", date(2026, 3, 10))[0] - before
    assert store2.view().status[K("beta")].bytes_total == grown
    poller2.shutdown()


# -- the poll deadline (poll.timeout) ---------------------------------------------------------


def test_a_retry_never_sleeps_past_the_poll_deadline(sim):
    """An API failing transiently and a retry back-off of minutes: the poll still ends at its
    poll.timeout (1 s), outcome poll_timeout counted once, not after the back-off."""
    import time

    from exporter.scaleengine import ScaleEngineClient

    def slow_retrying(app: str) -> ScaleEngineClient:
        return ScaleEngineClient(
            sim.url, sim.cdn_id, sim.api_key, sim.api_secret, timeout=1.0, retries=5,
            backoff_base=500.0, backoff_max=1000.0, clock=sim.clock.now,
            on_request=lambda outcome: store.count_request(app, outcome),
        )  # fmt: skip

    data = sim_config(sim, poll={"interval": "1m", "timeout": "1s", "month_interval": "off"})
    config = parse_config(data, env={})
    store = Store(config.app_keys())
    poller = Poller(config, store, clock=sim.clock.now, client_factory=slow_retrying)
    sim.set_fault("beta", "http_503")
    started = time.monotonic()
    assert not poller.poll_app(K("beta"))
    assert time.monotonic() - started < 20  # a sleep of up to 1000 s was cut
    view = store.view()
    assert view.poll_errors == {(K("beta"), "poll_timeout"): 1}
    assert view.requests[(K("beta"), "http_status")] >= 1
    assert view.status[K("beta")].last_error.startswith("poll_timeout: ")
    assert "poll.timeout 1s" in view.status[K("beta")].last_error


# -- the package (issue 16) ---------------------------------------------------------------


def package_imports(package) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, and ``..name`` for the exporter's."""
    import ast
    from pathlib import Path

    out: dict[str, set[str]] = {}
    for path in Path(package.__file__).parent.glob("*.py"):
        out[path.stem] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level in (1, 2):
                names = [node.module] if node.module else [a.name for a in node.names]
                dots = "." * (node.level - 1)
                out[path.stem].update(dots + (n or "").split(".")[0] for n in names)
    return out


def assert_no_circle(imports: dict[str, set[str]]) -> None:
    inside = {m: deps & set(imports) for m, deps in imports.items()}
    done: set[str] = set()
    while len(done) < len(inside):  # peel off modules whose imports are all done
        ready = {m for m, deps in inside.items() if m not in done and deps <= done}
        assert ready, f"import circle among {sorted(set(inside) - done)}"
        done |= ready


def test_poller_package_has_no_import_circle_and_knows_no_later_stage():
    import exporter.poller

    imports = package_imports(exporter.poller)
    assert_no_circle(imports)
    for module, deps in imports.items():
        assert "__init__" not in deps, module  # the parts never import the package itself
        assert not deps & {".metrics", ".web", ".worker", ".cli"}, (module, deps)
