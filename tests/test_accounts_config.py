"""Several accounts in the config (issue 17): the accounts form, the single form as one
account, where each account's secret comes from, and every problem of a file at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exporter.appkey import AppKey
from exporter.config import ConfigError, check_config, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def account(name: str, cdn_id: int = 1, **extra) -> dict:
    return {"name": name, "cdn_id": cdn_id, "api_key": f"key-{name}-xyz",
            "api_secret": f"secret-{name}-xyz", "apps": ["news"], **extra}  # fmt: skip


def errors_of(data: object, env: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {}, source="c.yaml")
    return info.value


# ------------------------------------------------------------------------- the two forms


def test_the_accounts_form_loads_every_account_with_its_own_settings():
    config = parse_config(
        {"accounts": [
            account("prod", 158, api_url="https://a.example/stable/", timeout="3s"),
            account("partner", 9, apps=["news", {"name": "sport", "daily_bytes_budget": "1GB"}],
                    max_response_bytes="2MB"),
        ]},
        env={},
    )  # fmt: skip
    prod, partner = config.accounts
    assert (prod.name, prod.cdn_id, prod.api_url, prod.timeout) == (
        "prod", 158, "https://a.example/stable/", 3.0)  # fmt: skip
    assert (partner.name, partner.cdn_id, partner.timeout) == ("partner", 9, 10.0)
    assert partner.max_response_bytes == 2_000_000 and prod.max_response_bytes == 64 * 2**20
    assert prod.api_secret.get_secret_value() == "secret-prod-xyz"
    assert partner.api_key.get_secret_value() == "key-partner-xyz"
    # the same app name in two accounts: two keys
    assert config.app_keys() == [
        AppKey("prod", "news"), AppKey("partner", "news"), AppKey("partner", "sport")]  # fmt: skip
    assert partner.apps[1].daily_bytes_budget == 10**9
    assert sorted(config.secret_values()) == sorted(
        ["key-prod-xyz", "secret-prod-xyz", "key-partner-xyz", "secret-partner-xyz"])  # fmt: skip


def test_the_single_form_is_one_account_named_by_its_cdn_id_or_scaleengine_account():
    se = {"cdn_id": 158, "api_key": "kkkk", "api_secret": "ssss"}
    config = parse_config({"scaleengine": se, "apps": ["a", "b"]}, env={})
    assert [a.name for a in config.accounts] == ["158"]
    assert config.app_keys() == [AppKey("158", "a"), AppKey("158", "b")]
    named = parse_config({"scaleengine": {**se, "account": "prod"}, "apps": ["a"]}, env={})
    assert named.app_keys() == [AppKey("prod", "a")] and named.accounts[0].cdn_id == 158
    discovering = parse_config(
        {"scaleengine": se, "discovery": {"enabled": True, "include": "^live-"}}, env={}
    )
    assert discovering.accounts[0].discovery.enabled and discovering.accounts[0].apps == []
    assert discovering.accounts[0].discovery.include.pattern == "^live-"


def test_the_example_files_load_both_forms():
    env = {"SCALEENGINE_API_KEY": "k" * 8, "SCALEENGINE_API_SECRET": "s" * 8,
           "PROD_API_SECRET": "p" * 8, "PARTNER_API_KEY": "q" * 8}  # fmt: skip
    single = load_config(ROOT / "config.example.yaml", env=env)
    assert [a.name for a in single.accounts] == ["158"]
    # its secret files are not here: --check-config's way (as in CI) names them
    several, unchecked = check_config(ROOT / "config.accounts.example.yaml", env=env)
    assert unchecked == [
        "accounts[0].api_key (file /run/secrets/production/api_key missing)",
        "accounts[1].api_secret (file /run/secrets/partner/api_secret missing)",
    ]
    assert [a.name for a in several.accounts] == ["production", "partner"]
    assert several.app_keys() == [AppKey("production", "demo-origin"),
        AppKey("production", "vod-library"), AppKey("partner", "demo-origin")]  # fmt: skip
    assert several.accounts[0].api_secret.get_secret_value() == "p" * 8
    assert several.accounts[0].api_secret_env == "PROD_API_SECRET"
    assert several.accounts[1].api_key.get_secret_value() == "q" * 8


# ------------------------------------------------------------------------- account names


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("p" * 64, True),  # at most 64 characters
        ("p" * 65, False),
        ('a "quoted" \\ name', True),  # printable: escaped in labels like any value
        ("", False),
        ("   ", False),
        (" prod", False),
        ("prod ", False),
        ("pro\nd", False),
        ("pro\x00d", False),
        (158, False),  # a name is text (quote it)
    ],
)
def test_account_names(name, ok):
    data = {"accounts": [account("x")]}
    data["accounts"][0]["name"] = name
    if ok:
        assert parse_config(data, env={}).accounts[0].name == name
    else:
        assert "accounts[0].name" in str(errors_of(data))


def test_an_account_name_given_twice_is_refused_naming_the_second():
    err = errors_of({"accounts": [account("prod"), account("partner"), account("prod", 3)]})
    assert str(err) == "c.yaml: accounts[2].name: account 'prod' is named twice"
    assert err.field == "accounts[2].name"


def test_both_forms_at_once_is_refused_naming_the_field():
    for key, value in (("scaleengine", {"cdn_id": 1}), ("apps", ["a"]), ("discovery", {})):
        err = errors_of({"accounts": [account("prod")], key: value})
        assert str(err).startswith(
            f"c.yaml: {key}: give either accounts: or {key}: (the single-account form), not both"
        ), str(err)


def test_single_form_errors_keep_their_names():
    se = {"cdn_id": 1, "api_key": "kkkk", "api_secret": "ssss"}
    cases = [
        ({"scaleengine": {**se, "cdn_id": 0}, "apps": ["a"]}, "scaleengine.cdn_id: must be"),
        ({"scaleengine": {**se, "account": " x"}, "apps": ["a"]}, "scaleengine.account: account"),
        ({"scaleengine": {**se, "bogus": 1}, "apps": ["a"]}, "unknown field 'scaleengine.bogus'"),
        ({"scaleengine": {**se, "name": "x"}, "apps": ["a"]}, "unknown field 'scaleengine.name'"),
        ({"scaleengine": {**se, "apps": ["a"]}}, "unknown field 'scaleengine.apps'"),
        ({"scaleengine": se, "apps": [""]}, "apps[0].name: app name must not be empty"),
        ({"scaleengine": se, "apps": ["a", "a"]}, "apps[1].name: app 'a' is listed twice"),
        ({"scaleengine": se},
         "apps: must list at least one app (or set discovery.enabled beside it)"),
        ({"scaleengine": se, "apps": ["a"], "discovery": {"interval": "1s"}},
         "discovery.interval: must be at least 60s"),
        ({"scaleengine": "x", "apps": ["a"]}, "scaleengine: must be a mapping"),
        ({"apps": ["a"]}, "scaleengine: required field missing"),
    ]  # fmt: skip
    for data, expected in cases:
        assert expected in str(errors_of(data)), data
        assert "accounts" not in str(errors_of(data)), data


def test_accounts_form_errors_name_the_account():
    cases = [
        (account("p", 0), "accounts[0].cdn_id: must be greater than 0"),
        (account("p", apps=[]), "accounts[0].apps: must list at least one app"),
        (account("p", apps=["a", "a"]), "accounts[0].apps[1].name: app 'a' is listed twice"),
        (account("p", account="x"), "unknown field 'accounts[0].account'"),
        ({k: v for k, v in account("p").items() if k != "name"}, "accounts[0].name: required"),
        (account("p", discovery={"enabled": "maybe"}), "accounts[0].discovery.enabled"),
    ]
    for entry, expected in cases:
        assert expected in str(errors_of({"accounts": [entry]})), entry
    assert "accounts: must list at least one account" in str(errors_of({"accounts": []}))


# ------------------------------------------------------------------------- secrets


def test_each_account_names_its_secret_inline_in_a_file_or_in_an_environment_variable(tmp_path):
    (tmp_path / "partner.secret").write_text("file-secret-xyz\n")
    data = {"accounts": [
        {**account("prod"), "api_secret": None, "api_secret_env": "PROD_SECRET"},
        {**account("partner"), "api_secret": None, "api_secret_file": "partner.secret",
         "api_key": None, "api_key_env": "PARTNER_KEY"},
    ]}  # fmt: skip
    for entry in data["accounts"]:
        entry.pop("api_secret")
    data["accounts"][1].pop("api_key")
    env = {"PROD_SECRET": "env-secret-xyz", "PARTNER_KEY": "env-key-xyz",
           "SCALEENGINE_API_SECRET": "not-this-one"}  # fmt: skip
    config = parse_config(data, env=env, base_dir=tmp_path)
    prod, partner = config.accounts
    assert prod.api_secret.get_secret_value() == "env-secret-xyz"
    assert partner.api_secret.get_secret_value() == "file-secret-xyz"
    assert partner.api_key.get_secret_value() == "env-key-xyz"
    assert partner.api_secret_file == str(tmp_path / "partner.secret")


def test_in_the_accounts_form_the_default_environment_variables_are_not_used():
    entry = account("prod")
    del entry["api_secret"]
    env = {"SCALEENGINE_API_SECRET": "default-secret"}
    err = errors_of({"accounts": [account("ok"), entry]}, env=env)
    assert "accounts[1].api_secret: missing; each account names its secret" in str(err)
    assert err.field == "accounts[1].api_secret"


def test_the_single_form_takes_the_default_variables_or_the_one_it_names():
    se = {"cdn_id": 1}
    env = {"SCALEENGINE_API_KEY": "dkey", "SCALEENGINE_API_SECRET": "dsecret", "MY": "mysecret"}
    config = parse_config({"scaleengine": se, "apps": ["a"]}, env=env)
    assert config.accounts[0].api_secret.get_secret_value() == "dsecret"
    config = parse_config({"scaleengine": {**se, "api_secret_env": "MY"}, "apps": ["a"]}, env=env)
    assert config.accounts[0].api_secret.get_secret_value() == "mysecret"
    assert config.accounts[0].api_key.get_secret_value() == "dkey"


def test_secret_source_errors():
    entry = account("p")
    cases = [
        ({**entry, "api_secret_env": "X"}, "accounts[0].api_secret: give either api_secret or "
         "api_secret_env, not both"),
        ({**{k: v for k, v in entry.items() if k != "api_key"}, "api_key_env": 5},
         "accounts[0].api_key_env: must be the name of an environment variable"),
        ({**{k: v for k, v in entry.items() if k != "api_key"}, "api_key_env": "UNSET"},
         "accounts[0].api_key: the environment variable UNSET is not set"),
        ({**{k: v for k, v in entry.items() if k != "api_key"}, "api_key_file": "/nonexistent/k"},
         "accounts[0].api_key_file: cannot read secret file"),
    ]  # fmt: skip
    for data, expected in cases:
        assert expected in str(errors_of({"accounts": [data]})), data


def test_no_secret_in_any_message():
    secret = "Sup3r-Secret-Value"
    data = {"accounts": [
        {"name": "p", "cdn_id": "bad", "api_key": secret, "api_secret": secret, "x": 1},
        {"name": 7, "cdn_id": 1, "api_key": [secret], "api_secret": {secret: secret}},
    ]}  # fmt: skip
    err = errors_of(data)
    assert secret not in str(err) and not any(secret in p for p in err.problems)


# ------------------------------------------------------------------------- every problem at once


def test_every_problem_of_a_file_is_reported_each_with_its_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "accounts": [
            {"name": "prod", "cdn_id": 0, "api_key_env": "K1", "api_secret": "s" * 8,
             "apps": ["a", "a"]},
            {"name": "prod", "cdn_id": 2, "api_key": "k" * 8, "api_secret": "s" * 8,
             "api_secret_file": "x", "apps": ["b"], "timeout": "soon"},
        ],
        "poll": {"interval": "0s", "concurrency": 0},
        "limits": {"include": "("},
        "bogus": 1,
    }))  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    problems = info.value.problems
    expected = [
        "accounts[0].api_key: the environment variable K1 is not set",
        "accounts[1].api_secret: give either api_secret or api_secret_file, not both",
        "accounts[1].name: account 'prod' is named twice",
        "accounts[0].cdn_id: must be greater than 0",
        "accounts[0].apps[1].name: app 'a' is listed twice",
        "accounts[1].timeout: invalid duration 'soon'",
        "poll.interval: must be at least 1s",
        "poll.concurrency: must be greater than or equal to 1",
        "limits.include: invalid regular expression '('",
        "unknown field 'bogus'",
    ]
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected), problems
    # the one-line message (daemon, reload) names the file and the first five
    assert str(info.value).startswith(f"{path}: accounts[1].name: ")
    assert str(info.value).endswith("; and 5 more")


def test_check_config_notes_missing_secrets_and_checks_the_rest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"accounts": [
        {"name": "prod", "cdn_id": 1, "api_key_env": "PROD_KEY", "api_secret_file": "/run/x"},
        {"name": "partner", "cdn_id": 2, "api_key": "k" * 8, "api_secret_env": "P_SECRET",
         "apps": ["b"]},
    ]}))  # fmt: skip
    with pytest.raises(ConfigError) as info:  # the rest is still checked: prod has no apps
        check_config(path, env={})
    assert info.value.problems == (
        "accounts[0].apps: must list at least one app (or set discovery.enabled beside it)",
    )
    text = path.read_text().replace(
        "api_secret_file: /run/x", "api_secret_file: /run/x\n  apps: [a]"
    )
    path.write_text(text)
    config, unchecked = check_config(path, env={})
    assert unchecked == [
        "accounts[0].api_key ($PROD_KEY not set)",
        "accounts[0].api_secret (file /run/x missing)",
        "accounts[1].api_secret ($P_SECRET not set)",
    ]
    assert config.app_keys() == [AppKey("prod", "a"), AppKey("partner", "b")]
    with pytest.raises(ConfigError):  # loading for real still needs them
        load_config(path, env={})


def test_the_accounts_form_shown_in_config_example_loads(tmp_path):
    """config.example.yaml shows the accounts form commented out: uncommented, it loads
    (its secret files do not exist here: only noted, as --check-config does)."""
    import re

    from helpers import ROOT

    text = (ROOT / "config.example.yaml").read_text()
    block = re.search(r"^# accounts:\n(?:#   .*\n)+", text, re.M)
    assert block, "config.example.yaml shows the accounts form"
    path = tmp_path / "accounts.yaml"
    path.write_text("\n".join(line[2:] for line in block.group(0).splitlines()) + "\n")
    env = {"PROD_API_KEY": "k-1", "PROD_API_SECRET": "s-1"}
    config, unchecked = check_config(str(path), env)
    assert [a.name for a in config.accounts] == ["production", "partner"]
    assert config.accounts[1].discovery.enabled and len(unchecked) == 2


def test_accounts_written_as_a_mapping_is_told_to_be_a_list():
    """A new user's slip (accounts: as one mapping, not a list of `- name:` entries) gets a
    message in the config's words, not the model's ("a valid tuple")."""
    with pytest.raises(ConfigError) as info:
        parse_config({"accounts": {"name": "p", "cdn_id": 1}}, env={})
    assert "accounts: must be a list" in str(info.value)
    assert "tuple" not in str(info.value)
