"""Configuration: YAML files under ``config/`` validated into typed models.

Every ``*.yaml``/``*.yml`` directly in the config directory is read, in name order, and
merged: mappings (``server``, ``storage``, ``feeds``, ``kinds``) key by key, lists
(``accounts``, ``teams``, ``sources``) appended. Errors name the file, the path inside it
(``sources[2].url``) and the problem. ``${VAR}`` takes a value from the environment
(``$${`` writes a literal ``${``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from icsfeed import redact
from icsfeed.sources import load_source_class
from icsfeed.sources.base import KindInfo, SourceContext, SourceSettings

#: the keys every source has; all others belong to its type's Settings
COMMON_SOURCE_KEYS = frozenset({"id", "type", "interval", "jitter", "enabled", "absence", "name"})

#: CSS3 colour names (RFC 7986 COLOR takes these), with the hex Apple's property wants
CSS_COLORS: dict[str, str] = {
    "red": "#ff0000", "crimson": "#dc143c", "firebrick": "#b22222", "darkred": "#8b0000",
    "orange": "#ffa500", "darkorange": "#ff8c00", "gold": "#ffd700", "goldenrod": "#daa520",
    "green": "#008000", "seagreen": "#2e8b57", "forestgreen": "#228b22", "teal": "#008080",
    "blue": "#0000ff", "royalblue": "#4169e1", "steelblue": "#4682b4", "dodgerblue": "#1e90ff",
    "navy": "#000080", "purple": "#800080", "slateblue": "#6a5acd", "mediumpurple": "#9370db",
    "hotpink": "#ff69b4", "deeppink": "#ff1493", "brown": "#a52a2a", "sienna": "#a0522d",
    "gray": "#808080", "grey": "#808080", "slategray": "#708090", "dimgray": "#696969",
    "black": "#000000", "darkgoldenrod": "#b8860b", "olive": "#808000", "darkcyan": "#008b8b",
    "tomato": "#ff6347", "coral": "#ff7f50", "chocolate": "#d2691e", "darkviolet": "#9400d3",
}

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ConfigError(Exception):
    """Config is invalid; ``problems`` are (file, path, message) triples."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{f}: {p}: {m}" if p else f"{f}: {m}" for f, p, m in problems))


