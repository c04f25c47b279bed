"""Real nginx running the shipped site (deploy/nginx/icsfeed.conf), for tests and benchmarks.

:func:`render_site` takes the shipped file and replaces only its ``# EDIT`` lines' values
(ports, upstream, certificate, cache and log paths), checking that each was found exactly
where the file says, so a change to the shipped file shows up here instead of being papered
over. :class:`Nginx` runs it as a foreground process (``nginx -p <tmp> -c <conf>``) with its
own temp paths; :func:`make_certificate` makes a CA and a localhost certificate with the
``cryptography`` package.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SITE = REPO / "deploy" / "nginx" / "icsfeed.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

#: the values on the shipped file's EDIT lines
_SHIPPED = {
    "upstream": "server 127.0.0.1:8080;",
    "cache": "proxy_cache_path /var/cache/nginx/icsfeed ",
    "http": "listen 80;",
    "http6": "listen [::]:80;",
    "https": "listen 443 ssl http2;",
    "https6": "listen [::]:443 ssl http2;",
    "name": "server_name feeds.example.com;",
    "cert": "ssl_certificate /etc/letsencrypt/live/feeds.example.com/fullchain.pem;",
    "key": "ssl_certificate_key /etc/letsencrypt/live/feeds.example.com/privkey.pem;",
    "log": "access_log /var/log/nginx/icsfeed.access.log ",
}
_COUNTS = {"name": 2, "log": 2}
FORWARDED_LINES = ("proxy_set_header X-Forwarded-",)


@dataclass(frozen=True)
class Certificate:
    ca: Path  # what clients verify against (requests' verify=)
    cert: Path
    key: Path


def make_certificate(directory: Path, host: str = "localhost") -> Certificate:
    """A throwaway CA and a certificate for ``host`` and 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "icsfeed test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    out = Certificate(ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem")
    out.ca.write_bytes(ca.public_bytes(pem))
    out.cert.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    out.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    out.key.chmod(0o600)
    return out


def render_site(*, https_port: int, http_port: int, upstream: str, cert: Certificate, cache_dir: Path,
                access_log: Path, server_name: str = "localhost", forwarded: bool = True,
                site: Path = SHIPPED_SITE) -> str:
    """The shipped site with this machine's values on its EDIT lines (IPv6 listeners dropped:
    everything here is 127.0.0.1). ``forwarded=False``: without its X-Forwarded-* lines, as a
    plain ``proxy_pass`` would be."""
    text = site.read_text(encoding="utf-8")
    values = {
        "upstream": f"server {upstream};",
        "cache": f"proxy_cache_path {cache_dir} ",
        "http": f"listen 127.0.0.1:{http_port};",
        "http6": "",
        "https": f"listen 127.0.0.1:{https_port} ssl http2;",
        "https6": "",
        "name": f"server_name {server_name};",
        "cert": f"ssl_certificate {cert.cert};",
        "key": f"ssl_certificate_key {cert.key};",
        "log": f"access_log {access_log} ",
    }
    for name, shipped in _SHIPPED.items():
        found = text.count(shipped)
        assert found == _COUNTS.get(name, 1), f"{site}: expected {shipped!r} {_COUNTS.get(name, 1)}x, found {found}x"
        text = text.replace(shipped, values[name])
    if not forwarded:
        lines = [line for line in text.splitlines() if not line.strip().startswith(FORWARDED_LINES)]
        assert len(lines) < len(text.splitlines())
        text = "\n".join(lines) + "\n"
    return text


MAIN_CONF = """\
{user}worker_processes 1;
daemon off;
master_process on;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    types {{ text/calendar ics; text/html html; }}
    sendfile on; tcp_nopush on; keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy; fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi; scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/site.conf;
{extra}
}}
"""


class Nginx:
    """nginx in the foreground with ``site`` (and ``extra`` http-level lines) under ``prefix``."""

    def __init__(self, prefix: Path, site: str, ports: tuple[int, ...], extra: str = "") -> None:
        self.prefix = prefix
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("tmp", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "cache"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        (prefix / "site.conf").write_text(site, encoding="utf-8")
        # as root the workers would become "nobody", who cannot enter pytest's private temp dirs
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(MAIN_CONF.format(user=user, prefix=prefix, extra=extra), encoding="utf-8")

    def check(self) -> None:
        """``nginx -t``: AssertionError with nginx's own message if the config is refused."""
        done = subprocess.run([NGINX, "-t", "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr

    def start(self, timeout: float = 15.0) -> Self:
        if not Path(NGINX).exists():
            raise AssertionError("nginx is not installed (Debian package nginx-light)")
        self.check()
        self.proc = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"nginx exited: {self.error_log()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"nginx not listening on {port}: {self.error_log()}") from None
                    time.sleep(0.05)
        return self

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
