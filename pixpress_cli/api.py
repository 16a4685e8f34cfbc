"""The pixpress HTTP API as the command line uses it: one method per call, answers parsed with the API's own models
(shared/api_models.py), every failure turned into one of two errors whose exit codes scripts rely on.

A client of the HTTP API only: nothing here imports the services. Answers are parsed ignoring fields this client
does not know, as the API's contract asks of clients (a newer server may add fields).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.api_models import ProductsPage, RequestsPage, RowError, StatusView, UploadAccepted

Model = TypeVar("Model", bound=BaseModel)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # an upload of a large CSV is validated before the API answers
PRODUCTS_PAGE = 500  # the API's largest products page
REQUESTS_PAGE = 100  # the API's largest page of GET /requests


class ExitCode(IntEnum):
    """What ``pixpress`` exits with; scripts rely on these, so they never change meaning."""

    COMPLETED = 0  # the request Completed, or the command did what it was asked
    FAILED = 1  # the request Failed
    REFUSED = 2  # the API refused the input (bad CSV, unknown id, wrong API key, not ready), or bad arguments
    UNREACHABLE = 3  # the API could not be reached: connection refused, timeouts, 5xx, an answer that is not pixpress's


@dataclass
class Refused(Exception):
    """A 4xx answer: the input is the problem, trying again unchanged will not help."""

    status: int
    title: str
    detail: str
    errors: list[RowError] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.title} ({self.status}): {self.detail}"


@dataclass
class Unreachable(Exception):
    """No usable answer: the API is down, too slow, failing (5xx) or not pixpress."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def _session(api_key: str | None) -> requests.Session:
    """GETs are retried on connection errors and 502/503/504 (a restarting API); the upload is never retried."""
    session = requests.Session()
    retries = Retry(
        total=2, backoff_factor=0.3, status_forcelist=(502, 503, 504), allowed_methods={"GET"}, raise_on_status=False
    )
    session.mount("http://", HTTPAdapter(max_retries=retries))
    session.mount("https://", HTTPAdapter(max_retries=retries))
    if api_key:
        session.headers["X-API-Key"] = api_key
    session.headers["User-Agent"] = "pixpress-cli"
    return session


def _problem(response: requests.Response) -> tuple[str, str, list[RowError]]:
    """Title, detail and row errors of a problem+json answer; what can be said of any other body."""
    try:
        body = response.json()
    except ValueError:
        return response.reason or "HTTP error", response.text[:200].strip(), []
    if not isinstance(body, dict):
        return response.reason or "HTTP error", str(body)[:200], []
    errors: list[RowError] = []
    for item in body.get("errors") or []:
        try:
            errors.append(RowError.model_validate(item, extra="ignore"))
        except ValidationError:
            continue
    title = str(body.get("title") or response.reason or "HTTP error")
    return title, str(body.get("detail") or body.get("error") or ""), errors


class Api:
    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.session = _session(api_key)
        # the output CSV is public: fetched with a session that never carries the API key to its host
        self.public = _session(None)

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/"))

    def _send(self, method: str, path: str, **options: Any) -> requests.Response:
        url = self.url(path)
        try:
            response = self.session.request(method, url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), **options)
        except requests.Timeout:
            raise Unreachable(f"{url}: no answer within {READ_TIMEOUT:g} s") from None
        except requests.RequestException as exc:
            raise Unreachable(f"cannot reach the API at {self.base_url}: {_reason(exc)}") from None
        if response.status_code >= 500:
            title, detail, _ = _problem(response)
            raise Unreachable(f"{url}: the API failed ({response.status_code} {title}) {detail}".strip())
        if response.status_code >= 400:
            raise Refused(response.status_code, *_problem(response))
        return response

    def _parse(self, response: requests.Response, model: type[Model]) -> Model:
        try:
            return model.model_validate(response.json(), extra="ignore")
        except (ValueError, ValidationError):
            raise Unreachable(f"{response.url}: the answer is not pixpress's ({model.__name__} expected)") from None

    def upload(self, path: Path, webhook_url: str | None) -> UploadAccepted:
        data = {"webhook_url": webhook_url} if webhook_url else {}
        with path.open("rb") as stream:
            response = self._send("POST", "/upload", files={"file": (path.name, stream, "text/csv")}, data=data)
        return self._parse(response, UploadAccepted)

    def status_json(self, request_id: str) -> dict[str, Any]:
        """The status exactly as the API sent it (``--json`` prints this), checked against :class:`StatusView`."""
        response = self._send("GET", f"/status/{request_id}")
        self._parse(response, StatusView)
        body: dict[str, Any] = response.json()
        return body

    def status(self, request_id: str) -> StatusView:
        return self._parse(self._send("GET", f"/status/{request_id}"), StatusView)

    def requests_page(self, path: str) -> tuple[RequestsPage, list[dict[str, Any]]]:
        """A page of ``GET /requests`` parsed, and its items as sent."""
        response = self._send("GET", path)
        return self._parse(response, RequestsPage), response.json()["items"]

    def products(self, request_id: str) -> Iterator[ProductsPage]:
        """Every page of the request's products, following ``next``."""
        path: str | None = f"/requests/{request_id}/products?limit={PRODUCTS_PAGE}"
        while path:
            page = self._parse(self._send("GET", path), ProductsPage)
            yield page
            path = page.next

    def output_csv_location(self, request_id: str) -> str:
        """Where the output CSV is: the API answers a redirect, which is not followed with the API key."""
        response = self._send("GET", f"/requests/{request_id}/output.csv", allow_redirects=False)
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise Unreachable(f"{response.url}: expected a redirect to the output CSV, got {response.status_code}")
        target = urljoin(response.url, location)
        if urlsplit(target).scheme not in ("http", "https"):
            raise Unreachable(f"{response.url}: the output CSV is at an unusable address: {target!r}")
        return target

    def download(self, url: str, out: IO[bytes]) -> int:
        """The bytes at ``url`` into ``out``, as they are; returns how many."""
        written = 0
        try:
            with self.public.get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as response:
                if response.status_code >= 500:
                    raise Unreachable(f"{url}: the storage failed ({response.status_code})")
                if response.status_code >= 400:
                    raise Refused(
                        response.status_code, "Output CSV not available", f"{url} answered {response.status_code}"
                    )
                for chunk in response.iter_content(chunk_size=256 * 1024, decode_unicode=False):
                    out.write(chunk)
                    written += len(chunk)
        except requests.RequestException as exc:
            raise Unreachable(f"cannot download {url}: {_reason(exc)}") from None
        return written


def _reason(exc: requests.RequestException) -> str:
    """``Connection refused`` rather than urllib3's whole retry story."""
    inner: object = exc.args[0] if exc.args else exc
    text = str(getattr(inner, "reason", inner))  # urllib3's MaxRetryError carries the last error as `reason`
    return text.rsplit("] ", 1)[-1] if "[Errno" in text else text
