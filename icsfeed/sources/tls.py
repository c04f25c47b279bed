"""``tls``: the certificates that TLS servers present, as "issued" and "expires" days.

Each target is contacted with ``ssl`` over a plain socket (SNI = ``server_name`` or the
host); the peer certificate is read in DER form and parsed with ``cryptography``. By
default the certificate is read even when it does not verify (expired, self-signed,
internal CA: exactly the ones worth a reminder); the verification result goes into the
event's description.

Identity is the certificate's SHA-256 fingerprint, so a renewed certificate brings new
events and the old ones stay as history (absence ``keep``). So that the old expiry does
not ring its reminder after a renewal, the source remembers which certificate each target
served (``<data>/cache/<source id>/tls-state.json``) and re-publishes a replaced
certificate's expiry without the reminder until that day has passed.

A target that cannot be read fails the whole poll (the contract: never half a result),
with a message naming each failed ``host:port``; the store keeps the last good events.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, field_validator

from icsfeed.model import Event
from icsfeed.sources.base import Absence, Source, SourceError, SourceSettings

#: ports where https://host:port/ is a page worth linking to
HTTPS_PORTS = frozenset({443, 4443, 8443, 9443, 10443})


#: which certificate each target served, and expiry events of replaced ones
STATE_FILE = "tls-state.json"


class TlsTarget(BaseModel):
    """One TLS endpoint; in YAML either ``"host:port"`` or this mapping."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=443, ge=1, le=65535)
    #: name sent as SNI and checked against the certificate; default: host
    server_name: str | None = None
    #: account key of the customer this endpoint belongs to; default: the source's ``account``
    account: str | None = None
    #: link for the events; default https://name[:port]/ on HTTPS ports
    url: str | None = None

    @property
    def name(self) -> str:
        return self.server_name or self.host

    @property
    def label(self) -> str:
        """host:port, as it appears in messages (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def state_key(self) -> str:
        return f"{self.label}/{self.name}"

    def link(self) -> str | None:
        if self.url:
            return self.url
        if self.port not in HTTPS_PORTS:
            return None
        host = f"[{self.name}]" if ":" in self.name else self.name
        return f"https://{host}/" if self.port == 443 else f"https://{host}:{self.port}/"


class TlsSettings(SourceSettings):
    """Settings of a ``tls`` source."""

    targets: list[TlsTarget] = Field(min_length=1)
    #: seconds per target for connect + handshake (both attempts together)
    timeout: float = Field(default=10.0, gt=0, le=120)
    #: reminder this many days before expiry (a VALARM); 0: no reminder
    alarm_days_before: int = Field(default=14, ge=0, le=365)
    #: CA bundle (PEM) to verify against instead of the system's (internal CAs)
    ca_file: str | None = None
    #: true: a certificate that does not verify fails the poll; false: read it anyway
    verify: bool = False
    #: account key for targets that do not name one
    account: str | None = None
    kind: str = "certificate"
    #: targets contacted at the same time
    concurrency: int = Field(default=8, ge=1, le=64)

    @field_validator("targets", mode="before")
    @classmethod
    def _parse_targets(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [_parse_target(item) if isinstance(item, str) else item for item in value]


def _parse_target(text: str) -> dict[str, Any]:
    """``host``, ``host:port``, ``[v6]:port`` -> target fields."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:  # a bare name, or a bare IPv6 address
        host, port = text, ""
    if not host:
        raise ValueError(f"target {text!r} has no host")
    if port and not port.isdigit():
        raise ValueError(f"target {text!r}: port must be a number")
    return {"host": host, "port": int(port)} if port else {"host": host}


@dataclass(frozen=True)
class _Probe:
    """What one handshake told: the certificate and whether it verified."""

    der: bytes
    verified: bool
    verify_note: str
    protocol: str | None


class _TargetFailed(Exception):
    """A target could not be read; the message is shown (no secrets involved)."""


