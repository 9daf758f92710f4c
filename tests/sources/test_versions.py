"""SettleTracker: when a version's listing counts as settled."""

from __future__ import annotations

import pytest

from loader.sources.versions import SettleTracker, incompleteness

KEY = ("m", 1)


def test_a_listing_settles_once_unchanged_for_the_settle_period():
    tracker = SettleTracker(5.0)
    assert not tracker.observe(KEY, "a", 100.0)
    assert not tracker.observe(KEY, "a", 104.9)
    assert abs(tracker.remaining(KEY, 104.9) - 0.1) < 1e-9
    assert tracker.observe(KEY, "a", 105.0)


def test_a_change_starts_the_period_again():
    tracker = SettleTracker(5.0)
    tracker.observe(KEY, "a", 100.0)
    assert not tracker.observe(KEY, "b", 104.0)
    assert not tracker.observe(KEY, "b", 108.9)
    assert tracker.observe(KEY, "b", 109.0)


def test_a_new_listing_quiet_for_a_whole_period_by_the_storage_is_settled_at_once():
    tracker = SettleTracker(5.0)
    assert tracker.observe(KEY, "a", 100.0, quiet_for=5.0)
    assert tracker.remaining(KEY, 100.0) == 0.0
    assert tracker.observe(("m", 2), "c", 100.0, quiet_for=3600.0)


def test_settled_at_once_is_exact_whatever_the_clock_reads():
    # 100.0 - (100.0 - 0.3) is 0.29999999999999716: a settled-at-once answer computed
    # from a back-dated start time came out False for about 4 clock readings in 10.
    tracker = SettleTracker(0.3)
    for n, now in enumerate([100.0, 12345.678, 1000.1, 7.7]):
        assert tracker.observe(("m", n), "a", now, quiet_for=0.35)
        assert tracker.remaining(("m", n), now) == 0.0


def test_less_quiet_than_a_period_earns_nothing():
    # The storage's clock only ever ends a wait that is already over; part of a period
    # never shortens one, so a wait measured on `now`'s clock stays exact.
    tracker = SettleTracker(5.0)
    assert not tracker.observe(KEY, "a", 100.0, quiet_for=4.9)
    assert not tracker.observe(KEY, "a", 104.9, quiet_for=9.8)  # the same listing: no effect
    assert tracker.observe(KEY, "a", 105.0)


def test_no_settle_period_settles_every_listing():
    tracker = SettleTracker(0.0)
    assert tracker.observe(KEY, "a", 1.0)
    assert tracker.observe(KEY, "b", 1.0)


# ---- completeness --------------------------------------------------------------------

SAVED_MODEL = [
    "saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001",
]


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        (["model.tflite"], None),
        (["model.tflite", "assets.extra/tf_serving_warmup_requests"], None),
        ([*SAVED_MODEL, "model.tflite"], None),
        (["model.tflite", "saved_model.pb", "variables/variables.index"],
         "variables/variables.data-* is not there yet"),
        (["model.tflite", "variables/variables.index"], "saved_model.pb is not there yet"),
        (["model.tflite.tmp"], "saved_model.pb is not there yet"),
        ([], "saved_model.pb is not there yet"),
    ],
)
def test_a_tflite_version_is_complete_with_its_one_file_unless_it_holds_a_savedmodel_too(
    files: list[str], reason: str | None
) -> None:
    assert incompleteness(files) == reason


def test_a_ready_marker_holds_back_a_tflite_version_too() -> None:
    assert incompleteness(["model.tflite"], "_READY") == "the ready marker '_READY' is not there yet"
    assert incompleteness(["model.tflite", "_READY"], "_READY") is None


# ---- what the graph implies ----------------------------------------------------------

GRAPH = "saved_model.pb"
INDEX = "variables/variables.index"


class Graph:
    """A stand-in for reading the graph: says whether it restores variables, counts asks."""

    def __init__(self, restores: bool | None) -> None:
        self.restores = restores
        self.asked: list[str] = []

    def __call__(self, name: str) -> bool | None:
        self.asked.append(name)
        return self.restores


@pytest.mark.parametrize(
    ("files", "restores", "reason"),
    [
        # A graph that restores variables implies the index, the index implies its shards.
        ([GRAPH], True, "variables/variables.index is not there yet "
                        "(saved_model.pb restores variables)"),
        ([GRAPH, "fingerprint.pb"], True, "variables/variables.index is not there yet "
                                          "(saved_model.pb restores variables)"),
        (["saved_model.pbtxt"], True, "variables/variables.index is not there yet "
                                      "(saved_model.pbtxt restores variables)"),
        ([GRAPH, INDEX], True, "variables/variables.data-* is not there yet"),
        ([GRAPH, INDEX, "variables/variables.data-00000-of-00002"], True,
         "1 of 2 variables data shards are not there yet"),
        ([GRAPH, INDEX, "variables/variables.data-00001-of-00002"], True,
         "1 of 2 variables data shards are not there yet"),
        ([GRAPH, INDEX, "variables/variables.data-00000-of-00002",
          "variables/variables.data-00001-of-00002"], True, None),
        # A graph with no variables needs none; one that cannot be read is left to the load.
        ([GRAPH], False, None),
        ([GRAPH, "assets/vocab.txt"], False, None),
        ([GRAPH], None, None),
    ],
)
def test_a_graph_that_restores_variables_implies_its_index_and_the_index_its_shards(
    files: list[str], restores: bool | None, reason: str | None
) -> None:
    assert incompleteness(files, None, Graph(restores)) == reason


def test_the_graph_is_read_only_while_nothing_else_says_variables_are_coming() -> None:
    graph = Graph(True)
    incompleteness([GRAPH, INDEX, "variables/variables.data-00000-of-00001"], None, graph)
    incompleteness([GRAPH, "variables/variables.data-00000-of-00001"], None, graph)
    incompleteness(["variables/variables.index"], None, graph)
    incompleteness([GRAPH], "_READY", graph)
    assert graph.asked == []
    incompleteness([GRAPH, "saved_model.pbtxt"], None, graph)
    assert graph.asked == [GRAPH]  # the loader's choice when both are there
