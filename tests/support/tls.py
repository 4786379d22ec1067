"""A throw-away TLS server context: a self-signed certificate made by ``openssl``.

No client trusts it, which is the point: it makes a real certificate failure.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from .require import require_tools

__all__ = ["self_signed_server_context"]


def self_signed_server_context(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1 (valid 1 day)."""
    require_tools("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
