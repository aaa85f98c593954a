"""The verifier: trained here in seconds on a tiny labeled set, served on onnxruntime,
and the decision paths it adds, over gRPC (client vectors at known cosines, so the path
taken depends on the policy, not on the model's quality)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest

from semcache_server.calibration import AUDIT_DECAY
from semcache_server.errors import ConfigError
from semcache_server.settings import Settings
from semcache_server.verifier import data
from semcache_server.verifier.model import OnnxVerifier, load_verifier
from semcache_server.verifier.training import MODEL_FILE, TrainingSettings, kept_layers, train
from tests.helpers import REPO, status_of, unit_vector, vector_at_similarity

DATA = REPO.parent / "shared" / "datasets"
TINY = TrainingSettings(epochs=1, batch_size=16, max_length=32, seed=3, threads=2)


def _tiny_pairs() -> list[data.TrainingPair]:
    pairs = data.load_pair_files([DATA / "banking77" / "dev.pairs.jsonl"], limit_per_file=40, seed=1)
    return pairs + data.synthetic_negatives(pairs, 8, seed=1)


@pytest.fixture(scope="session")
def tiny_verifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("verifier")
    record = train(_tiny_pairs(), out, TINY, progress=False)
    return out, record


def test_training_writes_a_servable_int8_model_whose_scores_agree_with_torch(tiny_verifier):
    out, record = tiny_verifier
    assert record["int8"] and record["training"]["pairs"] == 56 and record["training"]["steps"] == 4
    assert record["training"]["kinds"]["synthetic_negation"] == 8
    check = record["export_check"]
    assert check["fp32"]["max_abs_diff"] < 1e-3  # the exported graph is the model
    assert check["int8"]["max_abs_diff"] < 0.05  # int8 weights move scores little
    assert json.loads((out / "verifier.json").read_text()) == record
    assert (out / MODEL_FILE).stat().st_size < 30 << 20
    scores = OnnxVerifier(out).score("how do I return an item", ["how can I return something", "weather in Tampa"])
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))


def _quantized_matmuls(model_dir) -> int:
    import onnx

    return sum(node.op_type == "MatMulInteger" for node in onnx.load(str(model_dir / MODEL_FILE)).graph.node)


def test_a_verifier_with_fewer_layers_trains_exports_and_serves(tmp_path, tiny_verifier):
    """--layers 2 keeps 2 of the base model's 6 transformer layers (the 3rd and the 6th):
    each layer it drops takes its 6 weight matrices out of the served graph."""
    record = train(_tiny_pairs(), tmp_path, dataclasses.replace(TINY, layers=2), progress=False)
    assert record["training"]["layers"] == 2
    assert record["export_check"]["fp32"]["max_abs_diff"] < 1e-3 and record["export_check"]["int8"]["max_abs_diff"] < 0.05
    assert _quantized_matmuls(tiny_verifier[0]) - _quantized_matmuls(tmp_path) == 4 * 6
    scores = OnnxVerifier(tmp_path).score("how do I return an item", ["how can I return something", "weather in Tampa"])
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))
    with pytest.raises(ValueError, match=r"layers must be 1\.\.6"):
        train(_tiny_pairs(), tmp_path / "too-many", dataclasses.replace(TINY, layers=7), progress=False)


def test_the_kept_layers_are_spread_evenly_and_end_at_the_last():
    assert kept_layers(6, 3) == [1, 3, 5] and kept_layers(6, 2) == [2, 5] and kept_layers(6, 6) == list(range(6))


def test_too_many_layers_is_a_one_line_error_from_the_cli(tmp_path):
    pairs = DATA / "banking77" / "dev.pairs.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "semcache_server", "train", "verifier", str(pairs), "--limit-per-file", "20",
         "--synthetic", "0", "--out", str(tmp_path / "v"), "--layers", "9", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "semcache train verifier: layers must be 1..6 (the base model's), not 9"


def test_a_student_learns_the_teacher_s_scores_and_records_its_teacher(tmp_path, tiny_verifier):
    """--teacher: the teacher verifier's P(same) replaces each pair's 0/1 label (the pairs'
    digest, which hashes the labels, changes with it), and the record names the teacher."""
    teacher_dir, plain = tiny_verifier
    pairs = DATA / "banking77" / "dev.pairs.jsonl"
    command = [sys.executable, "-m", "semcache_server", "train", "verifier", str(pairs), "--limit-per-file", "40",
               "--synthetic", "8", "--seed", "1", "--batch-size", "16", "--max-length", "32", "--epochs", "1",
               "--threads", "2", "--no-progress", "--layers", "2"]
    done = subprocess.run([*command, "--teacher", str(teacher_dir), "--out", str(tmp_path / "student")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "student" / "verifier.json").read_text())
    assert record["training"]["teacher"] == str(teacher_dir) and record["training"]["layers"] == 2
    assert record["training"]["pairs"] == plain["training"]["pairs"] == 56  # the same pairs as the teacher's own training
    assert record["training"]["pairs_sha256"] != plain["training"]["pairs_sha256"]  # labelled by the teacher
    bad = subprocess.run([*command, "--teacher", str(tmp_path), "--out", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("semcache train verifier: --teacher: verifier ")


def test_a_pair_scores_the_same_alone_and_among_other_candidates():
    """The shipped int8 model: in one padded run, a pair's score moved with its batch-mates
    (the activations' quantization scale spans the run), so a Lookup's verdict depended on
    its other candidates. Each pair now runs alone."""
    verifier = load_verifier("")
    assert verifier is not None
    query = "how long does it take for my new card to arrive"
    candidates = ["when will my card be delivered", "my card has not arrived yet and I have been waiting for two weeks now",
                  "card", "can I track the card you sent me, and if so where do I find the tracking number"]
    together = verifier.score(query, candidates)
    alone = np.array([verifier.score(query, [c])[0] for c in candidates])
    assert np.array_equal(together, alone)
    assert np.array_equal(verifier.score(query, candidates[::-1]), together[::-1])


def test_training_is_reproducible(tmp_path):
    pairs = _tiny_pairs()[:16]
    first = train(pairs, tmp_path / "a", TINY, progress=False, quantize=False)
    second = train(pairs, tmp_path / "b", TINY, progress=False, quantize=False)
    assert first["training"]["final_loss"] == second["training"]["final_loss"]
    probe = ["how can I get my money back", "is my card on its way"]
    a = OnnxVerifier(tmp_path / "a").score("I want a refund", probe)
    b = OnnxVerifier(tmp_path / "b").score("I want a refund", probe)
    assert np.allclose(a, b, atol=1e-6)


def test_made_negatives():
    assert data.negated("is the store open on sunday") == "is not the store open on sunday"
    assert data.negated("the card is not working") == "the card is working"
    assert data.negated("hello there") is None
    import random

    text = "flights from Boston to Tampa"
    swapped = data.swapped(text, random.Random(0))
    assert swapped is not None and swapped != text and sorted(swapped.split()) == sorted(text.split())


P = {"namespace": "shop", "model": "m"}
STORED = "how do I return an item"


@pytest.fixture
def verified_server(make_server, tiny_verifier):
    out, _ = tiny_verifier
    server, client = make_server(embedder=None, verifier=str(out), min_similarity=0.9, verifier_band_low=0.8)
    base = unit_vector(7)
    client.store(P, STORED, "Use the returns page.", embedding=base)
    client.store(P, "is port 22 open", "Yes.", embedding=unit_vector(8))
    return server, client, base


def _lookup(client, query: str, vector, **overrides):  # type: ignore[no-untyped-def]
    return client.lookup(P, query, embedding=vector, **overrides)


def test_each_decision_path_over_grpc(verified_server):
    _, client, base = verified_server
    exact = _lookup(client, "How do I return an item?", base)
    assert exact.hit and exact.decided_by == "exact" and not exact.HasField("verifier_score")

    above = vector_at_similarity(base, 0.95, 1)
    high = _lookup(client, "returning an item", above, verifier_veto_score=0.0)
    assert high.hit and high.decided_by == "threshold" and not high.HasField("verifier_score")

    # The veto (the server's default, verifier_veto_score): above the threshold the verifier is asked too.
    confirmed = _lookup(client, "returning an item", above, verifier_veto_score=1e-6)
    assert confirmed.hit and confirmed.decided_by == "threshold_verified" and confirmed.response == b"Use the returns page."
    assert 0.0 < confirmed.verifier_score < 1.0
    vetoed = _lookup(client, "returning an item", above, verifier_veto_score=1.0)
    assert not vetoed.hit and vetoed.decided_by == "verifier_rejected"
    assert vetoed.verifier_score == pytest.approx(confirmed.verifier_score, abs=1e-6)
    by_default = _lookup(client, "returning an item", above)
    veto = Settings().verifier_veto_score
    assert by_default.decided_by == ("threshold_verified" if confirmed.verifier_score >= veto else "verifier_rejected")

    in_band = vector_at_similarity(base, 0.85, 2)
    verified = _lookup(client, "can I send an item back", in_band, verifier_min_score=0.0)
    assert verified.hit and verified.decided_by == "verifier" and verified.response == b"Use the returns page."
    assert 0.0 < verified.verifier_score < 1.0

    rejected = _lookup(client, "can I send an item back", in_band, verifier_min_score=1.0)
    assert not rejected.hit and rejected.decided_by == "verifier_rejected"
    assert rejected.verifier_score == pytest.approx(verified.verifier_score, abs=1e-6)

    outside = _lookup(client, "can I send an item back", in_band, verifier_band_low=0.88, verifier_min_score=0.0)
    assert not outside.hit and outside.decided_by == "below_threshold"

    below = _lookup(client, "what is the weather in Tampa", vector_at_similarity(base, 0.5, 3))
    assert not below.hit and below.decided_by == "below_threshold" and not below.HasField("verifier_score")


def test_a_reordering_above_the_threshold_is_the_verifiers_to_decide_over_grpc(verified_server):
    _, client, _ = verified_server
    route = unit_vector(9)
    client.store(P, "flights from boston to tampa on monday", "Three a day.", embedding=route)
    swapped = vector_at_similarity(route, 0.97, 5)  # above the threshold (0.9): cosine alone would serve it
    rejected = _lookup(client, "flights from tampa to boston on monday", swapped, verifier_min_score=1.0)
    assert not rejected.hit and rejected.decided_by == "verifier_rejected" and rejected.HasField("verifier_score")
    confirmed = _lookup(client, "flights from tampa to boston on monday", swapped, verifier_min_score=0.0)
    assert confirmed.hit and confirmed.decided_by == "verifier"
    other_words = _lookup(
        client, "any direct connection Boston-Tampa, Mondays?", swapped, verifier_min_score=1.0, verifier_veto_score=0.0
    )
    assert other_words.hit and other_words.decided_by == "threshold"


def test_the_guard_refuses_in_the_band_before_the_verifier_is_asked(verified_server):
    _, client, _ = verified_server
    closed = _lookup(client, "is port 22 closed", vector_at_similarity(unit_vector(8), 0.85, 4), verifier_min_score=0.0)
    assert not closed.hit and closed.guard_reason == "opposites: closed/open"
    assert not closed.HasField("verifier_score")


@pytest.mark.parametrize("field,value", [
    ("verifier_min_score", 1.5), ("verifier_min_score", -0.1), ("verifier_band_low", 2.0), ("verifier_veto_score", 1.5),
    ("verifier_veto_score", float("nan")),
])
def test_a_bad_band_on_a_request_is_invalid_argument(verified_server, field, value):
    _, client, base = verified_server
    assert status_of(lambda: _lookup(client, "q", base, **{field: value})) == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_verifier_paths_are_clear_start_up_errors(tmp_path, tiny_verifier):
    with pytest.raises(ConfigError, match="not a verifier directory"):
        load_verifier(str(tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.mkdir()
    out, _ = tiny_verifier
    for name in ("tokenizer.json", "verifier.json"):
        (broken / name).write_bytes((out / name).read_bytes())
    (broken / MODEL_FILE).write_bytes(b"not an onnx graph")
    with pytest.raises(ConfigError, match="cannot load the verifier"):
        load_verifier(str(broken))
    assert load_verifier("none") is None
    result = subprocess.run(
        [sys.executable, "-m", "semcache_server", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
         "--embedding-model", "none", "--embedding-dimension", "4", "--verifier", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "not a verifier directory" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_settings_check_the_band():
    with pytest.raises(ConfigError, match="verifier_min_score"):
        Settings().with_overrides(verifier_min_score=1.5)
    with pytest.raises(ConfigError, match="verifier_band_low"):
        Settings().with_overrides(verifier_band_low=-2.0)
    with pytest.raises(ConfigError, match="verifier_veto_score"):
        Settings().with_overrides(verifier_veto_score=-0.5)


def test_calibrate_records_one_combined_decision_that_the_server_judges_by(tmp_path, tiny_verifier, embedder):
    import shutil

    from semcache_server.cli import main
    from semcache_server.verifier.combine import Combination

    out, _ = tiny_verifier
    calibrated = tmp_path / "calibrated"
    shutil.copytree(out, calibrated)
    pairs = DATA / "banking77" / "dev.pairs.jsonl"
    assert main(["train", "calibrate", "--verifier", str(calibrated), str(pairs), "--limit-per-file", "200",
                 "--min-similarity", "0.3"]) == 0
    record = json.loads((calibrated / "verifier.json").read_text())["combination"]
    assert record["pairs"] > 50 and 0 < record["positives"] < record["pairs"]
    assert set(record["auc"]) == {"cosine", "verifier", "combined"}
    combination = Combination.from_json(record["weights"])
    verifier = OnnxVerifier(calibrated)
    stored = ["how can I return something", "weather in Tampa"]
    sims = [0.8, 0.6]
    raw = verifier.score("how do I return an item", stored)
    judged = verifier.judge("how do I return an item", stored, sims)
    assert np.allclose(judged, combination.probability(sims, raw), atol=1e-6)
    assert not np.allclose(judged, raw)
    assert np.allclose(OnnxVerifier(out).judge("how do I return an item", stored, sims), raw)  # uncalibrated: the score
    assert main(["train", "calibrate", "--verifier", str(tmp_path / "missing"), str(pairs)]) != 0


def test_bench_tune_with_a_verifier_fits_the_band_too(tmp_path, tiny_verifier, capsys):
    from semcache_server.cli import main

    out, _ = tiny_verifier
    result_path = tmp_path / "tune.json"
    assert main(["bench", "tune", str(DATA / "banking77" / "dev.pairs.jsonl"), "--limit", "60", "--namespace", "bank",
                 "--verifier", str(out), "--thresholds", "0.8,0.9", "--target-false-hit-rate", "0.5", "--no-margin",
                 "--json", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    bands = [p for p in result["decision_sweep"] if p["verifier_band_low"] is not None]
    assert bands and all(0.0 <= p["false_hit_rate"] <= p["false_hit_rate_upper"] <= 1.0 for p in result["decision_sweep"])
    chosen = result["recommended_decision"]
    assert chosen is not None and chosen["false_hit_rate"] <= 0.5
    printed = capsys.readouterr().out
    assert '[namespaces."bank"]' in printed and f"min_similarity = {chosen['threshold']}" in printed
    if chosen["verifier_band_low"] is not None:
        assert f"verifier_min_score = {chosen['verifier_min_score']}" in printed


def test_hits_the_verifier_serves_under_the_floor_are_audited_and_counted(make_server, tiny_verifier):
    # The band reaches under the audit floor (0.92 less 0.04): its hits are served answers
    # like any other, so they are drawn for audits, and their wrong ones count in the
    # estimate at every threshold (no threshold takes the band's answers away).
    out, _ = tiny_verifier
    _, client = make_server(
        embedder=None, verifier=str(out), min_similarity=0.92, verifier_band_low=0.8, verifier_min_score=0.0,
        max_false_hit_rate=0.05, adaptive_min_audits=30, adaptive_max_loosening=0.04,
    )
    for seed in range(40):
        base = unit_vector(7000 + seed)
        client.store(P, f"question {seed}", f"answer {seed}", embedding=base)
        found = _lookup(client, f"another question {seed}", vector_at_similarity(base, 0.82, seed), audit_rate=1.0)
        assert found.hit and found.decided_by == "verifier" and found.audit
        client.feedback(P, found.lookup_id, correct=seed % 4 != 0)  # one in four served wrongly
    report = next(c for c in client.stats().calibrations if c.namespace == "shop")
    assert report.audits == 40 and report.wrong_audits == 10
    # Every Lookup was a hit: 10 of 40 wrong, the newer audits weighing a little more.
    weights = [AUDIT_DECAY ** (39 - seed) for seed in range(40)]
    wrong_share = sum(w for seed, w in enumerate(weights) if seed % 4 == 0) / sum(weights)
    assert 0.24 < wrong_share < 0.25 and report.false_hit_rate == pytest.approx(wrong_share, abs=1e-6)
    assert report.threshold >= 0.92  # nothing certified under 5%: it does not loosen


def test_each_audit_keeps_the_verifier_s_judgement_of_its_pair(make_server, tiny_verifier):
    """What the verdicts are checked against (poisoning, semcache_server/calibration.py):
    the verifier's own judgement of the audited pair: for a hit it served, the very score
    the decision gave it (int8 scores vary a little with the batch), else taken when the
    verdict comes."""
    out, _ = tiny_verifier
    server, client = make_server(
        embedder=None, verifier=str(out), min_similarity=0.92, verifier_band_low=0.8, verifier_min_score=0.0,
    )
    base = unit_vector(7100)
    client.store(P, "how do I reset my password", "answer", embedding=base)
    found = _lookup(client, "my password needs resetting", vector_at_similarity(base, 0.82, 1), audit_rate=1.0)
    assert found.audit
    client.feedback(P, found.lookup_id, correct=True)
    audit = server.cache.thresholds.calibration._evidence["shop"].audits[-1]
    expected = OnnxVerifier(out).judge("my password needs resetting", ["how do I reset my password"], [found.similarity])
    assert 0.0 <= audit.verifier_score <= 1.0 and audit.verifier_score == pytest.approx(float(expected[0]), abs=1e-5)
    assert found.hit and audit.verifier_score == pytest.approx(found.verifier_score, abs=1e-6)
    assert not client.stats().calibrations[0].verdicts_distrusted
