"""One TLS context for every provider's HTTP clients.

Each step builds its own SDK client (so cancelling a step can close its connection), and an
SDK left to itself makes a fresh ``ssl.SSLContext`` per client, loading the CA bundle from
disk: 50-200 ms of CPU on the event loop, per step. Built once here and handed to each
client, it costs nothing per step.
"""

from __future__ import annotations

import functools
import os
import ssl

import certifi

__all__ = ["tls_context"]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The default verifying context (honouring ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``)."""
    return ssl.create_default_context(
        cafile=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        capath=os.environ.get("SSL_CERT_DIR") or None,
    )
