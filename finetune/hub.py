"""Whether the Hugging Face Hub can be reached, found out in seconds.

Without a network, huggingface_hub retries each request with back-off for about half a
minute before it gives up. The workbench asks once, with a short TCP connect to the Hub's
endpoint, and then either goes ahead, loads what the Hugging Face cache already holds, or stops
with a message naming the sources that work offline.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

PROBE_SECONDS = 3.0


def unreachable_reason() -> str | None:
    """Why the Hub cannot be used right now (offline mode, no route, no name), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=PROBE_SECONDS):
            return None
    except OSError as exc:
        return f"{constants.ENDPOINT} is not reachable: {exc.strerror or exc}"


def cached_snapshot(repo_id: str, *, repo_type: str = "model") -> str | None:
    """The directory of the newest cached snapshot of a Hub repository, if its config is cached."""
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", repo_type=repo_type)
    return str(Path(found).parent) if isinstance(found, str) else None
