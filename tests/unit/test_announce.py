"""ops/announce's plan: pure, from the notices shown now."""
from __future__ import annotations

from hubops.ops.announce import plan

NOW = 1_800_000_000.0


def test_a_new_notice_for_everyone_expires_after_the_hours():
    new, changes = plan({}, message="Maintenance", users=[], hours=2, clear=False, now=NOW)
    assert new == {"*": {"text": "Maintenance", "until": NOW + 7200}}
    assert changes[0][:2] == ("create", "notice for everyone")


def test_remove_nodes_notices_are_kept_beside_an_operator_message():
    current = {"alice": "Maintenance: your server moves"}
    new, _ = plan(current, message="Term ends Friday", users=[], hours=1, clear=False, now=NOW)
    assert new["alice"] == "Maintenance: your server moves" and new["*"]["text"] == "Term ends Friday"


def test_clear_takes_down_only_the_named_users_or_everything():
    current = {"*": {"text": "all", "until": NOW + 60}, "bob": "bob's"}
    new, changes = plan(current, message="", users=["bob"], hours=1, clear=True, now=NOW)
    assert new == {"*": {"text": "all", "until": NOW + 60}} and [c[1] for c in changes] == ["notice for bob"]
    new, _ = plan(current, message="", users=[], hours=1, clear=True, now=NOW)
    assert new == {}


def test_expired_notices_are_dropped():
    current = {"*": {"text": "old", "until": NOW - 1}}
    new, changes = plan(current, message="", users=[], hours=1, clear=True, now=NOW)
    assert new == {} and changes == [("remove", "notice for *", "expired")]
