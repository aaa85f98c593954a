"""The bench: metric arithmetic on hand-made data, both modes end to end, tune --apply, load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semcache_server.bench import accuracy, datasets
from semcache_server.bench.accuracy import PairOutcome
from semcache_server.cli import main

RESULT_KEYS = {"dataset", "mode", "model", "n", "target_false_hit_rate", "sweep", "recommended"}
POINT_KEYS = {"threshold", "hit_rate", "false_hit_rate", "precision", "hits", "lookups", "false_hits", "negatives"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_pairs_metric_arithmetic():
    outcomes = [
        PairOutcome(1, "paraphrase", exact=True, similarity=1.0),
        PairOutcome(1, "paraphrase", exact=False, similarity=0.95),
        PairOutcome(1, "paraphrase", exact=False, similarity=0.80),
        PairOutcome(1, "paraphrase", exact=False, similarity=0.60),
        PairOutcome(0, "negation", exact=False, similarity=0.90),
        PairOutcome(0, "random", exact=False, similarity=0.10),
    ]
    at_85 = accuracy.pairs_point(outcomes, 0.85)
    assert (at_85.hit_rate, at_85.false_hit_rate, at_85.precision, at_85.hits, at_85.lookups) == (0.5, 0.5, 2 / 3, 3, 6)
    at_95 = accuracy.pairs_point(outcomes, 0.95)
    assert (at_95.hit_rate, at_95.false_hit_rate, at_95.precision) == (0.5, 0.0, 1.0)
    at_70 = accuracy.pairs_point(outcomes, 0.70)
    assert (at_70.hit_rate, at_70.false_hit_rate) == (0.75, 0.5)
    sweep = [at_70, at_85, at_95]
    assert accuracy.recommend(sweep, 0.0).threshold == 0.95
    assert accuracy.recommend(sweep, 0.5).threshold == 0.70
    assert accuracy.false_hit_rate_by_kind(outcomes, 0.85) == {"negation": 1.0, "random": 0.0}
    no_negatives = [PairOutcome(1, "", False, 0.2)]
    assert accuracy.recommend([accuracy.pairs_point(no_negatives, 0.9)], 0.01).hit_rate == 0.0


def test_thresholds_spec():
    assert accuracy.parse_thresholds("0.70:0.75:0.01") == [0.7, 0.71, 0.72, 0.73, 0.74, 0.75]
    assert accuracy.parse_thresholds("0.8,0.9") == [0.8, 0.9]
    for bad in ("0.9:0.8:0.01", "a:b:c", "1.5", "0.7:0.9:0"):
        with pytest.raises(SystemExit):
            accuracy.parse_thresholds(bad)


def test_mode_detection(tmp_path):
    assert datasets.detect_mode(tmp_path / "x.pairs.jsonl") == "pairs"
    assert datasets.detect_mode(tmp_path / "x.replay.jsonl") == "replay"
    other = write_jsonl(tmp_path / "stream.jsonl", [{"text": "t", "answer_key": "k"}])
    assert datasets.detect_mode(other) == "replay"


PAIRS = [
    {"a": "How do I reset my password?", "b": "how do i reset my password", "label": 1, "kind": "paraphrase"},
    {"a": "Can I cancel my order?", "b": "How do I cancel my order?", "label": 1, "kind": "paraphrase"},
    {"a": "How do I reset my password?", "b": "What is the weather in Boston?", "label": 0, "kind": "random"},
    {"a": "What is the capital of France?", "b": "What is the capital of Germany?", "label": 0, "kind": "other_parameter"},
]


def test_accuracy_pairs_end_to_end_with_known_answers(tmp_path, embedder, capsys):
    data = write_jsonl(tmp_path / "tiny.pairs.jsonl", PAIRS)
    vectors = embedder.embed([PAIRS[1]["a"], PAIRS[1]["b"], PAIRS[3]["a"], PAIRS[3]["b"]])
    cancel, capital = float(vectors[0] @ vectors[1]), float(vectors[2] @ vectors[3])
    assert capital < cancel  # the data are what this test assumes
    low, high = round(capital - 0.05, 2), round((capital + cancel) / 2, 2)
    out = tmp_path / "r.json"
    assert main(["bench", "accuracy", str(data), "--thresholds", f"{low},{high},0.999", "--json", str(out),
                 "--plot", str(tmp_path / "r.png"), "--target-false-hit-rate", "0"]) == 0
    result = json.loads(out.read_text())
    assert result.keys() >= RESULT_KEYS
    assert all(set(p) == POINT_KEYS for p in result["sweep"])
    # The server's default decision, keys as a sweep row (the default threshold is reported).
    assert set(result["default"]) == POINT_KEYS and result["default"]["threshold"] == 0.92
    assert result["default"]["lookups"] == 4 and 0.0 <= result["default_verifier_share"] <= 1.0
    dataset = "tmp_path0/tiny.pairs".replace("tmp_path0", tmp_path.name)
    assert (result["mode"], result["n"], result["dataset"]) == ("pairs", 4, dataset)
    by_threshold = {p["threshold"]: p for p in result["sweep"]}
    assert (by_threshold[low]["hit_rate"], by_threshold[low]["false_hit_rate"]) == (1.0, 0.5)
    at_high = by_threshold[high]
    assert (at_high["hit_rate"], at_high["false_hit_rate"], at_high["precision"]) == (1.0, 0.0, 1.0)
    assert (by_threshold[0.999]["hit_rate"], by_threshold[0.999]["hits"]) == (0.5, 1)  # only the exact-tier pair
    assert result["recommended"]["threshold"] == high
    assert result["exact_baseline"]["hit_rate"] == 0.5
    assert (tmp_path / "r.png").stat().st_size > 0
    assert "recommended min_similarity" in capsys.readouterr().out


def test_accuracy_replay_end_to_end_with_known_answers(tmp_path):
    stream = [
        {"text": "How do I reset my password?", "answer_key": "password"},
        {"text": "how do i reset my password", "answer_key": "password"},
        {"text": "What is the weather in Boston?", "answer_key": "weather::boston"},
        {"text": "What is the weather in Tampa?", "answer_key": "weather::tampa"},
        {"text": "Can I cancel my order?", "answer_key": "cancel"},
    ]
    data = write_jsonl(tmp_path / "tiny.replay.jsonl", stream)
    out = tmp_path / "r.json"
    assert main(["bench", "accuracy", str(data), "--thresholds=-1,0.9999", "--seed", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result.keys() >= RESULT_KEYS and result["mode"] == "replay" and result["n"] == 5
    assert set(result["default"]) == POINT_KEYS and result["default"]["lookups"] == 5
    order = datasets.load_replay(data, seed=3)
    # At -1 every lookup after the first hits the first stored entry.
    wrong = sum(q.answer_key != order[0].answer_key for q in order[1:])
    loose = result["sweep"][0]
    assert (loose["hits"], loose["lookups"]) == (4, 5)
    assert loose["false_hit_rate"] == pytest.approx(wrong / 5)
    assert loose["precision"] == pytest.approx((4 - wrong) / 4)
    # Near 1 only the normalized duplicate hits, and it is right.
    strict = result["sweep"][1]
    assert (strict["hits"], strict["hit_rate"], strict["false_hit_rate"], strict["precision"]) == (1, 0.2, 0.0, 1.0)
    assert result["exact_baseline"]["hits"] == 1


def test_tune_apply_changes_what_a_later_lookup_returns(tmp_path, make_server, embedder, capsys):
    server, client = make_server(embedder=embedder, min_similarity=0.99)
    address = f"127.0.0.1:{server.port}"
    data = write_jsonl(tmp_path / "t.pairs.jsonl", PAIRS)
    support = {"namespace": "support"}
    client.store(support, "Can I cancel my order?", "Yes, within an hour.")
    assert not client.lookup(support, "How do I cancel my order?").hit  # 0.99 is too strict
    # Four pairs cannot show a false-hit rate under 1% with 95% confidence: tune refuses.
    assert main(["bench", "tune", str(data), "--namespace", "support", "--thresholds", "0.80:0.95:0.05"]) == 1
    assert "margin" in capsys.readouterr().err
    assert main(["bench", "tune", str(data), "--namespace", "support", "--thresholds", "0.80:0.95:0.05", "--no-margin"]) == 0
    assert "[namespaces.\"support\"]" in capsys.readouterr().out
    assert not client.lookup(support, "How do I cancel my order?").hit  # without --apply nothing changed
    assert main(["bench", "tune", str(data), "--namespace", "support", "--apply", "--server", address,
                 "--thresholds", "0.80:0.95:0.05", "--target-false-hit-rate", "0", "--no-margin"]) == 0
    result = client.lookup(support, "How do I cancel my order?")
    assert result.hit and result.threshold < 0.99
    assert not client.lookup({"namespace": "other"}, "How do I cancel my order?").hit
    assert client.stats().entries == 1  # the tune run cleaned up its own namespace
    server.stop()
    _, client = make_server(embedder=embedder, min_similarity=0.99)
    assert client.lookup(support, "How do I cancel my order?").threshold == pytest.approx(result.threshold)
    assert client.set_namespace_threshold("support", None) == pytest.approx(0.99)


def test_load_run_is_bounded_and_reports_percentiles(tmp_path, make_server, embedder):
    server, client = make_server(embedder=embedder)
    texts = [{"text": f"How do I do task number {i}?", "answer_key": str(i)} for i in range(50)]
    data = write_jsonl(tmp_path / "q.replay.jsonl", texts)
    out = tmp_path / "load.json"
    assert main(["bench", "load", "--server", f"127.0.0.1:{server.port}", "--dataset", str(data),
                 "--duration", "0.5", "--concurrency", "1,4", "--warm-entries", "20", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [level["concurrency"] for level in result["levels"]] == [1, 4]
    for level in result["levels"]:
        assert level["requests"] > 0 and level["errors"] == 0
        assert 0 < level["lookup_latency"]["p50_ms"] <= level["lookup_latency"]["p99_ms"]
        assert level["seconds"] < 5
    assert client.stats().entries == 0  # the load namespace was removed


def test_plot_without_matplotlib_says_what_to_install_and_still_writes_the_json(tmp_path, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "t.pairs.jsonl", PAIRS)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # as on an install without the extra
    with pytest.raises(SystemExit) as exited:
        main(["bench", "accuracy", str(data), "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    assert "semcache[bench]" in str(exited.value.code)
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 4
    assert not (tmp_path / "r.png").exists()


def test_accuracy_feedback_rate_adds_the_feedback_figures(tmp_path):
    stream = [
        {"text": "How do I reset my password?", "answer_key": "password"},
        {"text": "how can I reset my password", "answer_key": "password"},
        {"text": "I forgot my password, how do I reset it?", "answer_key": "password"},
        {"text": "What is the weather in Boston?", "answer_key": "weather::boston"},
        {"text": "What is the weather like in Boston?", "answer_key": "weather::boston"},
        {"text": "Can I cancel my order?", "answer_key": "cancel"},
    ]
    data = write_jsonl(tmp_path / "tiny.replay.jsonl", stream)
    out = tmp_path / "r.json"
    plot = tmp_path / "r.png"
    assert main(["bench", "accuracy", str(data), "--thresholds", "0.9", "--feedback-rate", "1", "--json", str(out),
                 "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 0  # with the loop's row: its rates over the stream, the bound against the truth
    feedback = json.loads(out.read_text())["feedback"]
    assert [c["lookups"] for c in feedback["checkpoints"]] == [1, 2, 3, 4, 5, 6]
    assert all(0 <= c["window_false_hit_rate"] <= c["window_hit_rate"] <= 1 for c in feedback["checkpoints"])
    assert feedback["rate"] == 1.0 and feedback["max_false_hit_rate"] == 0.01 and feedback["verifier"]
    assert set(feedback["second_half"]) >= {"hit_rate", "false_hit_rate"} and feedback["second_half"]["lookups"] == 3
    assert feedback["poisoned"]["second_half"]["lookups"] == 3 and len(feedback["static"]) == 15
    with pytest.raises(SystemExit):
        main(["bench", "accuracy", str(data), "--feedback-rate", "0"])


def test_the_feedback_loop_tightens_where_the_default_serves_wrong_answers():
    from semcache_server.bench.feedback_replay import replay_with_feedback
    from tests.helpers import POLICY_DIMENSION, unit_vector, vector_at_similarity

    queries, vectors = [], {}
    for i in range(400):  # each question stored, then asked again at 0.94 by another question
        base, other = f"question {i}", f"another question {i}"
        vectors[base] = np.asarray(unit_vector(i), dtype=np.float32)
        vectors[other] = np.asarray(vector_at_similarity(unit_vector(i), 0.94, seed=10_000 + i), dtype=np.float32)
        queries += [datasets.Query(base, f"a{i}"), datasets.Query(other, f"b{i}")]
    result = replay_with_feedback(None, queries, vectors, rate=0.5, max_false_hit_rate=0.01, dimension=POLICY_DIMENSION)
    assert result["final_threshold"] > 0.94  # the default 0.92 served every second question wrongly
    assert result["second_half"]["false_hit_rate"] < result["whole"]["false_hit_rate"] / 2
    # The probe reads the threshold in force on upcoming queries, storing nothing: where
    # it is over 0.94, none of the second askers is served, so none wrongly.
    probed = [c for c in result["checkpoints"] if c.get("probe")]
    assert probed and result["checkpoints_probed"] == len(probed) and result["probe_coverage"] is not None
    assert all(0 <= c["probe"]["false_hit_rate"] <= c["probe"]["hit_rate"] <= 1 for c in probed)
    assert all(c["probe"]["false_hit_rate"] == 0 for c in probed if c["threshold"] > 0.94)
    assert any(c["probe"]["lookups"] < 2000 for c in probed)  # the stream's end: what remains
