"""The chaos accounting on fabricated inputs: it must see a lost event, a double count, a counted 503 and a
dedup miss, and must not blame the server for what it cannot know (dead letters, undecided outcomes)."""

from __future__ import annotations

import orjson

from loadtest.chaos_account import account, client_view, dead_lettered_ids
from loadtest.chaos_load import TRANSPORT, EventRecord, ambiguous
from loadtest.chaos_report import verdict

ACCEPTED = {"a" * 32: "fp1", "b" * 32: "fp1", "c" * 32: "fp2"}


def test_exact_counts_are_neither_lost_nor_duplicated() -> None:
    out = account(ACCEPTED, {"fp1": 2, "fp2": 1})
    assert (out["accepted"], out["stored"], out["lost"], out["duplicated"]) == (3, 3, 0, 0)
    assert out["groups_wrong"] == 0


def test_a_missing_count_is_a_loss() -> None:
    out = account(ACCEPTED, {"fp1": 1, "fp2": 1})
    assert (out["lost"], out["duplicated"], out["stored"]) == (1, 0, 2)
    assert account(ACCEPTED, {"fp1": 2})["lost"] == 1  # a whole group missing from the DB


def test_an_extra_count_is_a_duplicate_even_when_the_total_matches() -> None:
    out = account(ACCEPTED, {"fp1": 3, "fp2": 1})
    assert (out["lost"], out["duplicated"]) == (0, 1)
    # one lost in fp2 and one double counted in fp1: the totals agree, group by group they do not
    swapped = account(ACCEPTED, {"fp1": 3, "fp2": 0})
    assert (swapped["stored"], swapped["lost"], swapped["duplicated"]) == (3, 1, 1)
    assert account(ACCEPTED, {"fp1": 2, "fp2": 1, "fp9": 4})["duplicated"] == 4  # a group nobody sent


def test_a_shortfall_explained_by_dead_letters_is_not_lost() -> None:
    out = account(ACCEPTED, {"fp1": 1, "fp2": 1}, dead_lettered=["b" * 32, "f" * 32])
    assert (out["lost"], out["dead_lettered"]) == (0, 1)  # an id nobody was told 202 about is not counted
    assert account(ACCEPTED, {"fp2": 1}, dead_lettered=["b" * 32])["lost"] == 1  # only one of two explained


def test_undecided_outcomes_excuse_extra_counts_only_up_to_their_number() -> None:
    assert account(ACCEPTED, {"fp1": 3, "fp2": 1}, unknown={"fp1": 1})["duplicated"] == 0
    assert account(ACCEPTED, {"fp1": 4, "fp2": 1}, unknown={"fp1": 1})["duplicated"] == 1
    assert account(ACCEPTED, {"fp1": 2, "fp2": 2}, unknown={"fp1": 1})["duplicated"] == 1  # other group
    assert account(ACCEPTED, {"fp1": 2, "fp2": 2}, unknown={None: 1})["duplicated"] == 0  # group unknown
    assert account(ACCEPTED, {"fp1": 3, "fp2": 2}, unknown={None: 1})["duplicated"] == 1


def _rec(template: int, statuses: list[int], fp: str | None = None, dup_first: bool = False,
         misses: int = 0) -> EventRecord:
    return EventRecord(template, statuses, fp, dup_first, misses)


def test_client_view_catches_a_counted_503_and_a_dedup_miss() -> None:
    events = {
        "1" * 32: _rec(0, [202], "fp1"),
        "2" * 32: _rec(0, [503, 503, 202], "fp1", dup_first=True),  # refused twice, yet already counted: a lie
        "3" * 32: _rec(0, [TRANSPORT, 202], "fp1", dup_first=True),  # no answer first: may have counted, fine
        "4" * 32: _rec(1, [503, 202], "fp2"),  # refused then accepted once: fine
        "5" * 32: _rec(1, [202, 202], "fp2", misses=1),  # a deliberate re-send counted again
        "6" * 32: _rec(1, [502, TRANSPORT]),  # never answered: undecided, in fp2 (same template)
        "7" * 32: _rec(9, [TRANSPORT]),  # undecided in a group no 202 ever named
        "8" * 32: _rec(1, [503, 429]),  # only refusals: not counted, not undecided
    }
    view = client_view(events)
    assert set(view["accepted"]) == {"1" * 32, "2" * 32, "3" * 32, "4" * 32, "5" * 32}
    assert view["refused_but_counted"] == 1
    assert view["dedup_misses"] == 1
    assert view["unknown"] == {"fp2": 1, None: 1}
    assert view["never_accepted"] == 1
    row = {**account(view["accepted"], {"fp1": 3, "fp2": 2}, (), view["unknown"]), "settled": True, **view}
    assert verdict(row) == "FAIL: 503 counted, dedup miss"


def test_ambiguous_statuses() -> None:
    assert [s for s in (TRANSPORT, 202, 400, 429, 500, 502, 503, 504) if ambiguous(s)] == [TRANSPORT, 500, 502, 504]


def test_dead_letter_ids_are_found_in_any_record_layout() -> None:
    record = orjson.dumps({"task_id": "9" * 32, "message": orjson.dumps(
        {"kwargs": {"events": [{"event_id": "a" * 32}, {"event_id": "c" * 32}]}}).decode()})
    assert dead_lettered_ids([record, b"garbage"], ACCEPTED) == {"a" * 32, "c" * 32}


def test_verdict_dead_letters_only_the_refused_event() -> None:
    clean = {"lost": 0, "duplicated": 0, "settled": True, "refused_but_counted": 0, "dedup_misses": 0}
    poison = {**clean, "fault_key": "db-reject", "info": {"dead_lettered": True}}
    assert verdict({**poison, "dead_lettered": 1, "groups_without_details": 1}) == "OK"
    assert verdict({**poison, "dead_lettered": 8, "groups_without_details": 1}) == \
        "FAIL: 7 events dead-lettered that the DB never refused"
    assert verdict({**poison, "info": {"dead_lettered": False}}) == "FAIL: poison not dead-lettered"
    outage = {**clean, "fault_key": "mariadb-down"}
    assert verdict({**outage, "dead_lettered": 1}) == "FAIL: 1 events dead-lettered that the DB never refused"
    assert verdict({**outage, "groups_without_details": 2}) == "FAIL: 2 groups without details"
    assert verdict({**outage, "lost": 3, "settled": False}) == "FAIL: lost, not settled"
