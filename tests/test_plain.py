"""config/plain.py: a validated config as pydantic-free Settings, what the daemon's serving
process and poll worker run on (tests/test_footprint.py checks they never load pydantic)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zoneinfo

import pytest
from helpers import ROOT
from pydantic import BaseModel, ConfigDict, SecretStr

from exporter.appkey import AppKey
from exporter.config import Secret, Settings, parse_config, to_plain

KEY = "PLAINKEY000000000000000000000001"
SECRET = "plain-secret-0000000000000000000000000000000000000000000000000000"


def _config():
    return parse_config(
        {"scaleengine": {"cdn_id": 7, "api_key": KEY, "api_secret": SECRET},
         "apps": ["a", {"name": "b", "daily_bytes_budget": "1GB", "urls": ["x.mp4"]}],
         "poll": {"interval": "10m", "timezone": "Europe/Berlin"},
         "limits": {"include": "^keep/"}},
        env={},
    )  # fmt: skip


def test_plain_settings_read_as_the_model_does():
    config = _config()
    plain = to_plain(config)
    account = plain.accounts[0]
    assert account.cdn_id == 7 and account.apps[1].daily_bytes_budget == 10**9
    assert account.apps[1].urls == ["x.mp4"] and plain.limits.include.search("keep/v.mp4")
    # what the code asks beyond the fields (config/views.py), answered as the model does
    assert plain.app_keys() == config.app_keys() == [AppKey("7", "a"), AppKey("7", "b")]
    assert [(k, a.name, app.name) for k, a, app in plain.apps()] == [
        (k, a.name, app.name) for k, a, app in config.apps()
    ]
    assert plain.account("7") == account and plain.account("8") is None
    assert account.keys() == config.accounts[0].keys()
    assert account.api_fingerprint == config.accounts[0].api_fingerprint
    # the validators' resolved values and the properties
    assert plain.poll.timeout == config.poll.timeout == 480.0
    assert plain.poll.stale_after == 1800.0
    assert plain.poll.tz == zoneinfo.ZoneInfo("Europe/Berlin")
    assert plain.web.listen_port == 8491 and plain.web.listen_host == ""
    assert plain.secret_values() == config.secret_values() == [KEY, SECRET]
    with pytest.raises(AttributeError):
        plain.poll.interval = 1.0  # frozen, as the model
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = plain.poll.nope


def test_secrets_never_show_in_repr_or_pickle_text():
    plain = to_plain(_config())
    account = plain.accounts[0]
    assert isinstance(account.api_key, Secret)
    text = repr(plain) + str(account.api_secret) + repr(account) + account.api_fingerprint
    assert KEY not in text and SECRET not in text and "Secret('**********')" in text
    assert account.api_key.get_secret_value() == KEY


def test_plain_settings_pickle_and_compare_without_pydantic():
    plain = to_plain(_config())
    data = pickle.dumps(plain)
    assert pickle.loads(data) == plain
    # a fresh interpreter reads them, poll.tz included, without importing pydantic
    code = (
        "import pickle, sys; c = pickle.loads(sys.stdin.buffer.read());"
        " assert c.poll.tz.key == 'Europe/Berlin' and c.accounts[0].apps[0].name == 'a';"
        " assert [k.app for k in c.app_keys()] == ['a', 'b'];"
        " assert 'pydantic' not in sys.modules, 'pydantic loaded'; print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=data, capture_output=True, timeout=60, cwd=ROOT
    )
    assert out.stdout.strip() == b"ok", out.stderr.decode()


def test_model_copy_replaces_fields_and_drops_derived_values():
    web = to_plain(_config()).web
    same = web.model_copy(update={"listen_address": ":8491"})
    assert same.listen_port == 8491  # nothing changed: the derived values stay
    moved = web.model_copy(update={"listen_address": "127.0.0.1:9000"})
    assert moved.listen_address == "127.0.0.1:9000" and web.listen_address == ":8491"
    with pytest.raises(AttributeError):
        _ = moved.listen_port  # only the model could recompute it: never the old port
    with pytest.raises(ValueError, match="no field 'port'"):
        web.model_copy(update={"port": 1})


class _Account(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    key: SecretStr

    @property
    def label(self) -> str:
        return self.name.upper()


class _Many(BaseModel):
    model_config = ConfigDict(frozen=True)
    accounts: list[_Account]
    by_name: dict[str, _Account] = {}
    pair: tuple[int, int] = (1, 2)


def test_conversion_is_generic_over_new_models_lists_dicts_and_secrets():
    model = _Many(
        accounts=[{"name": "one", "key": "k-one-0001"}, {"name": "two", "key": "k-two-0002"}],
        by_name={"x": {"name": "x", "key": "k-x-00003"}},
    )
    plain = to_plain(model)
    assert isinstance(plain, Settings) and [a.label for a in plain.accounts] == ["ONE", "TWO"]
    assert plain.by_name["x"].key == Secret("k-x-00003") and plain.pair == (1, 2)
    assert plain.secret_values() == ["k-one-0001", "k-two-0002", "k-x-00003"]
