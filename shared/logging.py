"""Structured JSON logs on stdout; ``request_id`` is bound through contextvars so every line carries it.

``service`` is added by a processor, not bound as a contextvar: the broker clears the contextvars at the start of
every message it hands to a handler (so nothing of an earlier message leaks into its lines), which used to drop
``service`` from every line a consumed message produced.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"webhook_secret", "secret", "password", "api_key", "authorization", "amqp_url"})


def _redact(_logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret reach the logs, even if a caller passes one by mistake."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def _service_tagger(service: str) -> structlog.types.Processor:
    def add_service(_logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("service", service)
        return event

    return add_service


def configure_logging(service: str, level: str = "INFO") -> structlog.stdlib.BoundLogger:
    """Route stdlib and structlog output through one JSON renderer tagged with the service name."""
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=level.upper())
    for noisy in ("aiormq", "aio_pika", "pymongo", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _service_tagger(service),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger()
