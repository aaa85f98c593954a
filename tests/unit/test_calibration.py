"""The threshold held to max_false_hit_rate by audits (semcache_server/calibration.py):
pure policy, with a seeded draw."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from semcache_server.calibration import Calibration, parse_calibration, wilson_upper
from semcache_server.settings import NamespaceSettings, Settings

SETTINGS = Settings(max_false_hit_rate=0.01, adaptive_max_loosening=0.05, adaptive_min_audits=50)
CONFIGURED = 0.90


def _calibration(settings: Settings = SETTINGS, recovered: dict[str, str] | None = None) -> tuple[Calibration, dict]:
    persisted: dict[str, str] = {}
    return Calibration(settings, recovered or {}, persisted.__setitem__, rng=random.Random(0)), persisted


def _feed(calibration: Calibration, lookups: list[tuple[float | None, bool]], audit_rate: float = 1.0) -> int:
    """Lookups as (best similarity, wrong if served); every drawn one is judged truly."""
    audits = 0
    for similarity, wrong in lookups:
        before = calibration.counts("ns")
        if calibration.sample("ns", audit_rate, similarity, CONFIGURED):
            assert similarity is not None
            calibration.add("ns", similarity, wrong, *before)
            audits += 1
    return audits


def test_until_enough_audits_are_in_the_namespace_is_held_strict():
    calibration, _ = _calibration()
    assert calibration.threshold("ns", CONFIGURED) == CONFIGURED  # no audit yet: the configured one
    clean = [(0.86, False)] + [(None, False)] * 9  # 1 Lookup in 10 reaches the floor, never wrong
    _feed(calibration, clean * 49)  # one audit short of adaptive_min_audits
    assert calibration.threshold("ns", CONFIGURED) == SETTINGS.uncertified_min_similarity == 0.98
    report = calibration.report(lambda namespace: CONFIGURED, None)[0]
    assert report.threshold == 0.98 and not report.certified
    _feed(calibration, clean)
    assert calibration.threshold("ns", CONFIGURED) == 0.85  # certified: down to the floor
    assert calibration.report(lambda namespace: CONFIGURED, None)[0].certified


def test_uncertified_min_similarity_minus_one_keeps_the_configured_threshold_until_certified():
    calibration, _ = _calibration(dataclasses.replace(SETTINGS, uncertified_min_similarity=-1.0))
    _feed(calibration, [(0.86, False)] * 49)
    assert calibration.threshold("ns", CONFIGURED) == CONFIGURED
    calibration, _ = _calibration(dataclasses.replace(SETTINGS, uncertified_min_similarity=0.95))
    _feed(calibration, [(0.86, False)] * 49)
    assert calibration.threshold("ns", CONFIGURED) == 0.95
    per_namespace = {"ns": NamespaceSettings(uncertified_min_similarity=0.96)}
    calibration, _ = _calibration(dataclasses.replace(SETTINGS, namespaces=per_namespace))
    _feed(calibration, [(0.86, False)] * 49)
    assert calibration.threshold("ns", CONFIGURED) == 0.96
    calibration, _ = _calibration(dataclasses.replace(SETTINGS, uncertified_min_similarity=0.5))
    _feed(calibration, [(0.86, False)] * 49)
    assert calibration.threshold("ns", CONFIGURED) == CONFIGURED  # never looser than the configured one


def test_clean_audits_loosen_it_but_never_under_the_floor():
    calibration, _ = _calibration()
    _feed(calibration, [(0.86, False), (None, False), (0.70, True)] * 400)  # 1/3 eligible, never wrong
    assert calibration.threshold("ns", CONFIGURED) == 0.85  # the floor: 0.90 - 0.05


def test_wrong_audits_keep_the_threshold_above_them():
    calibration, _ = _calibration()
    stream = [(0.955, False)] * 50 + [(0.88, True)] * 5 + [(0.93, True)] * 5 + [(None, False)] * 100
    _feed(calibration, stream * 5)
    threshold = calibration.threshold("ns", CONFIGURED)
    assert threshold > 0.93  # 6% of Lookups would be wrong at 0.93 or under
    report = calibration.report(lambda namespace: CONFIGURED, None)[0]
    assert report.threshold == threshold and report.false_hit_rate_upper <= 0.01 and report.wrong_audits == 50


def test_when_nothing_is_certified_it_only_tightens():
    calibration, _ = _calibration(dataclasses.replace(SETTINGS, uncertified_min_similarity=-1.0))
    _feed(calibration, [(0.95, False)] * 20 + [(0.89, True)] * 1 + [(0.92, False)] * 40)  # few audits, all eligible
    threshold = calibration.threshold("ns", CONFIGURED)
    assert threshold >= CONFIGURED
    assert wilson_upper(0, 61) > 0.01  # no threshold could be certified with 61 audits
    calibration, _ = _calibration()
    _feed(calibration, [(0.95, False)] * 20 + [(0.89, True)] * 1 + [(0.92, False)] * 40)
    assert calibration.threshold("ns", CONFIGURED) == 0.98  # the default holds it strict


def test_where_wrong_audits_leave_no_threshold_certified_the_point_estimate_tightens_past_the_strict_one():
    calibration, _ = _calibration()
    _feed(calibration, [(0.99, True)] * 10 + [(0.86, False)] * 90)  # 10% wrong at 0.99: nothing certified
    assert calibration.threshold("ns", CONFIGURED) == 0.995  # above every wrong one


def test_a_flood_of_correct_verdicts_opens_nothing_past_the_floor():
    calibration, _ = _calibration()
    _feed(calibration, [(0.851, False)] * 5000)  # every verdict "correct", even where the truth is not
    assert calibration.threshold("ns", CONFIGURED) >= 0.85


def test_only_drawn_lookups_at_or_over_the_floor_are_audited():
    calibration, _ = _calibration()
    assert _feed(calibration, [(0.80, False), (None, False)] * 100) == 0
    assert 200 <= _feed(calibration, [(0.87, False)] * 1000, audit_rate=0.25) <= 300
    assert calibration.counts("ns") == (1200, 1000)


def test_off_with_max_false_hit_rate_zero_and_per_namespace():
    settings = dataclasses.replace(SETTINGS, namespaces={"strict": NamespaceSettings(max_false_hit_rate=0.0)})
    calibration, _ = _calibration(settings)
    for namespace in ("ns", "strict"):
        for _ in range(400):
            calibration.add(namespace, 0.86, False, 0, 0)
    assert calibration.threshold("strict", CONFIGURED) == CONFIGURED
    assert calibration.threshold("ns", CONFIGURED) < CONFIGURED


def test_the_audits_persist_and_come_back():
    calibration, persisted = _calibration()
    _feed(calibration, [(0.86, False), (0.91, True)] * 100)
    calibration.flush()
    again, _ = _calibration(recovered=dict(persisted))
    assert again.threshold("ns", CONFIGURED) == calibration.threshold("ns", CONFIGURED)
    assert again.counts("ns") == calibration.counts("ns")
    assert parse_calibration(persisted["ns"], window=10).audits.maxlen is None
    assert len(parse_calibration(persisted["ns"], window=10).audits) == 10


def test_a_damaged_record_is_set_aside_not_fatal():
    calibration, _ = _calibration(recovered={"ns": "{not json"})
    assert calibration.threshold("ns", CONFIGURED) == CONFIGURED


def test_a_wrong_hit_the_verifier_served_counts_at_every_threshold():
    # The gray band decides under the threshold whatever the threshold is: no threshold
    # can make its wrong answers go away, so the estimate counts them at each.
    calibration, _ = _calibration()
    for _ in range(300):
        before = calibration.counts("ns")
        assert calibration.sample("ns", 1.0, 0.80, CONFIGURED, hit=True)  # a hit under the floor is eligible
        calibration.add("ns", 0.80, False, *before, verified=True)
    for _ in range(30):
        before = calibration.counts("ns")
        assert calibration.sample("ns", 1.0, 0.80, CONFIGURED, hit=True)
        calibration.add("ns", 0.80, True, *before, verified=True)
    report = calibration.report(lambda namespace: CONFIGURED, None)[0]
    assert report.false_hit_rate > 0.05  # 30 of 330, at whatever threshold is in force
    assert calibration.threshold("ns", CONFIGURED) > CONFIGURED  # nothing certified: it tightens, never loosens
    # The same audits, not served by the verifier, are under every threshold of the grid.
    plain, _ = _calibration()
    _feed(plain, [(0.80, False)] * 300 + [(0.80, True)] * 30)
    assert plain.counts("ns") == (330, 0)


def test_an_audit_record_written_before_the_verified_field_still_reads():
    old = '{"lookups": 3, "eligible": 2, "audits_total": 2, "audits": [[0.9, 1, 0, 0], [0.95, 0, 1, 1]]}'
    evidence = parse_calibration(old, window=10)
    assert [(a.similarity, a.wrong, a.verified) for a in evidence.audits] == [(0.9, True, False), (0.95, False, False)]
    calibration, persisted = _calibration()
    assert [a.verifier_score for a in parse_calibration(
        '{"lookups": 1, "eligible": 1, "audits_total": 1, "audits": [[0.9, 1, 0, 0, 1]]}', window=10,
    ).audits] == [-1.0]  # five fields: written before audits kept the verifier's score
    calibration.add("ns", 0.8, True, 0, 0, verified=True, verifier_score=0.125)
    calibration.flush()
    back = parse_calibration(persisted["ns"], window=10).audits[0]
    assert (back.verified, back.verifier_score) == (True, 0.125)
    for bad in ('[[0.9, 1, 0]]', '[[0.9, 1, 0, 0, 1, 0.5, 1]]'):
        with pytest.raises(ValueError):
            parse_calibration('{"lookups": 1, "eligible": 1, "audits_total": 1, "audits": ' + bad + '}', window=10)


def _judged(calibration: Calibration, audits: list[tuple[float, bool, float]]) -> None:
    """Audits as (cosine, wrong as the verdict says, the verifier's score of the pair)."""
    for similarity, wrong, score in audits:
        before = calibration.counts("ns")
        assert calibration.sample("ns", 1.0, similarity, CONFIGURED)
        calibration.add("ns", similarity, wrong, *before, verifier_score=score)


def test_verdicts_the_verifier_contradicts_are_distrusted_and_the_threshold_goes_strict():
    """Poisoning: every verdict says "correct", also for the pairs the verifier judged
    unlikely (score <= 0.2), which honest verdicts call correct 0-12% of the time."""
    poisoned, _ = _calibration()
    _judged(poisoned, [(0.87, False, 0.9)] * 300 + [(0.86, False, 0.05)] * 9)
    assert poisoned.threshold("ns", CONFIGURED) == 0.85  # 9 such pairs: not yet evidence
    _judged(poisoned, [(0.86, False, 0.1)])
    assert poisoned.threshold("ns", CONFIGURED) == SETTINGS.distrusted_min_similarity == 0.98
    assert poisoned.report(lambda namespace: CONFIGURED, None)[0].verdicts_distrusted
    honest, _ = _calibration()  # like traffic, judged truly: 2 of 30 unlikely pairs were right
    _judged(honest, [(0.87, False, 0.9)] * 300 + [(0.86, True, 0.05)] * 28 + [(0.86, False, 0.15)] * 2)
    report = honest.report(lambda namespace: CONFIGURED, None)[0]
    assert not report.verdicts_distrusted and report.threshold < CONFIGURED
    unscored, _ = _calibration()  # no verifier: nothing to check against, nothing distrusted
    _judged(unscored, [(0.86, False, -1.0)] * 310)
    assert unscored.threshold("ns", CONFIGURED) == 0.85
    configured_high = dataclasses.replace(SETTINGS, distrusted_min_similarity=0.8)
    low, _ = _calibration(configured_high)  # never under the configured threshold
    _judged(low, [(0.86, False, 0.1)] * 10)
    assert low.threshold("ns", CONFIGURED) == CONFIGURED


def _filling(
    calibration: Calibration, lookups: int, eligible_every: int, eligible_of: int, wrong_every: int = 10,
) -> None:
    """Lookups of which `eligible_every` in each `eligible_of` reach the floor (gray-band
    hits the verifier served); one audited eligible Lookup in `wrong_every` is wrong."""
    judged = 0
    for i in range(lookups):
        before = calibration.counts("ns")
        if calibration.sample("ns", 1.0, 0.80, CONFIGURED, hit=i % eligible_of < eligible_every):
            calibration.add("ns", 0.80, judged % wrong_every == 0, *before, verified=True)
            judged += 1


def test_the_share_that_reaches_the_floor_follows_a_cache_filling_up():
    # A cache fills: first 1 Lookup in 10 comes near a stored question, later 6 in 10.
    # Wrong answers per Lookup are (that share) x (wrong among them, 1 in 10): 6% now, not
    # the 3.9% of the share over the whole sample.
    calibration, persisted = _calibration()
    _filling(calibration, 3000, 1, 10)
    _filling(calibration, 4000, 6, 10)
    whole_sample = 0.1 * (300 + 2400) / 7000
    estimate = calibration.report(lambda namespace: CONFIGURED, None)[0].false_hit_rate
    assert 0.055 <= estimate <= 0.06 and estimate > whole_sample + 0.015
    calibration.flush()
    again, _ = _calibration(recovered=dict(persisted))  # the recent counts persist
    assert again.report(lambda namespace: CONFIGURED, None)[0].false_hit_rate == pytest.approx(estimate, abs=1e-4)
    older = json.loads(persisted["ns"])  # written before recent counts were kept: the sample's span
    del older["recent_lookups"], older["recent_eligible"]
    restored = parse_calibration(json.dumps(older), window=4000)
    assert restored.eligible_share() == pytest.approx(2700 / 7000, abs=1e-3)
    restored.count(False)  # one new Lookup does not decide the share alone
    assert restored.eligible_share() == pytest.approx(2700 / 7000, abs=1e-3)
    for bad in ({"recent_lookups": 5.0, "recent_eligible": 6.0}, {"recent_lookups": "nan", "recent_eligible": 0}):
        with pytest.raises(ValueError):
            parse_calibration(json.dumps({**older, **bad}), window=4000)


def test_the_wrong_share_among_audits_follows_the_recent_ones():
    # The verifier's hits grow wronger as the cache fills: 1 in 100 over the first 1,000
    # audits, then 1 in 20. The whole window says 2.3%; the recent audits weigh more, so
    # the estimate is near what is served now (5%), and its bound is at least as wide as
    # the whole window's, since fewer audits stand behind it.
    calibration, _ = _calibration()
    _filling(calibration, 1000, 1, 1, wrong_every=100)  # every Lookup a verifier hit, audited
    _filling(calibration, 500, 1, 1, wrong_every=20)
    report = calibration.report(lambda namespace: CONFIGURED, None)[0]
    whole_window = 35 / 1500
    assert report.false_hit_rate >= 0.035 and report.false_hit_rate > whole_window + 0.01
    assert report.false_hit_rate_upper > wilson_upper(35, 1500)
    assert report.wrong_audits == 35 and report.audits == 1500  # the counts stay the plain ones
    # A steady rate reads the same either way.
    steady, _ = _calibration()
    _filling(steady, 1500, 1, 1, wrong_every=20)
    assert steady.report(lambda namespace: CONFIGURED, None)[0].false_hit_rate == pytest.approx(0.05, abs=0.003)
