"""Settings: one TOML file, every key overridable from the environment.

Lookup: ``--config PATH``, else ``$CREDSYNC_CONFIG``, else the platform's user config dir. A
missing default file means the defaults; a missing file that was named is an error. Variables are
``CREDSYNC_<SECTION>__<KEY>`` (``CREDSYNC_SINKS`` takes a JSON list). Strict throughout: an
unknown key or variable is an error (a typo must not silently mean the default), paths must come
out absolute, and a config file someone else could change is refused (it chooses the token URL,
the sinks and ``notify.command``). Everything is validated here, before any runtime object is
built; problems come back as one ``ConfigError`` with one line per problem that names the source,
the problem and the accepted form. A line never shows a secret's value (``refresh.client_secret``,
``notify.webhook``), and any value it does show is shortened and token-like runs redacted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import sys
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from agent import paths
from agent.credential import redact
from agent.errors import ConfigError, StoreError
from agent.fsutil import read_bytes
from agent.locks.mkdirlock import OAUTH_REFRESH_STALE_S

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "CREDSYNC_"
CLAUDE_TOKEN_URL = "https://platform.claude.com/v1/oauth/token"
CLAUDE_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
CLAUDE_SCOPE = ("user:profile user:inference user:sessions:claude_code user:mcp_servers "
                "user:file_upload user:plugins")
CODEX_TOKEN_URL = "https://auth.openai.com/oauth/token"
CODEX_CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
# Codex refreshes on its own once the access token's exp is within 5 minutes.
CODEX_CLIENT_WINDOW_S = 300.0
# What Codex keeps its login in, in each home: the document and its two write locks.
CODEX_LOGIN_FILES = ("auth.json", "auth.lock", "auth.json.lock")
# Attempts a refresh may make while it holds the locks; the lock invariant depends on it.
ATTEMPTS_PER_LOCK = 2
# A credsync config is a few hundred bytes; a bigger file is the wrong file (or an attack).
MAX_CONFIG_BYTES = 1_000_000
# Values an error line never shows, whatever is wrong with them: a webhook URL holds a secret
# in its path or query as often as not.
SECRET_LOCS = frozenset({("refresh", "client_secret"), ("notify", "webhook"),
                         # a token URL may carry a password
                         ("refresh", "token_url"), ("codex", "token_url")})
# CREDSYNC_* variables that are not settings but are read or set on purpose: the config file's
# location; setup-agent.sh's prefix; what the notifier hands ``notify.command`` (which may well
# run credsync); the test suite's knobs.
NON_SETTING_VARS = frozenset({"CONFIG", "PREFIX", "EVENT", "TITLE", "BODY", "URGENCY",
                              "AFFECTED_DIRS", "TIME", "CRASH_CYCLES", "SOAK_MINUTES"})
NON_SETTING_PREFIXES = ("TEST_",)
PATH_RULE = paths.ABSOLUTE_RULE.removeprefix("expected ")
MAX_SHOWN_CHARS = 24  # sim and real tokens are longer
MAX_URL_CHARS = 2000


class Section(BaseModel):
    # No inf or nan: every number here is a time or a fraction, and inf would pass ``ge=0``.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _expand_path(value: Any) -> Any:
    if isinstance(value, str) and "\0" in value:
        raise ValueError("a path cannot hold a NUL character")
    return paths.expand(value) if isinstance(value, (str, Path)) else value


def safe_url(url: str) -> str:
    """``url`` as it may be shown: scheme, host, port and path; never a user name, password,
    query or fragment (where a secret travels when it travels in a URL)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(an unparsable URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _no_userinfo(value: str) -> str:
    if "@" in urllib.parse.urlsplit(value).netloc:
        # Credentials for the token endpoint do not belong in a URL: it is logged, shown in
        # status and recorded in refresh.json.
        raise ValueError("a token URL cannot hold a user name or password (user:password@); "
                         "remove them (refresh.client_secret is the place for a secret)")
    return value


def _http_url(value: str | None) -> str | None:
    """The URL, if the HTTP client can send to it; the messages never repeat it (a secret)."""
    if value is None:
        return None
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("a URL cannot hold spaces or control characters")
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"a URL of more than {MAX_URL_CHARS} characters")
    if not _valid_host_and_port(value):
        # Checked here, not when the first refresh is due: the HTTP client refuses these.
        raise ValueError("not a valid URL (check the host and port; write an international "
                         "host name in its xn-- form)")
    return value


