import random
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from taskiq.formatters.json_formatter import JSONFormatter

from core.events import LogErrorIn, normalize_event_id
from core.retry import backoff_delay
from core.settings import Settings
from core.tasks import PERSIST_EVENTS, persist_message


def test_event_id_spellings_normalise_to_32_hex() -> None:
    dashed = "123E4567-E89B-12D3-A456-426614174000"
    assert normalize_event_id(dashed) == "123e4567e89b12d3a456426614174000"
    assert normalize_event_id("123e4567e89b12d3a456426614174000") == "123e4567e89b12d3a456426614174000"
    with pytest.raises(ValueError):
        normalize_event_id("not-an-id")


@pytest.mark.parametrize("payload", [
    {},
    {"message": ""},
    {"message": "x" * 8193},
    {"message": "x", "level": "critical"},
    {"message": "x", "service": "s" * 129},
    {"message": "x", "context": {"blob": "y" * 20_000}},
    {"message": "x", "event_id": "nope"},
    {"message": 5},
])
def test_payload_limits(payload: dict) -> None:
    with pytest.raises(ValidationError):
        LogErrorIn.model_validate(payload)


def test_defaults() -> None:
    item = LogErrorIn.model_validate({"message": "boom"})
    assert (item.level, item.service, item.event_id) == ("error", "default", None)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt in range(1, 6):
        lo, hi = 0.5 * 2 ** (attempt - 1), 2 ** (attempt - 1)
        for _ in range(50):
            d = backoff_delay(attempt, base=1.0, cap=100.0, rng=rng)
            assert lo <= d <= hi
    # every delay of attempt n+1 is at least the largest possible delay of attempt n
    assert min(backoff_delay(3, 1.0, 100.0, rng) for _ in range(100)) >= 2.0
    assert max(backoff_delay(20, 1.0, 10.0, rng) for _ in range(100)) <= 10.0


def test_production_refuses_default_or_missing_secrets() -> None:
    with pytest.raises(ValidationError):
        Settings(env="production")
    with pytest.raises(ValidationError):
        Settings(env="production", admin_token="dev-admin-token")
    with pytest.raises(ValidationError):
        Settings(env="production", admin_token="short")
    ok = Settings(env="production", admin_token="a" * 32)
    assert ok.admin_token == "a" * 32
    assert Settings(env="development").admin_token == "dev-admin-token"


def test_enqueued_message_is_taskiq_wire_format() -> None:
    events = [{"event_id": "a" * 32, "message": "m\u00e9 \"quoted\""}]
    raw = persist_message(events, task_id="t1")
    msg = JSONFormatter().loads(raw)
    assert msg.task_name == PERSIST_EVENTS and msg.task_id == "t1"
    assert msg.kwargs == {"events": events}
    assert orjson.loads(raw)["labels"] == {}


def test_settings_refuse_a_misspelt_name_in_code_but_not_in_the_environment(monkeypatch: Any) -> None:
    with pytest.raises(TypeError, match="sync_intervall"):
        Settings(sync_intervall=1)
    monkeypatch.setenv("FAULTLINE_SYNC_INTERVALL", "1")  # another tool's, or a typo: ignored as before
    assert Settings().sync_interval == 30
    assert Settings.from_env_map({"FAULTLINE_SYNC_INTERVAL": "2", "FAULTLINE_NOT_OURS": "x"}).sync_interval == 2
