"""Second audit (issue 19): config limits promised in the README, with literal numbers just
under and just over (never the code's own constants)."""

from __future__ import annotations

import logging

import pytest

from exporter.config import ConfigError, parse_config

SECRETS = {"cdn_id": 158, "api_key": "inline-key-xyz", "api_secret": "inline-secret-xyz"}


def config(**sections):
    return parse_config({"scaleengine": dict(SECRETS), "apps": ["a"], **sections})


def test_poll_interval_is_at_least_1s():
    """README: poll.interval >= 1s."""
    with pytest.raises(ConfigError, match=r"poll\.interval"):
        config(poll={"interval": "999ms"})
    assert config(poll={"interval": "1s"}).poll.interval == 1.0


def test_below_one_minute_a_warning_is_logged(caplog):
    """README: below 1m a warning is logged (59 s warns, 60 s does not)."""
    for interval, warned in (("59s", True), ("1m", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="exporter.config"):
            config(poll={"interval": interval})
        said = [r.getMessage() for r in caplog.records if "polled hard" in r.getMessage()]
        assert bool(said) is warned, (interval, said)


def test_max_label_length_is_at_least_64():
    with pytest.raises(ConfigError, match=r"limits\.max_label_length"):
        config(limits={"max_label_length": 63})
    assert config(limits={"max_label_length": 64}).limits.max_label_length == 64


def test_defaults_the_readme_gives_and_test_config_does_not_check():
    """The configuration reference's defaults missing from test_config.py::test_defaults,
    written as the README writes them."""
    c = config()
    assert c.accounts[0].max_response_bytes == 64 * 1024 * 1024  # 64MiB
    assert (c.poll.busy_backoff, c.poll.busy_backoff_max) == (120.0, 900.0)  # 2m / 15m
    assert c.limits.max_label_length == 1024
