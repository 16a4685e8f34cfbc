"""docs/configuration.md is generated from shared/settings.py (scripts/gen_config_docs.py): the committed page must be
what the generator writes today, and every setting must say what it does."""

from __future__ import annotations

import pytest

from scripts.gen_config_docs import OUTPUT, render
from shared.settings import Settings

pytestmark = pytest.mark.pure  # no server of the stack: `make test-fast` runs it


def test_every_setting_has_a_description():
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_the_committed_configuration_page_is_the_generated_one():
    assert OUTPUT.read_text(encoding="utf-8") == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_setting_is_on_the_page():
    page = OUTPUT.read_text(encoding="utf-8")
    prefix = Settings.model_config.get("env_prefix", "")
    assert [name for name in Settings.model_fields if f"`{prefix}{name.upper()}`" not in page] == []
