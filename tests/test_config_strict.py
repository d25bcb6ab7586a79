"""Strict configuration (F9, F4, F13's token URL): a typo, a relative path, a config file someone
else could change, or a sink on a file credsync already owns is refused at load, one line each."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from agent.config import (
    CODEX_CLIENT_ID,
    CODEX_TOKEN_URL,
    CodexSection,
    RefreshSection,
    Settings,
    load_settings,
    safe_url,
)
from agent.errors import ConfigError
from tests.agentproc import credsync

UNKNOWN = "unknown key; remove it or fix its spelling (see config.example.toml)"
PATH_RULE = "expected an absolute path; ~ and $VARS that are set are allowed"


@contextlib.contextmanager
def clean_env(values: Mapping[str, str] | None = None) -> Iterator[None]:
    """os.environ with no CREDSYNC_* variable (nor CODEX_HOME, which chooses [codex]'s default)
    but ``values`` (the loader reads os.environ)."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.upper().startswith("CREDSYNC_")]:
        del os.environ[name]
    os.environ.pop("UNSET_FOR_TEST", None)
    os.environ.pop("CODEX_HOME", None)
    os.environ.update(values or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def problems(path: Path | None, env: Mapping[str, str] | None = None) -> list[str]:
    with clean_env(env), pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CREDSYNC_")}
    return {**env, **(extra or {})}


def refused(args: list[str], env: Mapping[str, str] | None = None) -> str:
    """The CLI's one-line refusal (exit 2, no traceback)."""
    out = credsync(args, env=cli_env(env), timeout=30)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("credsync: "), out.stderr
    return lines[0]


def config(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\nlog_file = ""\n' + text)
    return path


# --- unknown keys and variables --------------------------------------------------------------

@pytest.mark.parametrize(("text", "key"), [
    ("[refersh]\nenabled = false\n", "refersh"),
    ('[[sink]]\npath = "/tmp/t"\n', "sink"),
])
def test_an_unknown_table_is_refused_by_the_cli(tmp_path: Path, text: str, key: str) -> None:
    path = config(tmp_path, text)
    assert refused(["status", "--config", str(path)]) == f"credsync: {path}: {key}: {UNKNOWN}"


def test_a_key_above_every_table_is_unknown(tmp_path: Path) -> None:
    # ``keychain = false`` written before ``[claude]`` is a top-level key, not claude.keychain.
    path = tmp_path / "c.toml"
    path.write_text('keychain = false\n[claude]\nconfig_dirs = ["/tmp/x"]\n')
    assert problems(path) == [f"{path}: keychain: {UNKNOWN}"]


def test_an_unknown_variable_is_refused_by_the_cli(tmp_path: Path) -> None:
    path = config(tmp_path, "")
    line = refused(["status", "--config", str(path)], {"CREDSYNC_REFRSH__ENABLED": "false"})
    assert line.startswith("credsync: environment variable CREDSYNC_REFRSH__ENABLED: unknown "
                           "variable; unset it or fix its spelling"), line


@pytest.mark.parametrize("name", ["CREDSYNC_REFRESH_ENABLED", "CREDSYNC_SINK",
                                  "CREDSYNC_REFRESH__ENABLED__X", "CREDSYNC_NOTIFY__WEBHOOKS"])
def test_misspelt_variables_are_named(tmp_path: Path, name: str) -> None:
    lines = problems(config(tmp_path, ""), {name: "x"})
    assert len(lines) == 1 and lines[0].startswith(f"environment variable {name}: unknown"), lines


def test_variables_read_on_purpose_are_not_settings_and_not_refused(tmp_path: Path) -> None:
    path = config(tmp_path, "")
    env = {"CREDSYNC_EVENT": "restored", "CREDSYNC_PREFIX": "/x", "CREDSYNC_TEST_UNIT": "u",
           "credsync_refresh__enabled": "false", "CREDSYNC_SINKS": "[]"}
    with clean_env(env):
        settings, _ = load_settings(path)
    assert settings.refresh.enabled is False


# --- which file ------------------------------------------------------------------------------

def test_a_missing_file_named_by_credsync_config_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    line = refused(["status"], {"CREDSYNC_CONFIG": str(missing)})
    assert line.startswith(f"credsync: {missing}: no such config file (named by CREDSYNC_CONFIG)")


def test_credsync_config_with_an_unset_variable_is_an_error(tmp_path: Path) -> None:
    lines = problems(None, {"CREDSYNC_CONFIG": "$UNSET_FOR_TEST/c.toml"})
    assert lines == ["environment variable CREDSYNC_CONFIG: $UNSET_FOR_TEST is not set (or is "
                     f"empty); {PATH_RULE}"]


def test_dollar_in_an_explicit_config_path_is_literal(tmp_path: Path) -> None:
    literal = tmp_path / "$X"
    literal.mkdir()
    config(literal, "[refresh]\nenabled = false\n")
    other = tmp_path / "other"
    other.mkdir()
    config(other, "[refresh]\nenabled = true\n")
    with clean_env({"X": str(other)}):
        settings, found = load_settings(literal / "c.toml")
    assert found == literal / "c.toml" and settings.refresh.enabled is False


def test_a_directory_as_the_config_file_is_one_line(tmp_path: Path) -> None:
    line = refused(["status", "--config", str(tmp_path)])
    assert line == (f"credsync: {tmp_path}: a directory, not a config file; point --config at "
                    f"the file itself (e.g. {tmp_path / 'config.toml'})")


def test_an_unreadable_config_file_is_one_line() -> None:
    # Root reads a mode-000 file anyway; this one refuses every reader (EINVAL).
    unreadable = Path("/proc/self/clear_refs")
    if not unreadable.exists():
        pytest.skip("needs Linux procfs")
    line = refused(["status", "--config", str(unreadable)])
    assert line == (f"credsync: cannot read {unreadable}: Invalid argument; fix its "
                    "permissions, or point --config at the config file")


# --- a file someone else could change ---------------------------------------------------------

def test_a_world_writable_config_file_is_refused(tmp_path: Path) -> None:
    path = config(tmp_path, "")
    path.chmod(0o666)
    line = refused(["status", "--config", str(path)])
    assert line.startswith(f"credsync: {path}: the config file is writable by group or others")
    assert line.endswith(f"chmod go-w {path}")


def test_a_config_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a file away")
    path = config(tmp_path, "")
    os.chown(path, 12345, -1)
    (line,) = problems(path)
    assert line.startswith(f"{path}: the config file is owned by uid 12345, neither you")


def test_a_group_writable_directory_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    path = config(shared, "")
    shared.chmod(0o777)
    (line,) = problems(path)
    assert line == (f"{shared}: the config file's directory is writable by group or others, "
                    "and it chooses the token URL, the sinks and notify.command; "
                    f"chmod go-w {shared}")
    shared.chmod(0o1777)  # like /tmp: others cannot replace our file
    with clean_env():
        load_settings(path)


def test_a_symlinked_config_is_checked_where_it_points(tmp_path: Path) -> None:
    target = config(tmp_path, "", name="real.toml")
    target.chmod(0o662)
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    (line,) = problems(link)
    assert line.startswith(f"{target}: the config file is writable by group or others")


# --- paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["rel/.claude", "~nosuchuser/.claude", "$UNSET_FOR_TEST/.claude",
                                   "${UNSET_FOR_TEST}/x"])
@pytest.mark.parametrize(("template", "where"), [
    ('[claude]\nconfig_dirs = ["{v}"]\n', "claude.config_dirs"),
    ('[[sinks]]\npath = "{v}"\n', "sinks[0].path"),
    ('[codex]\nhomes = ["/ok", "{v}"]\n', "codex.homes"),
])
def test_a_path_that_is_not_absolute_is_refused(tmp_path: Path, value: str, template: str,
                                                where: str) -> None:
    path = config(tmp_path, template.replace("{v}", value))
    (line,) = problems(path)
    assert line.startswith(f"{path}: {where}: ") and PATH_RULE in line, line


@pytest.mark.parametrize("key", ["state_dir", "log_file"])
def test_agent_paths_must_be_absolute(tmp_path: Path, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[agent]\n{key} = "$UNSET_FOR_TEST/x"\n')
    (line,) = problems(path)
    assert line.startswith(f"{path}: agent.{key}: $UNSET_FOR_TEST is not set") and \
        PATH_RULE in line, line


def test_set_variables_and_home_expand(tmp_path: Path) -> None:
    path = config(tmp_path, '[claude]\nconfig_dirs = ["$BASE_FOR_TEST/a", "~/b"]\n')
    with clean_env({"BASE_FOR_TEST": str(tmp_path)}):
        settings, _ = load_settings(path)
    assert settings.claude.config_dirs == [tmp_path / "a", Path.home() / "b"]


def test_a_relative_variable_is_refused_in_the_environment(tmp_path: Path) -> None:
    lines = problems(config(tmp_path, ""), {"CREDSYNC_CLAUDE__CONFIG_DIRS": '["rel"]'})
    assert lines[0].startswith("environment variable CREDSYNC_CLAUDE__CONFIG_DIRS: a relative")


# --- F4: sinks on files credsync already owns -------------------------------------------------

def collision(tmp_path: Path, sinks: list[str], link: bool = False) -> list[str]:
    text = f'[claude]\nconfig_dirs = ["{tmp_path}/c"]\n'
    text = text.replace('log_file = ""', "")
    body = "".join(f'[[sinks]]\npath = "{p}"\n' for p in sinks)
    path = tmp_path / "c.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\nlog_file = "{tmp_path}/log"\n'
                    + text + body)
    return problems(path)


def test_a_sink_on_a_credential_file_is_refused(tmp_path: Path) -> None:
    (line,) = collision(tmp_path, [f"{tmp_path}/c/.credentials.json"])
    assert line == (f"{tmp_path}/c.toml: sinks[0].path: {tmp_path}/c/.credentials.json is the "
                    f"credential file of config dir {tmp_path}/c; point the sink at a file of "
                    "its own")


def test_a_sink_reaching_a_credential_file_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "c")
    (line,) = collision(tmp_path, [f"{tmp_path}/alias/.credentials.json"])
    assert "sinks[0].path" in line and "the credential file of config dir" in line