def _valid_host_and_port(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        port, host = parts.port, parts.hostname
    except ValueError:
        return False
    if not host or not host.isascii() or port == 0:
        return False
    try:
        if "[" in parts.netloc:
            ipaddress.IPv6Address(host)
        elif re.fullmatch(r"[0-9]+(\.[0-9]+){3}", host):
            ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


class AgentSection(Section):
    state_dir: Path = Field(default_factory=paths.default_state_dir,
                            description=f"a directory path; {PATH_RULE}")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="one of debug, info, warning, error")
    log_file: Path | None = Field(default_factory=paths.default_log_file,
                                  description=f'a file path, or "" for no log file; {PATH_RULE}')
    debounce_ms: int = Field(10, ge=0, le=5000, description="milliseconds, 0 to 5000")

    _paths = field_validator("state_dir", mode="before")(_expand_path)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_file", mode="before")
    @classmethod
    def _log_file(cls, value: Any) -> Any:
        return None if value in ("", None) else _expand_path(value)


def _path_list(value: Any) -> Any:
    """A list of paths (one string is a list of one), each expanded and made absolute."""
    if isinstance(value, str):
        value = [value]
    return [_expand_path(v) for v in value] if isinstance(value, list) else value


def _unique(value: list[Path]) -> list[Path]:
    """The paths in order, each once; an empty list turns that side off."""
    return list(dict.fromkeys(value))


class ClaudeSection(Section):
    config_dirs: list[Path] = Field(
        default_factory=lambda: [paths.current_claude_config_dir()],
        description='a list of directory paths, e.g. ["~/.claude", "~/work/.claude"]; '
                    f'{PATH_RULE}')
    keychain: bool = Field(True, description="true or false")
    # macOS: CLAUDE_SECURESTORAGE_CONFIG_DIR as the sessions have it (then every config dir
    # shares one Keychain item); by default what credsync's own environment says.
    securestorage_dir: str | None = Field(
        default_factory=lambda: os.environ.get("CLAUDE_SECURESTORAGE_CONFIG_DIR"),
        description='a directory path as Claude Code sessions have it in '
                    'CLAUDE_SECURESTORAGE_CONFIG_DIR, or "" for the default')

    _dirs = field_validator("config_dirs", mode="before")(_path_list)
    _unique_dirs = field_validator("config_dirs")(_unique)


def default_codex_homes(env: Mapping[str, str] | None = None) -> list[Path]:
    """The Codex side is on when ``$CODEX_HOME`` is set (that home, made absolute the way Codex
    resolves it) or ``~/.codex/auth.json`` exists (``~/.codex``); else off (no home)."""
    env = os.environ if env is None else env
    value = env.get("CODEX_HOME")
    if value:
        return [Path(os.path.abspath(os.path.expanduser(value)))]
    default = Path(os.path.expanduser("~/.codex"))
    return [default] if default.is_absolute() and (default / "auth.json").exists() else []


class CodexSection(Section):
    """OpenAI's Codex CLI: every ``CODEX_HOME`` whose login is kept fresh and in step. The
    refresh timing is ``[refresh]``'s (``at_fraction``, ``jitter``, ``margin_s``) with Codex's
    own 5-minute window (``client_window_s``)."""

    homes: list[Path] = Field(
        default_factory=default_codex_homes,
        description='a list of directory paths (each a CODEX_HOME), e.g. ["~/.codex", '
                    f'"~/work/.codex"], or [] for none; {PATH_RULE}')
    token_url: str = Field(CODEX_TOKEN_URL, pattern=r"^https?://",
                           description="an http(s) URL without user:password@")
    _token_url = field_validator("token_url")(_http_url)
    _token_url_userinfo = field_validator("token_url")(_no_userinfo)
    client_id: str = Field(CODEX_CLIENT_ID, min_length=1, description="a non-empty string")
    keychain: bool = Field(True, description="true or false")
    # Codex refreshes by itself within 5 minutes of the access token's exp (0.171.0): a
    # setting only for a Codex that differs (and for the simulated one, on short tokens).
    client_window_s: float = Field(CODEX_CLIENT_WINDOW_S, ge=0,
                                   description="seconds, 0 or more (Codex's own window)")

    _homes = field_validator("homes", mode="before")(_path_list)
    _unique_homes = field_validator("homes")(_unique)

    @property
    def enabled(self) -> bool:
        return bool(self.homes)



