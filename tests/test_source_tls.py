"""The ``tls`` source against real TLS servers on 127.0.0.1 (Python's ssl = OpenSSL).

Certificates (a tiny CA, leaves, self-signed ones) are made here with ``cryptography``.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pydantic
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from icsfeed.model import Event
from icsfeed.sources import load_source_class
from icsfeed.sources.base import KindInfo, SourceContext, SourceError
from icsfeed.sources.tls import TlsSource, TlsTarget

UTC = timezone.utc
KINDS = {
    "maintenance": KindInfo(all_day=False, duration_seconds=7200),
    "certificate": KindInfo(all_day=True, duration_seconds=86400),
}
ISSUED = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
EXPIRES = datetime(2030, 6, 15, 23, 30, tzinfo=UTC)  # 01:30 on June 16 in Berlin
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


# --- certificates ------------------------------------------------------------------------------

class Pki:
    """Keys and certificates written as PEM files into a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "Test Ops CA")])
        self.ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC)).not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(self.ca_key, hashes.SHA256()))
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def leaf(self, file: str, cn: str, sans: list[str], not_before: datetime = ISSUED,
             not_after: datetime = EXPIRES, serial: int = 0x0A1B2C3D, self_signed: bool = False) -> tuple[Path, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        names: list[x509.GeneralName] = [
            x509.IPAddress(IPv4Address(s)) if s[0].isdigit() else x509.DNSName(s) for s in sans]
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(subject if self_signed else self.ca.subject)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(not_before).not_valid_after(not_after))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(key if self_signed else self.ca_key, hashes.SHA256())
        path = self.directory / f"{file}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return path, cert


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


# --- servers -----------------------------------------------------------------------------------