@pytest.mark.parametrize(("sinks", "index", "what"), [
    (["{t}/state/journal"], 0, "inside the state dir"),
    (["{t}/state"], 0, "inside the state dir"),
    (["{t}/log"], 0, "the log file (agent.log_file)"),
    (["{t}/s", "{t}/other", "{t}/s"], 2, "also the path of sinks[0]"),
])
def test_sink_collisions_are_named(tmp_path: Path, sinks: list[str], index: int,
                                   what: str) -> None:
    (line,) = collision(tmp_path, [s.replace("{t}", str(tmp_path)) for s in sinks])
    assert line.startswith(f"{tmp_path}/c.toml: sinks[{index}].path: ") and what in line, line


def test_a_sink_collision_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = config(tmp_path, f'[claude]\nconfig_dirs = ["{tmp_path}/c"]\n')
    sinks = f'[{{"path": "{tmp_path}/c/.credentials.json", "format": "claude"}}]'
    (line,) = problems(path, {"CREDSYNC_SINKS": sinks})
    assert line.startswith("environment variable CREDSYNC_SINKS: sinks[0].path: ")


def test_the_cli_refuses_a_sink_on_a_credential_file(tmp_path: Path) -> None:
    path = config(tmp_path, f'[claude]\nconfig_dirs = ["{tmp_path}/c"]\nkeychain = false\n'
                            f'[[sinks]]\npath = "{tmp_path}/c/.credentials.json"\n')
    line = refused(["status", "--config", str(path)])
    assert "sinks[0].path" in line and "credential file" in line


