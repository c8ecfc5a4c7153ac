"""A quick look at whether the Hugging Face Hub can be reached before asking it for anything.

huggingface_hub retries a failed request five times with back-off (about 25 s, hard-coded) and
logs every retry; a user without a network deserves one line at once instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_offline_reason(timeout: float = 3.0, offline_vars: tuple = ("HF_HUB_OFFLINE",)) -> str | None:
    """Why the Hub is out of reach ("HF_HUB_OFFLINE is set", "cannot reach huggingface.co"), or None.

    Behind a proxy no direct probe is made (the proxy decides), so None is returned.
    """
    for var in offline_vars:
        if os.environ.get(var, "0").lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError:
        return f"cannot reach {host}"
