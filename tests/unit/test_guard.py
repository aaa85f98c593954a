"""The lexical guard: what it refuses."""

from __future__ import annotations

import pytest

from semcache_server.guard import conflict, cosine_is_blind, near_copy, opposite_polarity


@pytest.mark.parametrize(
    "query,candidate,reason",
    [
        ("is port 22 open", "is port 22 closed", "opposites: open/closed"),
        ("is port 22 open", "is port 23 open", "numbers"),
        ("set an alarm for 7am", "set an alarm for 8am", "numbers"),
        ("how do I enable 2fa", "how do I disable 2fa", "opposites: enable/disable"),
        ("is the store open on sunday", "is the store not open on sunday", "negation"),
        ("the refund was approved", "the refund wasn't approved", "negation"),
        ("set an alarm for two pm", "set an alarm for three pm", "numbers"),
        ("what is twenty percent of one hundred and twenty", "what is twenty percent of one hundred and fifty", "numbers"),
        ("wake me at six am", "wake me at six pm", "opposites: am/pm"),
        ("turn on one of the lights", "switch on a light", None),  # "one" is not a number here
        ("transfer 1,000 dollars", "transfer 1000 dollars", None),
        ("is port 22 open", "Is port 22 open?", None),
        ("What is your return policy?", "How do I return an item?", None),
        ("I still haven't got my card", "where is my new card", None),  # phrasing, not inversion
        ("I haven't received my card", "my card has not arrived", None),
        # Polarity: negation words and negating prefixes each turn a sentence over once.
        ("it's not healthy", "it's unhealthy", None),  # two ways to say one thing
        ("it's not healthy", "it's not unhealthy", "negation"),
        ("that's unfair", "that's fair", "negation"),
        ("how do I unlock my card", "how do I lock my card", "negation"),
        ("support didn't help and none of it worked", "support helped and none of it worked", "negation"),
        ("is the unit working", "is it working", None),  # "unit" is not un + it
        ("what is the highest rate", "what is the lowest rate", "opposites: highest/lowest"),
        ("is my old card still valid", "is my new card still valid", "opposites: old/new"),
    ],
)
def test_conflict(query, candidate, reason):
    assert conflict(query, candidate) == reason
    flipped = reason
    if reason and reason.startswith("opposites: "):
        first, second = reason.removeprefix("opposites: ").split("/")
        flipped = f"opposites: {second}/{first}"
    assert conflict(candidate, query) == flipped


@pytest.mark.parametrize(
    "query,candidate,expected",
    [
        ("flights from Boston to Tampa", "flights from Tampa to Boston", True),  # reordered
        ("The team won in 1990 and lost in 1991.", "In 1991 the team lost, and in 1990 it won.", True),
        ("how do I reset my pin", "how do I reset my pin please", True),  # one word more: a near copy
        ("is the shop on main street open on sunday", "is the shop on main street closed on sunday", True),  # a word swapped
        ("my card still hasn't arrived", "where is my card", True),  # differently worded, but negated
        ("how do I reset my pin", "How do I reset my PIN?", False),  # the same words, the same order
        ("what is your return policy", "how do I return an item", False),  # other words, same polarity
        ("dog bites man", "man bites dog", False),  # too short to say
    ],
)
def test_cosine_is_blind_is_near_copy_or_opposite_polarity(query, candidate, expected):
    assert cosine_is_blind(query, candidate) is expected
    assert cosine_is_blind(candidate, query) is expected
    assert expected is (near_copy(query, candidate) or opposite_polarity(query, candidate))


@pytest.mark.parametrize(
    "query,candidate,expected",
    [
        ("my card still hasn't arrived", "where is my card", True),  # differently worded: conflict() lets it be
        ("is the shop open on sunday", "is the shop not open on sunday", True),
        ("is it unhealthy", "is it healthy", True),
        ("is it not healthy", "is it unhealthy", False),  # two ways to say the same
        ("how do I return an item", "what is your return policy", False),
    ],
)
def test_opposite_polarity(query, candidate, expected):
    assert opposite_polarity(query, candidate) is expected


def test_near_copy():
    assert near_copy("Research suggests that practice of compassion can prevent fatigue and burnout",
                     "Research suggests that practice of compassion can aggravate fatigue and burnout")
    assert near_copy("flights from Boston to Tampa", "flights from Tampa to Boston")
    assert not near_copy("how do I reset my pin", "How do I reset my PIN?")  # the same text
    assert not near_copy("what is your return policy", "how do I return an item")