# --- refresh.max_lifetime_s and the token URL -------------------------------------------------

def test_max_lifetime_defaults_to_a_day_and_must_be_positive(tmp_path: Path) -> None:
    assert RefreshSection().max_lifetime_s == 86400
    path = config(tmp_path, "[refresh]\nmax_lifetime_s = 0\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}: refresh.max_lifetime_s: ") and "more than 0" in line


def test_a_token_url_with_a_password_is_refused_and_never_shown(tmp_path: Path) -> None:
    line = refused(["status", "--config", str(config(tmp_path, ""))],
                   {"CREDSYNC_REFRESH__TOKEN_URL": "http://u:PW@127.0.0.1:9/x"})
    assert "CREDSYNC_REFRESH__TOKEN_URL" in line and "user name or password" in line
    assert "PW" not in line
    short = config(tmp_path, '[refresh]\ntoken_url = "http://u:pw@h/"\n', name="s.toml")
    (line,) = problems(short)
    assert "refresh.token_url" in line and "pw@" not in line


def test_a_webhook_with_userinfo_is_allowed() -> None:
    with clean_env({"CREDSYNC_NOTIFY__WEBHOOK": "https://u:S3CRET@h.invalid/x"}):
        assert Settings().notify.webhook == "https://u:S3CRET@h.invalid/x"


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:PW@127.0.0.1:9/x?k=S#f", "http://127.0.0.1:9/x"),
    ("https://platform.claude.com/v1/oauth/token", "https://platform.claude.com/v1/oauth/token"),
    ("http://[::1]:8080/t", "http://[::1]:8080/t"),
    ("http://h:99999/", "(an unparsable URL)"),
])
def test_safe_url_drops_userinfo_query_and_fragment(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_the_example_config_loads_and_documents_every_refresh_key() -> None:
    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    with clean_env():
        settings, _ = load_settings(example)
    assert settings.refresh.max_lifetime_s == 86400
    text = example.read_text()
    assert all(f"{key} =" in text for key in RefreshSection.model_fields)
    codex = text[text.index("[codex]"):]
    assert all(f"{key} =" in codex for key in CodexSection.model_fields)


# --- [codex] and an empty [claude] ------------------------------------------------------------

def codex_settings(tmp_path: Path, text: str = "", env: Mapping[str, str] | None = None,
                   auth_json: bool = False) -> Settings:
    """Settings loaded with HOME a fresh directory of the test's (with ``~/.codex/auth.json``
    when asked), no CODEX_HOME but from ``env``."""
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    if auth_json:
        (home / ".codex" / "auth.json").write_text("{}")
    with clean_env({"HOME": str(home), **(env or {})}):
        settings, _ = load_settings(config(tmp_path, text))
    return settings


def test_the_codex_side_is_off_without_codex_home_or_a_codex_login(tmp_path: Path) -> None:
    codex = codex_settings(tmp_path).codex
    assert codex.homes == [] and not codex.enabled
    assert (codex.token_url, codex.client_id, codex.keychain) == \
        (CODEX_TOKEN_URL, CODEX_CLIENT_ID, True)
    assert codex_settings(tmp_path, env={"CODEX_HOME": ""}).codex.homes == []


def test_the_codex_side_is_on_when_the_default_home_has_a_login(tmp_path: Path) -> None:
    codex = codex_settings(tmp_path, auth_json=True).codex
    assert codex.homes == [tmp_path / "home" / ".codex"] and codex.enabled


def test_codex_home_chooses_the_default_home(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = tmp_path / "ch"
    env = {"CODEX_HOME": str(chosen)}
    assert codex_settings(tmp_path, env=env, auth_json=True).codex.homes == [chosen]
    monkeypatch.chdir(tmp_path)  # a relative CODEX_HOME is Codex's working dir's, as Codex has it
    assert codex_settings(tmp_path, env={"CODEX_HOME": "rel"}).codex.homes == [tmp_path / "rel"]


def test_listed_homes_expand_and_repeat_once(tmp_path: Path) -> None:
    text = '[codex]\nhomes = ["~/.codex", "$BASE_FOR_TEST/w", "~/.codex"]\nkeychain = false\n'
    codex = codex_settings(tmp_path, text, {"BASE_FOR_TEST": str(tmp_path)}).codex
    assert codex.homes == [tmp_path / "home" / ".codex", tmp_path / "w"]
    assert codex.keychain is False
    assert codex_settings(tmp_path, '[codex]\nhomes = []\n', auth_json=True).codex.homes == []


@pytest.mark.parametrize(("text", "where", "says"), [
    ('[codex]\nhomes = "rel"\n', "codex.homes", PATH_RULE),
    ("[codex]\nhomes = 5\n", "codex.homes", "a list of directory paths"),
    ('[codex]\nhomes = ["/a", 5]\n', "codex.homes[1]", "a list of directory paths"),
    ('[codex]\ntoken_url = "ftp://h/t"\n', "codex.token_url", "an http(s) URL"),
    ('[codex]\nclient_id = ""\n', "codex.client_id", "a non-empty string"),
    ('[codex]\nkeychain = "maybe"\n', "codex.keychain", "true or false"),
    ('[codex]\nclient_window_s = -1\n', "codex.client_window_s", "seconds, 0 or more"),
])
def test_bad_codex_values_are_one_line(tmp_path: Path, text: str, where: str,
                                       says: str) -> None:
    path = config(tmp_path, text)
    (line,) = problems(path)
    assert line.startswith(f"{path}: {where}: ") and says in line, line


def test_a_codex_token_url_with_a_password_is_refused_and_never_shown(tmp_path: Path) -> None:
    line = refused(["status", "--config", str(config(tmp_path, ""))],
                   {"CREDSYNC_CODEX__TOKEN_URL": "https://u:PW@127.0.0.1:9/oauth/token"})
    assert "CREDSYNC_CODEX__TOKEN_URL" in line and "user name or password" in line
    assert "PW" not in line
    path = config(tmp_path, '[codex]\ntoken_url = "http://u:pw@h/"\n', name="s.toml")
    (line,) = problems(path)
    assert line.startswith(f"{path}: codex.token_url: ") and "pw@" not in line


def test_codex_keys_come_from_the_environment(tmp_path: Path) -> None:
    env = {"CREDSYNC_CODEX__HOMES": f'["~/a", "{tmp_path}/b"]',
           "CREDSYNC_CODEX__TOKEN_URL": "http://127.0.0.1:8/oauth/token",
           "CREDSYNC_CODEX__CLIENT_ID": "app_other", "CREDSYNC_CODEX__KEYCHAIN": "false"}
    codex = codex_settings(tmp_path, '[codex]\nhomes = ["/from/file"]\n', env).codex
    assert codex.homes == [tmp_path / "home" / "a", tmp_path / "b"]
    assert (codex.token_url, codex.client_id, codex.keychain) == \
        ("http://127.0.0.1:8/oauth/token", "app_other", False)
    off = codex_settings(tmp_path, env={"CREDSYNC_CODEX__HOMES": "[]"}, auth_json=True)
    assert off.codex.homes == []


@pytest.mark.parametrize(("name", "value", "says"), [
    ("CREDSYNC_CODEX__HOMES", "~/a", "not valid JSON"),
    ("CREDSYNC_CODEX__HOMES", '["rel"]', "a relative path"),
    ("CREDSYNC_CODEX__HOME", '["/a"]', "unknown variable"),
])
def test_bad_codex_variables_name_the_variable(tmp_path: Path, name: str, value: str,
                                               says: str) -> None:
    (line,) = problems(config(tmp_path, ""), {name: value})
    assert line.startswith(f"environment variable {name}: ") and says in line, line


def test_the_codex_side_refreshes_with_refresh_timing_and_its_own_window(tmp_path: Path) -> None:
    text = '[refresh]\nat_fraction = 0.7\nclient_window_s = 900\n' \
           '[codex]\ntoken_url = "http://127.0.0.1:8/t"\n'
    settings = codex_settings(tmp_path, text)
    assert settings.codex.client_window_s == 300
    section = settings.codex_refresh()
    assert (section.at_fraction, section.jitter, section.margin_s, section.timeout_s) == \
        (0.7, settings.refresh.jitter, settings.refresh.margin_s, settings.refresh.timeout_s)
    assert (section.client_window_s, section.token_url, section.client_id) == \
        (300, "http://127.0.0.1:8/t", CODEX_CLIENT_ID)
    assert settings.refresh.client_window_s == 900  # the Claude side's own, unchanged


def test_a_sink_on_a_codex_login_file_is_refused(tmp_path: Path) -> None:
    text = f'[codex]\nhomes = ["{tmp_path}/cx"]\n[[sinks]]\npath = "{tmp_path}/cx/auth.json"\n'
    path = config(tmp_path, text)
    (line,) = problems(path)
    assert line == (f"{path}: sinks[0].path: {tmp_path}/cx/auth.json is the auth.json of Codex "
                    f"home {tmp_path}/cx (codex.homes); point the sink at a file of its own")


def test_an_empty_config_dirs_turns_the_claude_side_off(tmp_path: Path) -> None:
    assert codex_settings(tmp_path, "[claude]\nconfig_dirs = []\n").claude.config_dirs == []
    env = {"CREDSYNC_CLAUDE__CONFIG_DIRS": "[]"}
    assert codex_settings(tmp_path, env=env).claude.config_dirs == []
