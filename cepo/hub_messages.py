"""One line, not ten, when the Hugging Face hub cannot be reached.

``huggingface_hub``'s ``http_backoff`` retries a failed request five times and logs two warnings per try
(``'[Errno -2] Name or service not known' thrown while requesting HEAD https://...`` and ``Retrying in 8s [Retry
3/5].``), and a model load makes several such requests. :func:`quiet_hub_retries` installs a logging filter that
lets the first failure through as one line naming the host and what to do (``HF_HUB_OFFLINE=1`` reads the local
cache at once), and drops the rest; the command's own error follows when the retries are spent.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlparse

__all__ = ["HUB_HTTP_LOGGER", "quiet_hub_retries"]

HUB_HTTP_LOGGER = "huggingface_hub.utils._http"
_FAILED = re.compile(r"^'(?P<error>.*)' thrown while requesting (?P<method>\S+) (?P<url>\S+)$", re.S)


class _OneLineRetries(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        failed = _FAILED.match(message)
        if failed is None and not message.startswith(("Retrying in ", "Rate limited.")):
            return True
        if self.said or failed is None:
            return False
        self.said = True
        host = urlparse(failed.group("url")).netloc or failed.group("url")
        error = " ".join(failed.group("error").split())
        record.msg, record.args = (f"hub: cannot reach {host} ({error}); retrying for up to a minute before the error "
                                   "(set HF_HUB_OFFLINE=1 to use the local cache only, at once)"), ()
        return True


def quiet_hub_retries() -> None:
    """Install the one-line filter on ``huggingface_hub``'s HTTP logger (once per process)."""
    logger = logging.getLogger(HUB_HTTP_LOGGER)
    if not any(isinstance(f, _OneLineRetries) for f in logger.filters):
        logger.addFilter(_OneLineRetries())