SinkFormat = Literal["claude", "access-token", "env", "json"]


class SinkEntry(Section):
    path: Path = Field(description=f"a file path; {PATH_RULE}")
    format: SinkFormat = Field("access-token",
                               description="one of claude, access-token, env, json")
    env_var: str = Field("CLAUDE_CODE_OAUTH_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                         description="a shell variable name")

    _paths = field_validator("path", mode="before")(_expand_path)


class RefreshSection(Section):
    enabled: bool = Field(True, description="true or false")
    at_fraction: float = Field(0.8, gt=0, lt=1, description="a number between 0 and 1")
    jitter: float = Field(0.05, ge=0, le=0.2, description="a fraction of the lifetime, 0 to 0.2")
    client_window_s: float = Field(300, ge=0, description="seconds, 0 or more")
    margin_s: float = Field(60, ge=0, description="seconds, 0 or more")
    nominal_lifetime_s: float = Field(8 * 3600, gt=0, description="seconds, more than 0")
    hold_cli_locks: bool = Field(
        True, description="true or false: hold the CLI's refresh locks while a login is kept, "
                          "so that sessions waking after a sleep wait for credsync")
    max_lifetime_s: float = Field(
        86400, gt=0, description="seconds, more than 0: a credential claiming to expire later "
                                 "than this from now never wins")
    token_url: str = Field(CLAUDE_TOKEN_URL, pattern=r"^https?://",
                           description="an http(s) URL without user:password@")
    _token_url = field_validator("token_url")(_http_url)
    _token_url_userinfo = field_validator("token_url")(_no_userinfo)
    client_id: str = Field(CLAUDE_CLIENT_ID, min_length=1, description="a non-empty string")
    client_secret: str | None = Field(None, description="a string (oauth2 style only)")
    scope: str = Field(CLAUDE_SCOPE, description="space-separated scopes")
    style: Literal["claude", "oauth2"] = Field("claude", description="claude or oauth2")
    timeout_s: float = Field(
        20, gt=0, lt=OAUTH_REFRESH_STALE_S / ATTEMPTS_PER_LOCK,
        description=f"seconds, under {OAUTH_REFRESH_STALE_S / ATTEMPTS_PER_LOCK:g} "
                    "(the CLI lock's stale time over the attempts per lock)")


class NotifySection(Section):
    desktop: bool = Field(True, description="true or false")
    command: list[str] = Field(default_factory=list, description='an argv list, e.g. ["cmd"]')
    webhook: str | None = Field(None, pattern=r"^https?://", description="an http(s) URL")
    _webhook = field_validator("webhook")(_http_url)
    remind_every_h: float = Field(4, gt=0, description="hours, more than 0")
    warn_before_days: float = Field(3, ge=0, description="days, 0 or more")
    notify_on_restore: bool = Field(True, description="true or false")


def _optional_path(value: Any) -> Any:
    return None if value in ("", None) else _expand_path(value)


class ClusterSection(Section):
    """Tunables of the multi-machine cluster. Membership itself (login id, Redis URL, this
    member's id) is state, written by ``credsync cluster init``/``join`` into the login's
    state dir, never here: see ``agent.cluster.membership``."""

    password_file: Path | None = Field(
        None, description=f'a file path (mode 0600) holding the Redis password, or ""; '
                          f'{PATH_RULE}')
    ca_file: Path | None = Field(
        None, description=f'a PEM file of CA certificates for rediss://, or "" for the '
                          f'system store; {PATH_RULE}')
    quarantine_s: float = Field(
        45, ge=0, le=3600, description="seconds, 0 to 3600: no claim for this long after Redis "
                                       "lost its data (every member re-seeds first)")
    claim_valid_s: float = Field(
        10, gt=0, le=60, description="seconds, more than 0 and at most 60: a claim older than "
                                     "this when the request would go is released instead")
    connect_timeout_s: float = Field(2, gt=0, le=30, description="seconds, more than 0, to 30")
    socket_timeout_s: float = Field(2, gt=0, le=30, description="seconds, more than 0, to 30")
    heartbeat_s: float = Field(30, ge=1, le=3600, description="seconds, 1 to 3600")
    echo_every_s: float = Field(2, gt=0, le=60, description="seconds, more than 0, to 60")
    echo_deadline_s: float = Field(1.5, gt=0, le=60, description="seconds, more than 0, to 60")
    fallback: Literal["never", "solo"] = Field(
        "never", description='"never" or "solo" (refresh alone after a long outage when no '
                             'other member was seen for 24 h)')

    _paths = field_validator("password_file", "ca_file", mode="before")(_optional_path)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
        case_sensitive=False, validate_default=True)

    agent: AgentSection = Field(default_factory=lambda: AgentSection(),
                                description="a [agent] table")
    claude: ClaudeSection = Field(default_factory=lambda: ClaudeSection(),
                                  description="a [claude] table")
    sinks: list[SinkEntry] = Field(default_factory=list,
                                   description="a list of [[sinks]] tables")
    refresh: RefreshSection = Field(default_factory=lambda: RefreshSection(),
                                    description="a [refresh] table")
    codex: CodexSection = Field(default_factory=lambda: CodexSection(),
                                description="a [codex] table")
    notify: NotifySection = Field(default_factory=lambda: NotifySection(),
                                  description="a [notify] table")
    cluster: ClusterSection = Field(default_factory=lambda: ClusterSection(),
                                    description="a [cluster] table")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        document = _TOML_DOC.get("doc")
        if document is not None:
            # The document read (and checked) once, not the file again: it cannot change between
            # the ownership check and its use.
            sources.append(InitSettingsSource(settings_cls, init_kwargs=document))
        return tuple(sources)

    def codex_refresh(self) -> RefreshSection:
        """``[refresh]`` as the Codex side schedules and sends with it: the same timing
        tunables, Codex's 5-minute client window, ``[codex]``'s endpoint and client id."""
        return self.refresh.model_copy(update={
            "client_window_s": self.codex.client_window_s,
            "token_url": self.codex.token_url, "client_id": self.codex.client_id})

    @model_validator(mode="after")
    def _no_sink_collisions(self) -> Settings:
        problems = sink_collisions(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _same_file(a: Path, b: Path) -> bool:
    """The same path, as written or once symlinks are resolved."""
    return os.path.abspath(a) == os.path.abspath(b) or os.path.realpath(a) == os.path.realpath(b)


def _inside(path: Path, directory: Path) -> bool:
    for p, d in ((os.path.abspath(path), os.path.abspath(directory)),
                 (os.path.realpath(path), os.path.realpath(directory))):
        if os.path.commonpath([p, d]) == d:
            return True
    return False


def sink_collisions(settings: Settings) -> list[str]:
    """One line per sink whose path is also another file credsync reads or writes: a sink on a
    config dir's credential file would overwrite the document with a bare token, and the two
    stores would "restore" each other forever."""
    problems = []
    for index, sink in enumerate(settings.sinks):
        what = _collision(settings, index, sink.path)
        if what:
            problems.append(f"sinks[{index}].path: {sink.path} is {what}; point the sink at a "
                            "file of its own")
    return problems


def _collision(settings: Settings, index: int, path: Path) -> str | None:
    for config_dir in settings.claude.config_dirs:
        if _same_file(path, config_dir / ".credentials.json"):
            return f"the credential file of config dir {config_dir}"
    for home in settings.codex.homes:
        for name in CODEX_LOGIN_FILES:
            if _same_file(path, home / name):
                return f"the {name} of Codex home {home} (codex.homes)"
    if _inside(path, settings.agent.state_dir):
        return f"inside the state dir {settings.agent.state_dir} (agent.state_dir)"
    log_file = settings.agent.log_file
    if log_file is not None and _same_file(path, log_file):
        return "the log file (agent.log_file)"
    for other, sink in enumerate(settings.sinks[:index]):
        if _same_file(path, sink.path):
            return f"also the path of sinks[{other}]"
    return None


# pydantic-settings builds sources from the class; the document read for this load is passed here.
_TOML_DOC: dict[str, dict[str, Any] | None] = {"doc": None}


def config_path(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """``--config``, else ``$CREDSYNC_CONFIG``, else the user config dir (the same rule as
    ``agent.cli.tokennote.resolve_config``, which `credsync token` uses without this module).

    ``--config`` is taken literally but for ``~`` (the shell expanded any ``$`` it meant);
    ``$CREDSYNC_CONFIG`` may use ``~`` and ``$VARS`` that are set."""
    env = os.environ if env is None else env
    if explicit is not None:
        return paths.expand_literal(explicit)
    value = env.get("CREDSYNC_CONFIG")
    if value:
        # A plain relative value is taken from the working dir, as the fast path does.
        plain = not value.startswith("~") and "$" not in value
        try:
            return paths.expand_literal(value) if plain else paths.expand(value, env)
        except ValueError as exc:
            raise ConfigError([f"environment variable CREDSYNC_CONFIG: {exc}"]) from exc
    return paths.default_config_file()


def _owner_problem(path: Path, st: os.stat_result, what: str) -> str | None:
    uid = os.getuid()
    if st.st_uid not in (0, uid):
        return (f"{path}: {what} is owned by uid {st.st_uid}, neither you (uid {uid}) nor root, "
                f"and it chooses the token URL, the sinks and notify.command; use a {what} of "
                f"your own (chown {uid} {path})")
    if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return (f"{path}: {what} is writable by group or others, and it chooses the token URL, "
                f"the sinks and notify.command; chmod go-w {path}")
    return None


def _check_protected(path: Path) -> None:
    """Refuse a config file that someone but us (or root) could change, directly or by
    replacing it in its directory."""
    if not hasattr(os, "getuid"):
        return  # Windows: ACLs, not modes; the user profile is private by default
    real = Path(os.path.realpath(path))
    checks = [(real, "the config file")]
    checks += [(d, "the config file's directory") for d in dict.fromkeys([path.parent,
                                                                          real.parent])]
    for target, what in checks:
        try:
            problem = _owner_problem(target, os.stat(target), what)
        except OSError as exc:
            problem = f"{target}: cannot be inspected ({exc.strerror or exc}); check the path"
        if problem:
            raise ConfigError([problem])


def _check_toml(path: Path) -> dict[str, Any] | None:
    """The file's document, after its size, encoding, syntax and protection were checked;
    None when there is no file."""
    if path.is_dir():
        raise ConfigError([f"{path}: a directory, not a config file; point --config at the "
                           f"file itself (e.g. {path / 'config.toml'})"])
    try:
        raw = read_bytes(path, MAX_CONFIG_BYTES)
    except StoreError as exc:
        raise ConfigError([f"{exc}; fix its permissions, or point --config at the config file"]) \
            from exc
    if raw is None:
        return None
    _check_protected(path)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: over {MAX_CONFIG_BYTES} bytes, too big for a credsync "
                           "config; check the path"])
    try:
        document: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}; fix the syntax at that line"]) \
            from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.reason} at byte {exc.start}); "
                           "save it as UTF-8"]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{path}: nested too deeply to be a credsync config"]) from exc
    return document


