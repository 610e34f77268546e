"""Chaos accounting: what the clients were told vs what the database holds.

accepted   distinct event ids answered 202 (the first 202 carries the group's fingerprint)
stored     the DB's truth: sum of error_groups.count
lost       accepted events the DB does not count, group by group (a shortfall explained by events sitting
           in the dead-letter list is reported as dead-lettered instead)
duplicated counted more often than accepted, group by group, beyond the events whose outcome stayed unknown
           (transport errors never settled by a re-send: the server may or may not have counted them)
Two more lies are caught from the clients' own records: a 503 for an event the server had counted (its
re-send came back "duplicate"), and a deliberate re-send of an accepted id that was not answered "duplicate".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from loadtest.chaos_load import REFUSED, EventRecord, ambiguous

_EVENT_ID = re.compile(rb"[0-9a-f]{32}")


def account(accepted: Mapping[str, str], db_counts: Mapping[str, int], dead_lettered: Iterable[str] = (),
            unknown: Mapping[str | None, int] | None = None) -> dict[str, Any]:
    """`accepted`: event id -> fingerprint; `db_counts`: fingerprint -> error_groups.count; `dead_lettered`:
    event ids found in the dead-letter list; `unknown`: events of undecided outcome per fingerprint (None =
    fingerprint unknown: may excuse an extra count in any group)."""
    expected = Counter(accepted.values())
    dead = {e for e in dead_lettered if e in accepted}
    dead_by_fp = Counter(accepted[e] for e in dead)
    unknown = dict(unknown or {})
    spare_anywhere = unknown.pop(None, 0)
    lost = duplicated = 0
    wrong: dict[str, tuple[int, int]] = {}
    for fp in sorted(set(expected) | set(db_counts)):
        want, have = expected.get(fp, 0), int(db_counts.get(fp, 0))
        if have == want:
            continue
        wrong[fp] = (want, have)
        if have < want:
            lost += max(0, want - have - dead_by_fp[fp])
        else:
            extra = max(0, have - want - unknown.get(fp, 0))
            excused = min(extra, spare_anywhere)
            spare_anywhere -= excused
            duplicated += extra - excused
    return {"accepted": len(accepted), "stored": sum(int(n) for n in db_counts.values()), "lost": lost,
            "duplicated": duplicated, "dead_lettered": len(dead), "groups": len(set(expected) | set(db_counts)),
            "groups_wrong": len(wrong), "wrong_examples": {fp[:16]: pair for fp, pair in list(wrong.items())[:5]}}


def client_view(events: Mapping[str, EventRecord]) -> dict[str, Any]:
    """From the clients' records: accepted ids, undecided ones, and the server's contradictions."""
    template_fp: dict[int, str] = {}
    accepted: dict[str, str] = {}
    for event_id, rec in events.items():
        if rec.fingerprint is not None:
            accepted[event_id] = rec.fingerprint
            template_fp.setdefault(rec.template, rec.fingerprint)
    unknown: Counter[str | None] = Counter()
    refused_but_counted = dedup_misses = refused_only = 0
    contradicted: dict[str, list[tuple[int, float, float]]] = {}  # a few of them: (status, sent, answered)
    for event_id, rec in events.items():
        dedup_misses += rec.dedup_misses
        if rec.fingerprint is None:
            if any(ambiguous(s) for s in rec.statuses):
                unknown[template_fp.get(rec.template)] += 1
            elif rec.statuses and all(s in REFUSED for s in rec.statuses):
                refused_only += 1
            continue
        before = rec.statuses[:rec.statuses.index(202)]
        if rec.duplicate_first_202 and before and not any(ambiguous(s) for s in before):
            refused_but_counted += 1  # every earlier answer was 429/503 "not counted", yet it was
            if len(contradicted) < 5:
                tries = zip(rec.statuses, rec.tries, strict=False)  # unit tests' records carry no times
                contradicted[event_id] = [(s, round(a, 3), round(b, 3)) for s, (a, b) in tries]
    return {"accepted": accepted, "unknown": dict(unknown), "refused_but_counted": refused_but_counted,
            "refused_but_counted_examples": contradicted,
            "dedup_misses": dedup_misses, "never_accepted": refused_only}


def dead_lettered_ids(records: Iterable[bytes], known: Iterable[str]) -> set[str]:
    """Event ids named in dead-letter records, whatever the record's layout (ids are 32 hex digits)."""
    ids = {m.decode() for raw in records for m in _EVENT_ID.findall(raw)}
    return ids & set(known)