def parse_duration(value: Any) -> timedelta:
    """Seconds (number), ``"90s"``, ``"5m"``, ``"1h30m"``, ``"2d"`` or ISO 8601 ``"PT1H"``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 5m")
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    match = re.fullmatch(r"(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
    if match and any(match.groups()):
        d, h, m, s = (int(g or 0) for g in match.groups())
        return timedelta(days=d, hours=h, minutes=m, seconds=s)
    match = re.fullmatch(r"p(?:(\d+)d)?(?:t(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?)?", text)
    if match and any(match.groups()):
        d, h, m, s = (int(g or 0) for g in match.groups())
        return timedelta(days=d, hours=h, minutes=m, seconds=s)
    raise ValueError(f"not a duration: {value!r} (use seconds, 5m, 1h, 2d or PT1H)")


def _check_timezone(value: str | None) -> str | None:
    if value is not None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as Europe/Berlin)") from None
    return value


def _check_color(value: str | None) -> str | None:
    if value is not None and value.lower() not in CSS_COLORS:
        raise ValueError(f"colour {value!r} is not a CSS3 colour name this server knows ({', '.join(sorted(CSS_COLORS))})")
    return value.lower() if value else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ModelT = TypeVar("_ModelT", bound=BaseModel)


class ServerConfig(_Model):
    """Where the web server listens, and the URL people reach it at."""

    base_url: str = "http://127.0.0.1:8080"
    bind: str = "127.0.0.1:8080"
    threads: int = Field(default=8, ge=1, le=256)
    admin_user: str | None = None
    admin_password: str | None = None
    #: peers (addresses or CIDRs) whose X-Forwarded-For/-Proto/-Host are believed: the reverse proxy
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> tuple[str, ...]:
        """Each entry as a normalised network ("127.0.0.1" -> "127.0.0.1/32")."""
        if value is None:
            return ()
        if isinstance(value, str):  # "127.0.0.1, 10.0.0.0/8", as ${ICSFEED_TRUSTED_PROXIES} may give it
            value = [v for v in re.split(r"[\s,]+", value) if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError("trusted_proxies must be a list of addresses or CIDRs, such as [127.0.0.1, 10.0.0.0/8]")
        out = []
        for entry in value:
            try:
                out.append(str(ipaddress.ip_network(str(entry).strip(), strict=False)))
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or CIDR") from None
        return tuple(out)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, not {value!r}")
        return value.rstrip("/")

    @field_validator("bind")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"bind must be host:port, not {value!r}")
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.bind.rpartition(":")
        return host.strip("[]"), int(port)


#: overrides ``storage.url`` (as ICSFEED_DATA does the data directory): one config, several databases
STORAGE_URL_ENV = "ICSFEED_STORAGE_URL"


class StorageConfig(_Model):
    """Any SQLAlchemy URL; by default SQLite in the data directory."""

    url: str | None = None
    #: connections each process keeps open to a database server (not SQLite), and how many
    #: more it may open under load: N processes need N × (pool_size + max_overflow) ≤ the
    #: server's max_connections
    pool_size: int = Field(default=5, ge=1, le=200)
    max_overflow: int = Field(default=5, ge=0, le=200)


def parse_size(value: Any) -> int:
    """Bytes: a number, or text like ``1MB``, ``500 kB``, ``2 MiB`` (kB/MB are 1,000-based)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or text like 1MB")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", str(value).lower())
    if not match:
        raise ValueError(f"not a size: {value!r} (use bytes, or 500kB, 1MB, 2MiB)")
    unit = match.group(2) or "b"
    factor = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}[unit]
    return int(float(match.group(1)) * factor)


class BudgetConfig(_Model):
    """A feed's size budget (``feeds.budget``, or an account's or team's ``budget``): what
    Google Calendar is reported to keep of a subscribed feed. Unset keys take the global
    setting, then the default (1 MB, 1,000 events; insight flags and maintenance windows
    stay individual while anything else can be rolled up)."""

    max_bytes: int | None = Field(default=None, ge=10_000, le=10**9)
    max_events: int | None = Field(default=None, ge=10, le=1_000_000)
    #: kinds never rolled up while shrinking the window is still possible
    keep_individual: list[str] | None = None

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)