def _env_name(loc: tuple[Any, ...]) -> str | None:
    """The environment variable that supplied the value at ``loc``, if one did."""
    keys = [str(p) for p in loc if not isinstance(p, int)]
    env = {k.upper(): k for k in os.environ}
    for depth in range(len(keys), 0, -1):
        name = ENV_PREFIX + "__".join(keys[:depth]).upper()
        if name in env:
            return env[name]
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _accepted(loc: tuple[Any, ...]) -> str:
    model: Any = Settings
    description = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return description or "see config.example.toml"
        info = fields[part]
        description = info.description
        annotation = info.annotation
        args = getattr(annotation, "__args__", ())
        model = next((a for a in (annotation, *args) if hasattr(a, "model_fields")), None)
    return description or "see config.example.toml"


def _printable(text: str) -> str:
    """One line, whatever a key, a path or a value holds (a newline in a TOML key, say)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _shown(loc: tuple[Any, ...], value: Any) -> str:
    """What an error line may say about the value it rejects."""
    keys = tuple(str(p) for p in loc if not isinstance(p, int))
    if keys[:2] in SECRET_LOCS or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, str) and len(value) > MAX_SHOWN_CHARS:
        # Long enough to be a token pasted into the wrong key: not repeated, even redacted.
        return f" (got a string of {len(value)} characters)"
    text = redact(repr(value))
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS] + "..."
    return f" (got {text})"


def _describe(error: Mapping[str, Any], path: Path) -> list[str]:
    loc = tuple(error.get("loc", ()))
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:  # a check across keys (sink collisions): its lines name their keys
        source = "environment variable CREDSYNC_SINKS" if _env_name(("sinks",)) else str(path)
        return [f"{source}: {line}" for line in msg.splitlines()]
    env_name = _env_name(loc)
    source = f"environment variable {env_name}" if env_name else f"{path}: {_dotted(loc)}"
    if error.get("type") == "extra_forbidden":
        return [f"{source}: unknown key; remove it or fix its spelling (see config.example.toml)"]
    got = _shown(loc, error.get("input"))
    if "; expected " in msg:  # the message already says what is accepted (paths)
        return [f"{source}: {msg}{got}"]
    return [f"{source}: {msg}{got}; expected {_accepted(loc)}"]


def _setting_name(rest: str) -> bool:
    """Is ``CREDSYNC_<rest>`` a setting: a top-level key or ``<SECTION>__<KEY>``?"""
    parts = rest.lower().split("__")
    fields = Settings.model_fields
    if len(parts) == 1:
        return parts[0] in fields
    if len(parts) != 2 or parts[0] not in fields:
        return False
    model = fields[parts[0]].annotation
    return parts[1] in getattr(model, "model_fields", {})


def unknown_env_vars(env: Mapping[str, str]) -> list[str]:
    """One line per CREDSYNC_* variable that is neither a setting nor read on purpose: a
    misspelt variable must not silently mean the default."""
    lines = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        rest = upper[len(ENV_PREFIX):]
        if rest in NON_SETTING_VARS or rest.startswith(NON_SETTING_PREFIXES) or \
                _setting_name(rest):
            continue
        lines.append(f"environment variable {name}: unknown variable; unset it or fix its "
                     "spelling (settings are CREDSYNC_<SECTION>__<KEY>, see config.example.toml)")
    return lines


def _takes_json(loc: tuple[str, ...]) -> bool:
    """Does the field at ``loc`` take a list or a table (a JSON value in the environment)?"""
    model: Any = Settings
    annotation: Any = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        annotation = fields[part].annotation
        model = annotation
    return hasattr(annotation, "model_fields") or typing.get_origin(annotation) in (list, dict)


def _env_problems(exc: SettingsError) -> list[str]:
    """One line per variable pydantic-settings could not parse as JSON."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = (match.group(1) if match else "").upper()
    lines = []
    for name, value in os.environ.items():
        upper = name.upper()
        if not field or not (upper == ENV_PREFIX + field
                             or upper.startswith(f"{ENV_PREFIX}{field}__")):
            continue
        loc = tuple(upper[len(ENV_PREFIX):].lower().split("__"))
        if not _takes_json(loc):
            continue
        try:
            json.loads(value)
        except ValueError:
            lines.append(f"environment variable {name}: not valid JSON; expected "
                         f"{_accepted(loc)}, written as JSON")
    return lines or [f"environment variables {ENV_PREFIX}{field or '*'}...: cannot be parsed "
                     "(lists and tables are written as JSON); fix or unset them"]