class TlsSource(Source):
    """Issued/expires all-day events for the certificate of each target."""

    type_name: ClassVar[str] = "tls"
    Settings: ClassVar[type[SourceSettings]] = TlsSettings
    #: a renewed certificate is a new one; the old dates stay as history
    absence: ClassVar[Absence] = "keep"

    settings: TlsSettings

    def fetch(self, since: datetime | None) -> list[Event]:
        self.skipped = []
        s = self.settings
        self.kind_info(s.kind)  # fail the poll clearly if the kind is not configured
        if s.ca_file is not None and not self.resolve_path(s.ca_file).is_file():
            raise SourceError(f"ca_file {s.ca_file} does not exist")
        probes = self._probe_all()
        now = self._now()

        events: dict[str, Event] = {}
        served: dict[str, str] = {}  # target state key -> fingerprint
        where: dict[str, list[TlsTarget]] = {}
        parsed: dict[str, tuple[x509.Certificate, _Probe, TlsTarget]] = {}
        for target, probe in zip(s.targets, probes, strict=True):
            try:
                cert = x509.load_der_x509_certificate(probe.der)
                fingerprint = cert.fingerprint(hashes.SHA256()).hex()
            except ValueError as exc:
                self.skip({"name": target.label}, f"certificate cannot be parsed: {exc}")
                continue
            served[target.state_key] = fingerprint
            where.setdefault(fingerprint, []).append(target)
            parsed.setdefault(fingerprint, (cert, probe, target))
        for fingerprint, (cert, probe, target) in parsed.items():
            try:
                for event in self._events(cert, fingerprint, probe, where[fingerprint], now):
                    events[event.key] = event
            except (ValueError, TypeError, OverflowError) as exc:
                self.skip({"name": target.label}, f"certificate cannot become an event: {exc}")

        for event in self._replaced(served, events, now):
            events.setdefault(event.key, event)
        return list(events.values())

    def _now(self) -> datetime:
        """The poll's clock (a method so tests can move time)."""
        return datetime.now(timezone.utc)

    # --- talking TLS ------------------------------------------------------------------------

    def _probe_all(self) -> list[_Probe]:
        """Every target's certificate, contacted in parallel; any failure fails the poll."""
        targets = self.settings.targets
        workers = min(self.settings.concurrency, len(targets))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"tls-{self.id}") as pool:
            futures = [pool.submit(self._probe, t) for t in targets]
        results: list[_Probe] = []
        failures: list[str] = []
        for target, future in zip(targets, futures, strict=True):
            try:
                results.append(future.result())
            except _TargetFailed as exc:
                failures.append(f"{target.label}: {exc}")
            except Exception as exc:  # anything unforeseen still names its target
                failures.append(f"{target.label}: {type(exc).__name__}")
        if failures:
            raise SourceError(f"{len(failures)} of {len(targets)} TLS targets failed: " + "; ".join(failures))
        return results

    def _probe(self, target: TlsTarget) -> _Probe:
        """Handshake with verification; if the certificate does not verify and ``verify``
        is off, once more without, to read it anyway. Both share one deadline."""
        deadline = time.monotonic() + self.settings.timeout
        try:
            der, protocol = self._handshake(target, self._verifying_context(), deadline)
            trusted_by = "ca_file" if self.settings.ca_file else "system CAs"
            return _Probe(der, True, f"trusted ({trusted_by}), name {target.name} matches", protocol)
        except ssl.SSLCertVerificationError as exc:
            note = f"failed: {exc.verify_message or exc.reason or 'not trusted'}"
            if self.settings.verify:
                raise _TargetFailed(f"certificate not trusted ({exc.verify_message or exc.reason})") from None
        except ssl.SSLError as exc:  # no common protocol or cipher with modern settings
            if self.settings.verify:
                raise _TargetFailed(f"TLS handshake failed ({exc.reason or type(exc).__name__})") from None
            note = f"not possible: handshake with current TLS settings failed ({exc.reason or type(exc).__name__})"
        try:
            der, protocol = self._handshake(target, _reading_context(), deadline)
        except ssl.SSLError as exc:
            raise _TargetFailed(f"TLS handshake failed ({exc.reason or type(exc).__name__})") from None
        return _Probe(der, False, note, protocol)

    def _handshake(self, target: TlsTarget, context: ssl.SSLContext,
                   deadline: float) -> tuple[bytes, str | None]:
        timeout = self.settings.timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _TargetFailed(f"no TLS handshake within {timeout:g}s")
        try:
            with socket.create_connection((target.host, target.port), timeout=remaining) as sock:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sni = target.name
                with context.wrap_socket(sock, server_hostname=sni) as tls:
                    der = tls.getpeercert(binary_form=True)
                    protocol = tls.version()
        except ssl.SSLError:
            raise  # the caller decides (verification failure, protocol mismatch)
        except TimeoutError:
            raise _TargetFailed(f"no TLS handshake within {timeout:g}s") from None
        except ConnectionRefusedError:
            raise _TargetFailed("connection refused") from None
        except socket.gaierror as exc:
            raise _TargetFailed(f"host not found ({exc.strerror})") from None
        except OSError as exc:  # reset, unreachable, closed during the handshake
            raise _TargetFailed(f"cannot connect ({exc.strerror or type(exc).__name__})") from None
        if not der:
            raise _TargetFailed("the server presented no certificate")
        return der, protocol

    def _verifying_context(self) -> ssl.SSLContext:
        cafile = str(self.resolve_path(self.settings.ca_file)) if self.settings.ca_file else None
        try:
            return ssl.create_default_context(cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            raise SourceError(f"ca_file {self.settings.ca_file} cannot be loaded ({type(exc).__name__})") from None

    # --- events ------------------------------------------------------------------------------

    def _events(self, cert: x509.Certificate, fingerprint: str, probe: _Probe,
                targets: list[TlsTarget], now: datetime) -> list[Event]:
        first = targets[0]
        account = next((t.account for t in targets if t.account), None) or self.settings.account
        tz = self.context.timezone_for(account)
        issued_at = cert.not_valid_before_utc
        expires_at = cert.not_valid_after_utc
        issued = issued_at.astimezone(tz).date()
        expires = expires_at.astimezone(tz).date()
        facts = _facts(cert, fingerprint)
        lines = [
            f"Served at: {', '.join(_served_at(t) for t in targets)}",
            f"Subject CN: {facts['subject_cn'] or '(none)'}",
            f"Names (SAN): {', '.join(facts['sans']) or '(none)'}",
            f"Issuer: {facts['issuer']}",
            f"Serial: {facts['serial']}",
            f"SHA-256: {_colons(fingerprint)}",
            f"Valid from {issued_at:%Y-%m-%d %H:%M} UTC to {expires_at:%Y-%m-%d %H:%M} UTC",
            f"Verification: {probe.verify_note}" + (f" ({probe.protocol})" if probe.protocol else ""),
        ]
        if expires_at > now:
            left = f"{(expires_at - now).days} days left"
        else:
            left = f"expired {(now - expires_at).days} days ago"
        attrs = {"fingerprint": fingerprint, "subject_cn": facts["subject_cn"], "sans": facts["sans"],
                 "issuer": facts["issuer"], "serial": facts["serial"], "host": first.host, "port": first.port,
                 "server_name": first.name, "verified": probe.verified,
                 "not_before": issued_at.isoformat(), "not_after": expires_at.isoformat()}
        common = dict(source=self.id, kind=self.settings.kind, url=first.link(), account=account, attrs=attrs)
        alarm = timedelta(days=self.settings.alarm_days_before) if self.settings.alarm_days_before else None
        return [
            Event(key=f"{fingerprint}:issued", title=f"TLS certificate for {first.name} issued",
                  start=issued, end=issued + timedelta(days=1), detail="\n".join(lines), **common),
            Event(key=f"{fingerprint}:expires", title=f"TLS certificate for {first.name} expires",
                  start=expires, end=expires + timedelta(days=1),
                  detail="\n".join([f"{left} (as of {now:%Y-%m-%d})", *lines]),
                  alarm_before=alarm, **common),
        ]

    # --- renewals ----------------------------------------------------------------------------

    def _replaced(self, served: dict[str, str], events: dict[str, Event], now: datetime) -> list[Event]:
        """Expiry events of certificates no target serves any more, without their reminder.

        Re-published every poll until their day has passed (so a store that failed to
        commit one poll gets them the next); after that the store keeps the last copy.
        """
        state = self.read_state(STATE_FILE) or {}
        previous_targets: dict[str, str] = state.get("targets") or {}
        previous_expiry: dict[str, Any] = state.get("expiry") or {}
        replaced: dict[str, Any] = state.get("replaced") or {}
        current = set(served.values())
        today = now.date()
        configured = {t.state_key: t for t in self.settings.targets}

        for target_key, old_fp in previous_targets.items():
            new_fp = served.get(target_key)
            if old_fp in current or old_fp in replaced or old_fp not in previous_expiry:
                continue
            if new_fp is None and target_key in configured:
                continue  # unreadable this time (skipped): not replaced
            by = None
            if new_fp is not None:
                new_event = events.get(f"{new_fp}:expires")
                by = {"fingerprint": new_fp, "expires": new_event.start.isoformat() if new_event else None}
            replaced[old_fp] = {"event": previous_expiry[old_fp], "on": today.isoformat(), "by": by}

        out: list[Event] = []
        for fp, entry in list(replaced.items()):
            try:
                old = Event.from_dict(entry["event"])
            except (KeyError, TypeError, ValueError):
                del replaced[fp]
                continue
            if fp in current or old.start < today - timedelta(days=1):  # type: ignore[operator]
                del replaced[fp]
                continue
            by = entry.get("by")
            if by:
                note = (f"Replaced on {entry['on']} by certificate {by['fingerprint'][:16]}"
                        + (f" (expires {by['expires']})" if by.get("expires") else "")
                        + ": no reminder for this one.")
            else:
                note = f"No longer monitored since {entry['on']} (target removed): no reminder."
            detail = "\n".join(line for line in old.detail.splitlines() if "(as of " not in line)
            out.append(replace(old, title=f"{old.title} (replaced)" if by else old.title,
                               detail=f"{note}\n{detail}", alarm_before=None))

        new_state = {
            "targets": served,
            "expiry": {e.attrs["fingerprint"]: e.to_dict() for e in events.values() if e.key.endswith(":expires")},
            "replaced": replaced,
        }
        try:
            self.write_state(STATE_FILE, json.dumps(new_state, sort_keys=True).encode())
        except OSError as exc:
            raise SourceError(f"cannot write {self.state_dir / STATE_FILE}: {exc.strerror or type(exc).__name__}") from None
        return out


# --- helpers -------------------------------------------------------------------------------------

def _reading_context() -> ssl.SSLContext:
    """A client context that reads any certificate, also from old servers (TLS 1.0, weak
    ciphers): we only look at the certificate, nothing secret is sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.set_ciphers("ALL:@SECLEVEL=0")
    except (ssl.SSLError, ValueError):
        pass  # an OpenSSL without these knobs: modern servers are readable anyway
    return context


def _facts(cert: x509.Certificate, fingerprint: str) -> dict[str, Any]:
    def cn(name: x509.Name) -> str:
        values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(values[0].value) if values else ""

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(v) for v in san.get_values_for_type(x509.DNSName)]
        sans += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    issuer = cert.issuer.rfc4514_string() or "(empty)"
    return {"subject_cn": cn(cert.subject), "sans": sans, "issuer": issuer,
            "serial": _colons(format(cert.serial_number, "x"))}


def _colons(hex_text: str) -> str:
    hex_text = hex_text.upper()
    if len(hex_text) % 2:
        hex_text = "0" + hex_text
    return ":".join(hex_text[i:i + 2] for i in range(0, len(hex_text), 2))


def _served_at(target: TlsTarget) -> str:
    if target.server_name and target.server_name != target.host:
        return f"{target.label} (SNI {target.server_name})"
    return target.label