class FeedDefaults(_Model):
    """What every feed gets unless an account says otherwise."""

    refresh_interval: timedelta = timedelta(hours=1)
    window_back_days: int = Field(default=90, ge=0, le=3660)
    window_ahead_days: int = Field(default=30, ge=0, le=3660)
    #: host part of UIDs; default: the host of server.base_url
    uid_host: str | None = None
    method_publish: bool = True
    organizer_name: str = "icsfeed"
    organizer_email: str = "icsfeed@localhost"
    color: str = "steelblue"
    #: longest SUMMARY and DESCRIPTION (characters) before they are cut, to keep every client happy
    max_title: int = Field(default=255, ge=16)
    max_detail: int = Field(default=4000, ge=64)
    timezone: str = "UTC"
    budget: BudgetConfig = BudgetConfig()

    _tz = field_validator("timezone")(_check_timezone)
    _color = field_validator("color")(_check_color)

    @field_validator("refresh_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)


class KindConfig(_Model):
    """How a kind of event looks: icon, colour, all-day or timed, default length."""

    icon: str
    color: str
    color_hex: str | None = None
    all_day: bool = False
    duration: timedelta = timedelta(hours=1)
    label: str | None = None

    _color = field_validator("color")(_check_color)

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @property
    def hex(self) -> str:
        return self.color_hex or CSS_COLORS[self.color]


BUILTIN_KINDS: dict[str, dict[str, Any]] = {
    "alert": {"icon": "🚨", "color": "red", "duration": "1h", "label": "Alert"},
    "backup": {"icon": "💾", "color": "royalblue", "duration": "30m", "label": "Backup"},
    "ticket": {"icon": "🎫", "color": "darkorange", "duration": "30m", "label": "Ticket"},
    "maintenance": {"icon": "🔧", "color": "slategray", "duration": "2h", "label": "Maintenance"},
    "certificate": {"icon": "🔒", "color": "seagreen", "all_day": True, "label": "Certificate"},
    "birthday": {"icon": "🎂", "color": "hotpink", "all_day": True, "label": "Server birthday"},
    "insight": {"icon": "⚠️", "color": "gold", "all_day": True, "label": "Insight"},
}


class AccountConfig(_Model):
    """A customer: the keys origins use for it, and how its feed looks."""

    id: str = Field(pattern=_ID)
    name: str
    keys: list[str] = Field(default_factory=list)
    timezone: str | None = None
    window_back_days: int | None = Field(default=None, ge=0, le=3660)
    window_ahead_days: int | None = Field(default=None, ge=0, le=3660)
    token_version: int = Field(default=1, ge=1)
    color: str | None = None
    budget: BudgetConfig | None = None

    _tz = field_validator("timezone")(_check_timezone)
    _color = field_validator("color")(_check_color)

    @field_validator("keys", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, list) else value

    @property
    def match_keys(self) -> set[str]:
        """Keys as routing compares them: the id too, case-insensitive."""
        return {k.strip().lower() for k in [self.id, *self.keys]}


class TeamConfig(_Model):
    """A team-wide feed: accounts ("*" = all, also events no account claims), kinds, severity."""

    id: str = Field(pattern=_ID)
    name: str
    accounts: Literal["*"] | list[str] = "*"
    kinds: list[str] | None = None
    min_severity: str | None = None
    token_version: int = Field(default=1, ge=1)
    color: str | None = None
    budget: BudgetConfig | None = None

    _color = field_validator("color")(_check_color)


class SourceConfig(_Model):
    """A configured source: common scheduling keys plus its type's validated settings."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(pattern=_ID)
    type: str
    name: str | None = None
    interval: timedelta = timedelta(minutes=5)
    jitter: timedelta | None = None
    enabled: bool = True
    absence: Literal["close", "keep", "cancel"] | None = None

    @field_validator("interval", "jitter", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta | None:
        return None if value is None else parse_duration(value)

    @field_validator("interval")
    @classmethod
    def _min_interval(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("interval must be at least 1 second")
        return value

    @property
    def raw_settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


#: the top-level keys of a config file; each is validated on its own
MAPPING_SECTIONS = ("server", "storage", "feeds", "insights")
LIST_SECTIONS = ("accounts", "teams", "sources")
SECTIONS = frozenset({*MAPPING_SECTIONS, "kinds", *LIST_SECTIONS})


@dataclass(frozen=True)
class Config:
    """The validated whole, as the rest of icsfeed reads it."""

    config_dir: Path
    data_dir: Path
    server: ServerConfig
    storage: StorageConfig
    feeds: FeedDefaults
    kinds: dict[str, KindConfig]
    accounts: dict[str, AccountConfig]
    teams: dict[str, TeamConfig]
    sources: dict[str, SourceConfig]
    source_settings: dict[str, SourceSettings]
    #: detector settings (icsfeed.insights.settings.InsightsSettings when that package is present)
    insights: Any = None
    #: file each account/team/source came from, for messages
    origins: dict[str, str] = field(default_factory=dict)
    #: (path, mtime_ns, size) of every file read, to notice changes
    fingerprint: tuple[tuple[str, int, int], ...] = ()
    #: every secret in the config, in the forms it may come back in (icsfeed.redact): the
    #: values ``${VAR}`` put in, credentials, and what a name marks as a key. No error,
    #: skipped reason, log line or page shows any of them.
    secrets: frozenset[str] = frozenset()

    @cached_property
    def account_by_key(self) -> dict[str, AccountConfig]:
        """Each routing key (:attr:`AccountConfig.match_keys`) and the account it belongs to:
        made once per config (a render of 1,000 feeds asked each of 1,000 accounts per feed)."""
        return {key: account for account in self.accounts.values() for key in account.match_keys}

    @property
    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{self.data_dir / 'icsfeed.db'}"

    @property
    def uid_host(self) -> str:
        return self.feeds.uid_host or urlsplit(self.server.base_url).hostname or "icsfeed"

    def source_context(self) -> SourceContext:
        account_tz: dict[str, str] = {}
        for account in self.accounts.values():
            if account.timezone:
                for key in account.match_keys:
                    account_tz[key] = account.timezone
        return SourceContext(
            config_dir=self.config_dir, data_dir=self.data_dir,
            kinds={name: KindInfo(all_day=k.all_day, duration_seconds=int(k.duration.total_seconds()))
                   for name, k in self.kinds.items()},
            default_timezone=self.feeds.timezone, account_timezones=account_tz,
        )


# --- loading ---------------------------------------------------------------------------------

_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, path: str, problems: list[tuple[str, str]],
                 secrets: set[str] | None = None) -> Any:
    """Replace ${VAR} (and ${VAR:-default}) in every string of a YAML tree; every value
    taken from the environment is added to ``secrets`` (whatever it is, it is one)."""
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                if secrets is not None:
                    secrets.add(os.environ[name])
                return os.environ[name]
            if default is not None:
                return default
            problems.append((path, f"environment variable {name} is not set"))
            return ""
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), problems, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", problems, secrets) for i, v in enumerate(value)]
    return value


def named_secrets(value: Any) -> set[str]:
    """Values a source's raw settings mark as secret by their name, wherever they are:
    ``password:``/``token:``/``api_token:`` and headers such as ``X-Api-Key``, ``params``
    and query parameters such as ``api_key`` (or plain ``key``), URL userinfo, ``--token
    VALUE`` and ``--token=VALUE`` in an ``argv``, and the base64 of basic auth's
    ``user:password``. The ``mapping`` names record fields, never secrets: it is skipped."""
    found: set[str] = set()

    def param(name: str) -> bool:
        return redact.is_secret_name(name) or name.strip().lower() == "key"

    def url(text: str) -> None:
        if "://" not in text and "?" not in text:
            return
        try:
            parts = urlsplit(text)
        except ValueError:
            return
        if parts.password:
            found.add(parts.password)
            found.update(redact.basic_forms(parts.username or "", parts.password))
        for name, item in parse_qsl(parts.query, keep_blank_values=False):
            if param(name):
                found.add(item)

    def argv(items: list[Any]) -> None:
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.startswith("-"):
                continue
            name, sep, rest = item.partition("=")
            if redact.is_secret_name(name):
                if sep:
                    found.add(rest)
                elif i + 1 < len(items) and isinstance(items[i + 1], str):
                    found.add(items[i + 1])

    def walk(node: Any, parent: str = "") -> None:
        if isinstance(node, dict):
            user = node.get("username", node.get("email"))
            for key, item in node.items():
                name = str(key)
                if name == "mapping" and not parent:
                    continue
                if isinstance(item, str):
                    if redact.is_secret_name(name) or (parent == "params" and param(name)):
                        found.add(item)
                        if isinstance(user, str) and name in ("password", "api_token"):
                            found.update(redact.basic_forms(user, item))
                            found.update(redact.basic_forms(f"{user}/token", item))  # Zendesk's API token user
                    url(item)
                else:
                    walk(item, name)
        elif isinstance(node, list):
            argv(node)
            for item in node:
                if isinstance(item, str):
                    url(item)
                else:
                    walk(item, parent)
        elif isinstance(node, str):
            url(node)

    walk(value)
    return found


def _secret_set(values: set[str]) -> frozenset[str]:
    out: set[str] = set()
    for value in values:
        out |= redact.secret_forms(value)
    return frozenset(out)


def _error_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or p in ("list[str]", "literal['*']"))))
        path = _error_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown setting"
        elif err["type"] == "missing":
            message = "required setting is missing"
        problems.append((path, message))
    return problems


def config_files(config_dir: Path) -> list[Path]:
    return sorted(p for p in config_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _fingerprint(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in files:
        st = p.stat()
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


def config_fingerprint(config_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap check whether any config file changed (names, mtimes, sizes)."""
    try:
        return _fingerprint(config_files(config_dir))
    except OSError:
        return ()


def load_config(config_dir: str | Path, data_dir: str | Path | None = None) -> Config:
    """Read, interpolate and validate every YAML file; raise ConfigError listing all problems."""
    config_dir = Path(config_dir).resolve()
    data_dir = Path(data_dir or os.environ.get("ICSFEED_DATA") or "data").resolve()
    if not config_dir.is_dir():
        raise ConfigError([(str(config_dir), "", "config directory does not exist")])
    files = config_files(config_dir)
    if not files:
        raise ConfigError([(str(config_dir), "", "no .yaml files in the config directory")])

    problems: list[tuple[str, str, str]] = []
    merged: dict[str, Any] = {"server": {}, "storage": {}, "feeds": {}, "kinds": {}, "insights": {}}
    accounts: dict[str, AccountConfig] = {}
    teams: dict[str, TeamConfig] = {}
    sources: dict[str, SourceConfig] = {}
    settings: dict[str, SourceSettings] = {}
    origins: dict[str, str] = {}
    team_files: dict[str, tuple[str, int]] = {}
    #: what ${VAR} put in, and what names mark as secret (see named_secrets)
    secret_values: set[str] = set()
    #: "feeds.max_title" -> the file that set it last, to name it in a problem
    setters: dict[str, str] = {}

    for path in files:
        name = _display(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            problems.append((name, where, f"YAML syntax error: {problem}"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((name, "", f"cannot read: {exc}"))
            continue
        if raw is None:
            continue
        if not isinstance(raw, dict):
            problems.append((name, "", f"the top level must be a mapping, not a {type(raw).__name__}"))
            continue
        env_problems: list[tuple[str, str]] = []
        raw = _interpolate(raw, "", env_problems, secret_values)
        problems.extend((name, p, m) for p, m in env_problems)
        for key in raw:
            if key not in SECTIONS:
                problems.append((name, str(key), f"unknown section (known: {', '.join(sorted(SECTIONS))})"))
        for section in MAPPING_SECTIONS:
            value = _mapping(raw, section, name, problems)
            merged[section].update(value)
            setters.update({f"{section}.{key}": name for key in value})
            if section in ("server", "storage"):
                secret_values |= named_secrets(value)
        for kind_name, kind in _mapping(raw, "kinds", name, problems).items():
            if not isinstance(kind, dict):
                problems.append((name, f"kinds.{kind_name}", f"must be a mapping, not a {type(kind).__name__}"))
                continue
            merged["kinds"][kind_name] = {**merged["kinds"].get(kind_name, {}), **kind}
            merged.setdefault("kind_files", {})[kind_name] = name
        for i, item in enumerate(_items(raw, "accounts", name, problems)):
            account = _validated(AccountConfig, item, f"accounts[{i}]", name, problems)
            if account is None:
                continue
            if account.id in accounts:
                problems.append((name, f"accounts[{i}].id", f"duplicate account id {account.id!r} (also in {origins['account:' + account.id]})"))
            accounts[account.id] = account
            origins.setdefault("account:" + account.id, name)
        for i, item in enumerate(_items(raw, "teams", name, problems)):
            team = _validated(TeamConfig, item, f"teams[{i}]", name, problems)
            if team is None:
                continue
            if team.id in teams:
                problems.append((name, f"teams[{i}].id", f"duplicate team id {team.id!r} (also in {origins['team:' + team.id]})"))
            teams[team.id] = team
            origins.setdefault("team:" + team.id, name)
            team_files[team.id] = (name, i)
        for i, item in enumerate(_items(raw, "sources", name, problems)):
            if isinstance(item, dict):
                secret_values |= named_secrets({k: v for k, v in item.items() if k not in COMMON_SOURCE_KEYS})
            checked = _source(item, f"sources[{i}]", name, problems)
            if checked is None:
                continue
            source, source_settings = checked
            if source.id in sources:
                problems.append((name, f"sources[{i}].id", f"duplicate source id {source.id!r} (also in {origins['source:' + source.id]})"))
            sources[source.id] = source
            settings[source.id] = source_settings
            origins.setdefault("source:" + source.id, name)

    sections: dict[str, Any] = {}
    for section, model in (("server", ServerConfig), ("storage", StorageConfig), ("feeds", FeedDefaults)):
        try:
            sections[section] = model.model_validate(merged[section])
        except ValidationError as exc:
            problems.extend((_setter(setters, p), p, m) for p, m in _pydantic_problems(exc, section))
            sections[section] = model()
    if os.environ.get(STORAGE_URL_ENV):
        sections["storage"] = sections["storage"].model_copy(update={"url": os.environ[STORAGE_URL_ENV]})
    sections["insights"] = _insights_settings(merged["insights"], problems, setters)
    kinds: dict[str, KindConfig] = {}
    for kind_name in {**BUILTIN_KINDS, **merged["kinds"]}:
        data = {**BUILTIN_KINDS.get(kind_name, {}), **merged["kinds"].get(kind_name, {})}
        try:
            kinds[kind_name] = KindConfig.model_validate(data)
        except ValidationError as exc:
            file = merged.get("kind_files", {}).get(kind_name, "config")
            problems.extend((file, p, m) for p, m in _pydantic_problems(exc, f"kinds.{kind_name}"))

    key_owner: dict[str, str] = {}
    for account in accounts.values():
        for key in account.match_keys:
            other = key_owner.get(key)
            if other is not None and other != account.id:
                problems.append((origins["account:" + account.id], f"accounts[id={account.id}].keys",
                                 f"key {key!r} also belongs to account {other!r}"))
            key_owner[key] = account.id
    for team in teams.values():
        file, i = team_files[team.id]
        if isinstance(team.accounts, list):
            for j, acc in enumerate(team.accounts):
                if acc not in accounts:
                    problems.append((file, f"teams[{i}].accounts[{j}]", f"unknown account {acc!r}"))
        for j, kind_name in enumerate(team.kinds or []):
            if kind_name not in kinds:
                problems.append((file, f"teams[{i}].kinds[{j}]", f"unknown kind {kind_name!r} (known: {', '.join(kinds)})"))
    problems.extend(_budget_kind_problems(sections["feeds"], accounts, teams, kinds, origins, team_files, setters))
    for source_settings in settings.values():
        secret_values |= _secret_str_values(source_settings)
    secrets = _secret_set(secret_values)
    redact.register(secrets)  # the log filter of this process removes them too
    if problems:  # a problem may quote a value: that value may be a secret
        raise ConfigError([(f, p, redact.redact(m, secrets)) for f, p, m in problems])
    return Config(
        config_dir=config_dir, data_dir=data_dir, server=sections["server"],
        storage=sections["storage"], feeds=sections["feeds"], kinds=kinds,
        accounts=accounts, teams=teams, sources=sources, source_settings=settings,
        insights=sections["insights"], origins=origins, fingerprint=_fingerprint(files),
        secrets=secrets,
    )


def _budget_kind_problems(feeds: FeedDefaults, accounts: dict[str, AccountConfig], teams: dict[str, TeamConfig],
                          kinds: dict[str, KindConfig], origins: dict[str, str],
                          team_files: dict[str, tuple[str, int]], setters: dict[str, str]) -> list[tuple[str, str, str]]:
    """Every ``budget.keep_individual`` names a known kind."""
    places: list[tuple[str, str, BudgetConfig | None]] = [(setters.get("feeds.budget", "config"), "feeds.budget", feeds.budget)]
    places += [(origins["account:" + a.id], f"accounts[id={a.id}].budget", a.budget) for a in accounts.values()]
    places += [(team_files[t.id][0], f"teams[{team_files[t.id][1]}].budget", t.budget) for t in teams.values()]
    problems = []
    for file, path, budget in places:
        for j, kind_name in enumerate((budget.keep_individual or []) if budget else []):
            if kind_name not in kinds:
                problems.append((file, f"{path}.keep_individual[{j}]", f"unknown kind {kind_name!r} (known: {', '.join(kinds)})"))
    return problems


def _mapping(raw: dict[str, Any], section: str, file: str, problems: list[tuple[str, str, str]]) -> dict[str, Any]:
    value = raw.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append((file, section, f"must be a mapping, not a {type(value).__name__}"))
        return {}
    return value


def _items(raw: dict[str, Any], section: str, file: str, problems: list[tuple[str, str, str]]) -> list[Any]:
    value = raw.get(section)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append((file, section, f"must be a list, not a {type(value).__name__}"))
        return []
    return value


def _validated(model: type[_ModelT], item: Any, where: str, file: str,
               problems: list[tuple[str, str, str]]) -> _ModelT | None:
    """One account, team or source entry on its own, so that its problems hide no other's."""
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        problems.extend((file, p, m) for p, m in _pydantic_problems(exc, where))
        return None


def _source(item: Any, where: str, file: str,
            problems: list[tuple[str, str, str]]) -> tuple[SourceConfig, SourceSettings] | None:
    """A source's common keys and its type's settings, each checked even when the other
    is broken: a bad ``interval`` must not hide an unknown ``type`` or a missing ``url``."""
    if not isinstance(item, dict):
        problems.append((file, where, f"a source is a mapping, not a {type(item).__name__}"))
        return None
    source = _validated(SourceConfig, item, where, file, problems)
    type_name = item.get("type")
    if not isinstance(type_name, str):
        return None  # reported by SourceConfig above
    try:
        cls = load_source_class(type_name)
    except KeyError as exc:
        problems.append((file, f"{where}.type", str(exc.args[0])))
        return None
    try:
        source_settings = cls.parse_settings({k: v for k, v in item.items() if k not in COMMON_SOURCE_KEYS})
    except ValidationError as exc:
        problems.extend((file, p, m) for p, m in _pydantic_problems(exc, where))
        return None
    except ValueError as exc:
        problems.append((file, where, str(exc)))
        return None
    return (source, source_settings) if source is not None else None


def _secret_str_values(settings: BaseModel) -> set[str]:
    """Every SecretStr value in a source's settings (validators may build them: Zendesk's
    basic auth from email and api_token)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(settings)
    return found


def _setter(setters: dict[str, str], path: str) -> str:
    """The file a problem at ``feeds.max_title`` (or ``feeds.max_title.x``) comes from."""
    key = ".".join(path.split(".")[:2]).split("[")[0]
    return setters.get(key, "config")


def _insights_settings(raw: dict[str, Any], problems: list[tuple[str, str, str]],
                       setters: dict[str, str] | None = None) -> Any:
    """Validate the ``insights:`` section with the insights package's own model."""
    try:
        from icsfeed.insights.settings import InsightsSettings
    except ImportError:
        return raw
    try:
        return InsightsSettings.model_validate(raw)
    except ValidationError as exc:
        problems.extend((_setter(setters or {}, p), p, m) for p, m in _pydantic_problems(exc, "insights"))
        return InsightsSettings()


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
