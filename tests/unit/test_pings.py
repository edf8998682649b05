"""The ping outcome's log form: open ids by outcome, bounded, and counts only in responses."""

from __future__ import annotations

from feishu_mirror.pings import MAX_LOGGED_OPEN_IDS, PingOutcome


def test_the_log_form_names_each_user_under_their_outcome_and_the_response_only_counts() -> None:
    # GIVEN one user of each outcome
    outcome = PingOutcome(started=["ou_a"], coalesced=["ou_b"], ignored=["ou_c"], invoke_failed=["ou_d"])
    # WHEN it is written for the log and for the response
    logged, answered = outcome.open_ids(), outcome.as_dict()
    # THEN the log names them and the response holds no open id
    assert logged == {
        "started_open_ids": ["ou_a"],
        "coalesced_open_ids": ["ou_b"],
        "ignored_open_ids": ["ou_c"],
        "invoke_failed_open_ids": ["ou_d"],
    }
    assert answered == {"started": 1, "coalesced": 1, "ignored": 1, "invoke_failed": 1}


def test_the_log_form_is_bounded_and_counts_what_it_left_out() -> None:
    # GIVEN more users than the bound allows (Feishu sends at most 1000 per event)
    outcome = PingOutcome(started=[f"ou_s{n}" for n in range(3)], coalesced=[f"ou_c{n}" for n in range(4)])
    # WHEN it is written with a bound of 5
    logged = outcome.open_ids(limit=5)
    # THEN the first 5 are named, in outcome order, and the 2 others counted
    assert logged["started_open_ids"] == ["ou_s0", "ou_s1", "ou_s2"]
    assert logged["coalesced_open_ids"] == ["ou_c0", "ou_c1"]
    assert logged["ignored_open_ids"] == logged["invoke_failed_open_ids"] == []
    assert logged["open_ids_not_logged"] == 2
    # AND a full event of Feishu's is logged whole
    full = PingOutcome(started=[f"ou_{n}" for n in range(1000)]).open_ids()
    assert MAX_LOGGED_OPEN_IDS == 1000
    assert len(full["started_open_ids"]) == 1000
    assert "open_ids_not_logged" not in full