def server_context(pem: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


class TlsServer:
    """A TLS server on 127.0.0.1; with ``by_name``, the certificate is chosen by SNI."""

    def __init__(self, default: Path, by_name: dict[str, Path] | None = None) -> None:
        self.names_seen: list[str | None] = []
        self.connections = 0
        self.use(default, by_name or {})
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def use(self, default: Path, by_name: dict[str, Path] | None = None) -> None:
        """Serve another certificate from now on (a renewal)."""
        others = {name: server_context(pem) for name, pem in (by_name or {}).items()}
        context = server_context(default)

        def choose(ssl_socket: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
            self.names_seen.append(server_name)
            if server_name in others:
                ssl_socket.context = others[server_name]

        context.sni_callback = choose
        self.context = context

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)  # until the client hangs up
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def servers() -> Iterator[list[TlsServer]]:
    started: list[TlsServer] = []
    yield started
    for server in started:
        server.close()


def start(servers: list[TlsServer], default: Path, by_name: dict[str, Path] | None = None) -> TlsServer:
    server = TlsServer(default, by_name)
    servers.append(server)
    return server


def make_source(tmp_path: Path, now: datetime = NOW, **raw: Any) -> TlsSource:
    context = SourceContext(config_dir=tmp_path, data_dir=tmp_path / "data", kinds=KINDS,
                            account_timezones={"acme": "Europe/Berlin"})
    source = TlsSource("certs", TlsSource.parse_settings(raw), context)
    source._now = lambda: now  # type: ignore[method-assign]
    return source


def poll(tmp_path: Path, now: datetime = NOW, **raw: Any) -> tuple[dict[str, Event], TlsSource]:
    source = make_source(tmp_path, now, **raw)
    events = source.fetch(None)
    by_key = {e.key: e for e in events}
    assert len(by_key) == len(events)
    return by_key, source


def refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- tests -------------------------------------------------------------------------------------

def test_registered_under_its_type_name() -> None:
    assert load_source_class("tls") is TlsSource


def test_issued_and_expiry_of_a_ca_signed_certificate(pki: Pki, servers: list[TlsServer], tmp_path: Path) -> None:
    pem, cert = pki.leaf("www", "www.acme.test", ["www.acme.test", "acme.test", "127.0.0.1"])
    server = start(servers, pem)
    events, source = poll(tmp_path, ca_file="ca.pem", targets=[
        {"host": "127.0.0.1", "port": server.port, "server_name": "www.acme.test", "account": "acme"}])
    fp = fingerprint(cert)
    assert sorted(events) == [f"{fp}:expires", f"{fp}:issued"]
    assert server.names_seen == ["www.acme.test"]  # SNI sent; one handshake was enough
    assert server.connections == 1
    assert source.skipped == []

    issued, expires = events[f"{fp}:issued"], events[f"{fp}:expires"]
    assert issued.title == "TLS certificate for www.acme.test issued"
    assert expires.title == "TLS certificate for www.acme.test expires"
    assert (issued.start, issued.end) == (date(2024, 5, 1), date(2024, 5, 2))
    # 23:30 UTC on June 15 is already June 16 for the Berlin account
    assert (expires.start, expires.end) == (date(2030, 6, 16), date(2030, 6, 17))
    assert expires.alarm_before == timedelta(days=14)
    assert issued.alarm_before is None
    for event in (issued, expires):
        assert event.kind == "certificate" and event.account == "acme" and event.status == "confirmed"
        assert event.url is None  # not an HTTPS port
        assert event.attrs["verified"] is True
        assert event.attrs["issuer"] == "CN=Test Ops CA,O=Acme Test"
    detail = expires.detail
    assert detail.splitlines()[0] == "14 days left (as of 2030-06-01)"
    assert f"Served at: 127.0.0.1:{server.port} (SNI www.acme.test)" in detail
    assert "Subject CN: www.acme.test" in detail
    assert "Names (SAN): www.acme.test, acme.test, 127.0.0.1" in detail
    assert "Issuer: CN=Test Ops CA,O=Acme Test" in detail
    assert "Serial: 0A:1B:2C:3D" in detail
    assert "SHA-256: " + ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper() in detail
    assert "Valid from 2024-05-01 10:00 UTC to 2030-06-15 23:30 UTC" in detail
    assert "Verification: trusted (ca_file), name www.acme.test matches (TLSv1.3)" in detail
    assert "days left" not in issued.detail  # the issued event does not change every day


def test_a_self_signed_certificate_is_read_anyway(pki: Pki, servers: list[TlsServer], tmp_path: Path) -> None:
    pem, cert = pki.leaf("self", "router.acme.test", [], self_signed=True, serial=7)
    server = start(servers, pem)
    events, _ = poll(tmp_path, targets=[f"127.0.0.1:{server.port}"], alarm_days_before=30, account="globex")
    expires = events[f"{fingerprint(cert)}:expires"]
    assert "Verification: failed: self-signed certificate" in expires.detail
    assert "Names (SAN): (none)" in expires.detail and "Serial: 07" in expires.detail
    assert expires.title == "TLS certificate for 127.0.0.1 expires"
    assert expires.alarm_before == timedelta(days=30)
    assert expires.account == "globex" and expires.attrs["verified"] is False
    assert server.connections == 2  # the verifying handshake was refused by the client, then the reading one

    with pytest.raises(SourceError) as failed:
        poll(tmp_path, targets=[f"127.0.0.1:{server.port}"], verify=True)
    assert str(failed.value) == (f"1 of 1 TLS targets failed: 127.0.0.1:{server.port}: "
                                 "certificate not trusted (self-signed certificate)")


def test_an_expired_certificate(pki: Pki, servers: list[TlsServer], tmp_path: Path) -> None:
    real_now = datetime.now(UTC)
    pem, cert = pki.leaf("old", "old.acme.test", ["old.acme.test"], not_before=real_now - timedelta(days=400),
                         not_after=real_now - timedelta(days=10, hours=1))
    server = start(servers, pem)
    events, _ = poll(tmp_path, now=real_now, ca_file=str(pki.ca_file), alarm_days_before=0,
                     targets=[{"host": "127.0.0.1", "port": server.port, "server_name": "old.acme.test"}])
    expires = events[f"{fingerprint(cert)}:expires"]
    assert expires.detail.startswith("expired 10 days ago")
    assert "Verification: failed: certificate has expired" in expires.detail
    assert expires.alarm_before is None  # alarm_days_before: 0


@pytest.mark.skipif(not ssl.HAS_TLSv1, reason="this OpenSSL has no TLS 1.0")
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
def test_an_old_tls_1_0_server_is_read_anyway(pki: Pki, servers: list[TlsServer], tmp_path: Path) -> None:
    pem, cert = pki.leaf("legacy", "ilo.acme.test", ["ilo.acme.test"])
    server = start(servers, pem)
    legacy = server_context(pem)  # like an old appliance: TLS 1.0 only
    legacy.set_ciphers("ALL:@SECLEVEL=0")
    legacy.minimum_version = legacy.maximum_version = ssl.TLSVersion.TLSv1
    server.context = legacy
    events, _ = poll(tmp_path, ca_file="ca.pem", targets=[f"127.0.0.1:{server.port}"])
    expires = events[f"{fingerprint(cert)}:expires"]
    assert "Verification: not possible: handshake with current TLS settings failed" in expires.detail
    assert expires.detail.endswith("(TLSv1)")

    with pytest.raises(SourceError, match=r"127\.0\.0\.1:\d+: TLS handshake failed"):
        poll(tmp_path, ca_file="ca.pem", verify=True, targets=[f"127.0.0.1:{server.port}"])


def test_sni_chooses_the_certificate(pki: Pki, servers: list[TlsServer], tmp_path: Path) -> None:
    default_pem, default_cert = pki.leaf("default", "default.test", ["default.test"])
    b_pem, b_cert = pki.leaf("b", "b.test", ["b.test"], serial=2)
    server = start(servers, default_pem, {"b.test": b_pem})
    events, _ = poll(tmp_path, ca_file="ca.pem", targets=[
        {"host": "127.0.0.1", "port": server.port, "server_name": "a.test"},
        {"host": "127.0.0.1", "port": server.port, "server_name": "b.test"},
    ])
    a_fp, b_fp = fingerprint(default_cert), fingerprint(b_cert)
    assert sorted(events) == sorted([f"{a_fp}:issued", f"{a_fp}:expires", f"{b_fp}:issued", f"{b_fp}:expires"])
    assert events[f"{a_fp}:expires"].title == "TLS certificate for a.test expires"
    assert events[f"{b_fp}:expires"].title == "TLS certificate for b.test expires"
    assert events[f"{b_fp}:expires"].attrs["subject_cn"] == "b.test"
    assert "Verification: trusted" in events[f"{b_fp}:expires"].detail
    # a.test got the default certificate, whose names do not include a.test
    assert "Verification: failed: Hostname mismatch" in events[f"{a_fp}:expires"].detail
    assert {"a.test", "b.test"} <= set(server.names_seen)


def test_one_certificate_on_two_targets_is_one_pair_of_events(pki: Pki, servers: list[TlsServer],
                                                               tmp_path: Path) -> None:
    pem, cert = pki.leaf("shared", "shared.test", ["shared.test", "127.0.0.1"])
    one, two = start(servers, pem), start(servers, pem)
    events, _ = poll(tmp_path, targets=[f"127.0.0.1:{one.port}", {"host": "127.0.0.1", "port": two.port,
                                                                  "account": "acme"}])
    assert len(events) == 2
    expires = events[f"{fingerprint(cert)}:expires"]
    assert f"Served at: 127.0.0.1:{one.port}, 127.0.0.1:{two.port}" in expires.detail
    assert expires.account == "acme"  # the first target that names one


def test_a_refused_target_fails_the_poll_and_is_named(pki: Pki, servers: list[TlsServer], tmp_path: Path) -> None:
    pem, _ = pki.leaf("ok", "ok.test", ["ok.test"])
    server = start(servers, pem)
    port = refused_port()
    with pytest.raises(SourceError) as failed:
        poll(tmp_path, targets=[f"127.0.0.1:{server.port}", f"127.0.0.1:{port}"], timeout=3)
    assert str(failed.value) == f"1 of 2 TLS targets failed: 127.0.0.1:{port}: connection refused"


def test_a_server_that_never_handshakes_times_out(tmp_path: Path) -> None:
    held: list[socket.socket] = []
    silent = socket.create_server(("127.0.0.1", 0), backlog=8)
    silent.settimeout(0.05)
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        while not stop.is_set():
            try:
                conn, _ = silent.accept()
                held.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(SourceError) as failed:
            # three silent targets are waited for at the same time, not one after another
            poll(tmp_path, timeout=1, targets=[f"127.0.0.1:{port}", f"localhost:{port}",
                                               {"host": "127.0.0.1", "port": port, "server_name": "x.test"}])
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        silent.close()
        for conn in held:
            conn.close()
    assert elapsed < 2.5
    assert str(failed.value).startswith("3 of 3 TLS targets failed: ")
    assert f"127.0.0.1:{port}: no TLS handshake within 1s" in str(failed.value)


def test_a_renewal_keeps_the_old_expiry_without_its_reminder(pki: Pki, servers: list[TlsServer],
                                                              tmp_path: Path) -> None:
    old_pem, old_cert = pki.leaf("v1", "www.acme.test", ["www.acme.test"], serial=1)
    new_pem, new_cert = pki.leaf("v2", "www.acme.test", ["www.acme.test"], serial=2,
                                 not_before=datetime(2030, 5, 20, tzinfo=UTC), not_after=datetime(2031, 5, 20, tzinfo=UTC))
    server = start(servers, old_pem)
    target = {"host": "127.0.0.1", "port": server.port, "server_name": "www.acme.test"}
    first, _ = poll(tmp_path, targets=[target])
    old_fp, new_fp = fingerprint(old_cert), fingerprint(new_cert)
    assert first[f"{old_fp}:expires"].alarm_before == timedelta(days=14)

    server.use(new_pem)
    second, _ = poll(tmp_path, targets=[target], now=NOW + timedelta(days=1))
    assert sorted(second) == sorted([f"{new_fp}:issued", f"{new_fp}:expires", f"{old_fp}:expires"])
    assert second[f"{new_fp}:expires"].alarm_before == timedelta(days=14)
    old = second[f"{old_fp}:expires"]
    assert old.alarm_before is None
    assert old.title == "TLS certificate for www.acme.test expires (replaced)"
    assert old.start == date(2030, 6, 15)
    assert old.detail.startswith(f"Replaced on 2030-06-02 by certificate {new_fp[:16]} (expires 2031-05-20)")
    assert "as of" not in old.detail

    # the same again on the next poll (idempotent), and gone after the old expiry day
    third, _ = poll(tmp_path, targets=[target], now=NOW + timedelta(days=2))
    assert third[f"{old_fp}:expires"] == old
    later, _ = poll(tmp_path, targets=[target], now=datetime(2030, 6, 20, tzinfo=UTC))
    assert f"{old_fp}:expires" not in later


def test_a_removed_target_loses_its_reminder(pki: Pki, servers: list[TlsServer], tmp_path: Path) -> None:
    a_pem, a_cert = pki.leaf("a", "a.test", ["a.test"], serial=1)
    b_pem, b_cert = pki.leaf("b", "b.test", ["b.test"], serial=2)
    a, b = start(servers, a_pem), start(servers, b_pem)
    poll(tmp_path, targets=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    events, _ = poll(tmp_path, targets=[f"127.0.0.1:{b.port}"])
    gone = events[f"{fingerprint(a_cert)}:expires"]
    assert gone.alarm_before is None
    assert gone.detail.startswith("No longer monitored since 2030-06-01 (target removed)")
    assert events[f"{fingerprint(b_cert)}:expires"].alarm_before == timedelta(days=14)


def test_settings_and_targets() -> None:
    settings = TlsSource.parse_settings({"targets": ["www.acme.example", "api.globex.example:8443", "[::1]:993",
                                                     {"host": "10.0.0.5", "server_name": "intra.test"}]})
    hosts = [(t.host, t.port, t.server_name) for t in settings.targets]
    assert hosts == [("www.acme.example", 443, None), ("api.globex.example", 8443, None), ("::1", 993, None),
                     ("10.0.0.5", 443, "intra.test")]
    assert (settings.timeout, settings.alarm_days_before, settings.verify, settings.ca_file) == (10.0, 14, False, None)
    for bad in ({"targets": []}, {"targets": ["host:https"]}, {"targets": [":443"]},
                {"targets": ["a:1"], "colour": "red"}, {"targets": [{"host": "a", "port": 70000}]}, {}):
        with pytest.raises(pydantic.ValidationError):
            TlsSource.parse_settings(bad)


def test_links() -> None:
    assert TlsTarget(host="www.acme.example").link() == "https://www.acme.example/"
    assert TlsTarget(host="10.0.0.5", port=8443, server_name="api.test").link() == "https://api.test:8443/"
    assert TlsTarget(host="mail.acme.example", port=993).link() is None
    assert TlsTarget(host="mail.acme.example", port=993, url="https://wiki/mail").link() == "https://wiki/mail"
    assert TlsTarget(host="::1", port=8443).label == "[::1]:8443"


def test_a_missing_ca_file_fails_the_poll(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"ca_file nowhere\.pem does not exist"):
        poll(tmp_path, targets=["127.0.0.1:1"], ca_file="nowhere.pem")


# --- end to end: CLI poll + render ---------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_poll_and_render(pki: Pki, servers: list[TlsServer], tmp_path: Path) -> None:
    import icalendar
    from conftest import cli, write_config

    real_now = datetime.now(UTC)
    pem, _ = pki.leaf("e2e", "www.acme.test", ["www.acme.test"], not_before=real_now - timedelta(days=10),
                      not_after=real_now + timedelta(days=20))
    server = start(servers, pem)
    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    write_config(config_dir, {"icsfeed.yaml": f"""
        accounts:
          - id: acme
            name: ACME Corp
            keys: [acme]
        sources:
          - id: certificates
            type: tls
            interval: 6h
            ca_file: {pki.ca_file}
            targets:
              - {{host: 127.0.0.1, port: {server.port}, server_name: www.acme.test, account: acme}}
        """})
    done = cli(config_dir, data_dir, "poll", "--once")
    assert done.returncode == 0 and "certificates: 2 new" in done.stdout, done.stdout + done.stderr
    done = cli(config_dir, data_dir, "render", "acme", "-o", str(tmp_path / "acme.ics"))
    assert done.returncode == 0, done.stdout + done.stderr
    parsed = icalendar.Calendar.from_ical((tmp_path / "acme.ics").read_bytes())
    events = {str(ev.get("SUMMARY")): ev for ev in parsed.walk("VEVENT") if str(ev.get("SUMMARY")).startswith("🔒")}
    assert set(events) == {"🔒 TLS certificate for www.acme.test issued", "🔒 TLS certificate for www.acme.test expires"}
    expires = events["🔒 TLS certificate for www.acme.test expires"]
    assert expires.decoded("DTSTART") == (real_now + timedelta(days=20)).date()
    alarms = expires.walk("VALARM")
    assert len(alarms) == 1 and alarms[0].decoded("TRIGGER") == -timedelta(days=14)
    assert events["🔒 TLS certificate for www.acme.test issued"].walk("VALARM") == []
    assert "Verification: trusted (ca_file)" in str(expires.get("DESCRIPTION"))

    # a second poll the same day changes nothing
    done = cli(config_dir, data_dir, "poll", "--once")
    assert "certificates: 0 new, 0 updated, 0 closed, 0 cancelled, 2 unchanged" in done.stdout, done.stdout


@pytest.mark.slow
def test_end_to_end_a_failing_target_is_reported(tmp_path: Path) -> None:
    from conftest import cli, write_config

    port = refused_port()
    config_dir = write_config(tmp_path / "config", {"icsfeed.yaml": f"""
        sources:
          - id: certificates
            type: tls
            targets: ["127.0.0.1:{port}"]
        """})
    done = cli(config_dir, tmp_path / "data", "poll", "--once")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"certificates: ERROR (1 in a row): 1 of 1 TLS targets failed: 127.0.0.1:{port}: connection refused" \
        in done.stdout, done.stdout


def test_documented_example_is_valid_config(tmp_path: Path) -> None:
    from icsfeed.config import load_config

    doc = (Path(__file__).resolve().parents[1] / "docs" / "sources" / "tls.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "sources.yaml").write_text(example)
    config = load_config(tmp_path, tmp_path / "data")
    settings = config.source_settings["certificates"]
    assert isinstance(settings, TlsSource.Settings)
    assert len(settings.targets) >= 3