def load_settings(explicit: Path | None = None) -> tuple[Settings, Path]:
    """Load and validate; return the settings and the file they were looked up in."""
    path = config_path(explicit)
    try:
        settings, path = _load(path, explicit is not None)
    except ConfigError as exc:
        raise ConfigError([_printable(line) for line in exc.problems]) from exc
    return settings, path


def _load(path: Path, explicit: bool) -> tuple[Settings, Path]:
    unknown = unknown_env_vars(os.environ)
    if unknown:
        raise ConfigError(unknown)
    if explicit and not path.exists():
        raise ConfigError([f"{path}: no such config file; pass an existing file to --config"])
    if not explicit and os.environ.get("CREDSYNC_CONFIG") and not path.exists():
        raise ConfigError([f"{path}: no such config file (named by CREDSYNC_CONFIG); create it, "
                           "or fix or unset CREDSYNC_CONFIG"])
    _TOML_DOC["doc"] = _check_toml(path)
    try:
        return Settings(), path
    except ValidationError as exc:
        raise ConfigError([line for e in exc.errors(include_url=False)
                           for line in _describe(e, path)]) from exc
    except SettingsError as exc:
        raise ConfigError(_env_problems(exc)) from exc
    except OSError as exc:  # the file went away or changed since it was checked
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc}); try again"]) \
            from exc
    finally:
        _TOML_DOC["doc"] = None
