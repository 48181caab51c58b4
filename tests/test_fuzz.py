"""Fuzzing the importer: mutated ONNX files end in a result or a BonsaiError.

tests/fuzz_corpus/ keeps inputs from fuzz campaigns (`python -m
bonsai_mcu.fuzz --minutes 10`). Files named traceback-*, hang-* or crash-*
made the importer fail that way before it was fixed; regression-* files are
hand-made minimal versions of such findings; outcome-* files reach the
importer's own checks. Each is replayed here, and hypothesis drives a short
run of the same mutators.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bonsai_mcu.fuzz as fuzz
from bonsai_mcu.fuzz import Campaign, mutate, mutate_bytes, mutate_graph, outcome_signature, run_target, seed_models

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
SEEDS = [model.SerializeToString() for model in seed_models()]

# A replayed input taking longer than this counts as a hang.
REPLAY_SECONDS = 30


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.onnx"))


@pytest.fixture
def time_limit():
    """Fail the test with TimeoutError if it runs longer than REPLAY_SECONDS."""
    def expire(signum, frame):
        raise TimeoutError(f"no result after {REPLAY_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(REPLAY_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_corpus_present():
    kinds = {path.name.split("-")[0] for path in corpus_files()}
    assert {"traceback", "regression", "outcome"} <= kinds


@pytest.mark.parametrize("path", corpus_files(), ids=lambda path: path.name)
def test_corpus_input_handled(path, tmp_path, time_limit):
    outcome = run_target(path.read_bytes(), tmp_path)

    assert outcome in ("imported", "compiled") or outcome.startswith("rejected: ")


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_seed_compiles(index, tmp_path):
    assert run_target(SEEDS[index], tmp_path) == "compiled"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 32 - 1), index=st.integers(0, len(SEEDS) - 1))
def test_mutated_models_handled(tmp_path, seed, index):
    rng = random.Random(seed)
    data = mutate(rng, SEEDS[index])

    outcome = run_target(data, tmp_path)

    assert outcome in ("imported", "compiled") or outcome.startswith("rejected: ")


def test_mutators_change_input():
    rng = random.Random(0)
    model = seed_models()[0]

    assert mutate_bytes(rng, SEEDS[0]) != SEEDS[0]
    assert any(mutate_graph(rng, model).SerializeToString() != SEEDS[0] for _ in range(5))


def test_signature_drops_names_and_numbers():
    first = outcome_signature("rejected: FILE: Conv node 'a': kernel [3, 3] is larger than the padded input [1, 2]")
    second = outcome_signature("rejected: FILE: Conv node 'b': kernel [5, 5] is larger than the padded input [1, 4]")

    assert first == second


def test_campaign_reports_traceback(tmp_path, monkeypatch):
    """A target that raises is recorded as a bug and its input saved, in the child process."""
    def broken(data, workdir):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(fuzz, "run_target", broken)
    campaign = Campaign(tmp_path / "corpus", seed=1)
    campaign.run_one(SEEDS[0])
    campaign.stop()

    assert campaign.bugs and campaign.bugs[0][0] == "traceback"
    assert "ZeroDivisionError: planted" in campaign.bugs[0][1]
    assert len(list((tmp_path / "corpus").glob("traceback-*.onnx"))) == 1


def test_campaign_reports_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(fuzz, "run_target", lambda data, workdir: time.sleep(60))
    campaign = Campaign(tmp_path / "corpus", seed=1, hang_seconds=0.5)
    campaign.run_one(SEEDS[0])

    assert campaign.bugs == [("hang", "no result after 0.5 s")]
    assert campaign.process is None
