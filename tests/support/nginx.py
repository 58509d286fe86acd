"""Debian's nginx as a real TLS front for tests: renders the shipped contrib/nginx/inferclub.conf
(ports and certificate paths substituted) and runs it as a foreground process of its own."""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SHIPPED = Path(__file__).resolve().parents[2] / "contrib" / "nginx" / "inferclub.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``host`` (an IP address), signed by its own key: (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def render(port: int, hub_port: int, cert: Path, key: Path) -> str:
    """The shipped server block with this test's addresses; fails if the file drifts."""
    text = SHIPPED.read_text()
    swaps = {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "server_name hub.example.org;": "server_name 127.0.0.1;",
        "/etc/ssl/certs/hub.example.org.pem": str(cert),
        "/etc/ssl/private/hub.example.org.key": str(key),
        "http://127.0.0.1:8321;": f"http://127.0.0.1:{hub_port};",
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, f"{SHIPPED} no longer has {old!r}"
        text = text.replace(old, new)
    return text


def main_config(prefix: Path, server: Path) -> str:
    """A whole nginx.conf around the server block: all files under ``prefix``, foreground."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # nginx's master drops workers to `user` only when it runs as root; name ourselves so the
    # workers can read this test's private directory either way.
    return (
        f"daemon off;\nworker_processes 1;\nuser {getpass.getuser()};\n"
        f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp}\n    include {server};\n}}\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def nginx_front(workdir: Path, port: int, hub_port: int) -> Iterator[Path]:
    """nginx on ``https://127.0.0.1:{port}`` terminating TLS for the hub on ``hub_port``; yields
    the self-signed certificate clients should trust."""
    prefix = workdir / "nginx"
    prefix.mkdir()
    cert, key = self_signed(prefix)
    server = prefix / "inferclub.conf"
    server.write_text(render(port, hub_port, cert, key))
    conf = prefix / "nginx.conf"
    conf.write_text(main_config(prefix, server))
    with open(prefix / "stderr.log", "w") as err:
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], stderr=err)
    try:
        wait_listening(port, proc, prefix)
        yield cert
    finally:
        proc.terminate()
        proc.wait(20)


def wait_listening(port: int, proc: subprocess.Popen[bytes], prefix: Path) -> None:
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    logs = "".join(p.read_text() for p in prefix.glob("*.log"))
    raise RuntimeError(f"nginx did not start:\n{logs}")
