"""What a webhook receives.

"json": {"delivery_id", "kind", "rule": {"id", "name"}, "project_id", "at" (unix s of the signal),
"count" (the signal's count: events in the window for threshold, the rate for spike; else null),
"group": {"fingerprint", "message", "service", "level", "count", "first_seen", "last_seen"}} — group
fields are null when the group is not stored yet. "slack": {"text", "blocks"} as Slack incoming webhooks
take it ("text" is the notification fallback).
"""

from __future__ import annotations

from typing import Any

import orjson

TITLES = {"new_group": "New error", "regression": "Regression", "spike": "Spike",
          "threshold": "Threshold reached", "test": "Test alert"}


def describe(alert: dict[str, Any]) -> str:
    kind = alert["kind"]
    count = alert.get("count")
    if kind == "threshold":
        return f"{count} events in {alert.get('window_minutes')} min"
    if kind == "spike":
        return f"{count} events/s"
    if kind == "regression":
        return "a resolved error is back"
    if kind == "test":
        return "this rule's webhook works"
    return "first event of a new error group"


def body(alert: dict[str, Any], rule: Any, group: dict[str, Any] | None) -> bytes:
    doc = {"delivery_id": alert["delivery_id"], "kind": alert["kind"],
           "rule": {"id": rule.id, "name": rule.name}, "project_id": alert["project_id"],
           "at": alert.get("at"), "count": alert.get("count"),
           "group": {"fingerprint": alert.get("fingerprint"), "message": None, "service": None, "level": None,
                     "count": None, "first_seen": None, "last_seen": None, **(group or {})}}
    if rule.format == "slack":
        return orjson.dumps(slack(doc, describe({**alert, "window_minutes": rule.window_minutes})))
    return orjson.dumps(doc)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack(doc: dict[str, Any], what: str) -> dict[str, Any]:
    g = doc["group"]
    message = _escape(str(g.get("message") or g.get("fingerprint") or "")[:500])
    title = f"{TITLES.get(doc['kind'], doc['kind'])} in project {doc['project_id']}: {what}"
    facts = [f"*Service:* {_escape(str(g.get('service') or '-'))}", f"*Level:* {g.get('level') or '-'}",
             f"*Events:* {g.get('count') if g.get('count') is not None else '-'}",
             f"*Rule:* {_escape(doc['rule']['name'])}"]
    return {"text": f"{title}: {message}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{_escape(title)}*\n{message}"}},
                       {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in facts]},
                       {"type": "context", "elements": [{"type": "mrkdwn",
                                                         "text": f"fingerprint `{g.get('fingerprint')}`"}]}]}
