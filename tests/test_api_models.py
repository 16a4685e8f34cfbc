"""Rules of shared/api_models.py that the running API cannot show on demand: stored webhook attempts of older and
newer notifiers, and a progress count added to the message without the view (which would fail every /status)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.api_models import ProgressView, StatusView, WebhookAttempt, json_body
from shared.messages import Progress, RequestStatus

pytestmark = pytest.mark.pure

STORED_ATTEMPT = {
    "attempt": 2,
    "at": datetime(2026, 12, 3, 10, 0, 1, 250000, tzinfo=UTC),
    "ok": False,
    "status_code": 500,
    "error": "HTTP 500",
    "duration_ms": 31,
}


def test_every_count_of_the_progress_message_is_shown():
    assert set(Progress.model_fields) <= set(ProgressView.model_fields)


def test_an_attempt_stored_before_the_refused_flag_existed_reads_as_not_refused():
    attempt = WebhookAttempt.from_document(STORED_ATTEMPT)
    assert attempt.refused is False
    assert json_body(attempt)["at"] == "2026-12-03T10:00:01.250000Z"


def test_an_attempt_stored_by_a_newer_notifier_is_shown_without_what_it_added():
    attempt = WebhookAttempt.from_document({**STORED_ATTEMPT, "refused": True, "response_bytes": 12})
    assert json_body(attempt) == {**json_body(WebhookAttempt.from_document(STORED_ATTEMPT)), "refused": True}


def test_fields_without_a_value_are_left_out_and_the_others_kept_even_when_null():
    view = StatusView(
        request_id="3f2c8a1e-9b7d-4c55-8e0f-2a6b1d9c7e41",
        status=RequestStatus.PROCESSING,
        created_at=datetime(2026, 12, 3, 10, 0),  # naive, as MongoDB returns without tz_aware: it is UTC
        updated_at=datetime(2026, 12, 3, 10, 0, 5, tzinfo=UTC),
        progress=ProgressView.of(Progress(images_total=2)),
    )
    body = json.loads(json.dumps(json_body(view)))
    assert "output_csv_url" not in body and "error" not in body
    assert body["progress"]["savings_percent"] is None
    assert (body["created_at"], body["updated_at"]) == ("2026-12-03T10:00:00Z", "2026-12-03T10:00:05Z")
