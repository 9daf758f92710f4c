"""BatchingServable: merging, splitting, padding, isolation and shutdown, on an honest
recording fake and on real SavedModels."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.base import (
    Code,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    SignatureInfo,
    TensorInfo,
)
from loader.config.schema import BatchingConfig
from loader.servables.batch_queue import QUEUE_FULL, QueueFull
from loader.servables.batching import BatchingServable


def _tensor(name: str, shape: tuple[int, ...] | None = None) -> TensorInfo:
    return TensorInfo(name=f"{name}:0", dtype="DT_FLOAT", shape=shape)


def _signature(outputs: dict[str, tuple[int, ...] | None]) -> SignatureInfo:
    return SignatureInfo(
        "tensorflow/serving/predict",
        inputs={"x": _tensor("x")},
        outputs={k: _tensor(k, shape) for k, shape in outputs.items()},
    )


class Gate:
    """Holds one call of the fake until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def open(self) -> None:
        self.opened.set()


class RecordingServable:
    """`double`: y = 2x, z = x + 1; `echo`: y = x; `total`: the sum of x, a scalar.
    Negative inputs are refused. Records every call and can hold its next one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...], tuple[str, ...] | None]] = []
        self.inputs_seen: list[np.ndarray] = []
        self.unloaded = False
        self._gate: Gate | None = None
        self._lock = threading.Lock()
        self._signatures = {
            "double": _signature({"y": None, "z": None}),
            "echo": _signature({"y": None}),
            "total": _signature({"total": None}),  # undeclared shape: only a run tells
            "declared_scalar": _signature({"total": ()}),
        }

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        return self._signatures

    def signature_def_json(self) -> dict[str, Any]:
        return {"double": {}}

    def hold_next_call(self) -> Gate:
        gate = Gate()
        with self._lock:
            self._gate = gate
        return gate

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        assert not self.unloaded, "a request reached an unloaded servable"
        with self._lock:
            gate, self._gate = self._gate, None
        x = np.asarray(inputs["x"])
        self.calls.append((signature_name, x.shape, tuple(output_keys) if output_keys else None))
        self.inputs_seen.append(x)
        if gate is not None:
            gate.entered.set()
            assert gate.opened.wait(10), "test gate never opened"
        if signature_name not in self._signatures:
            raise InvalidArgument(f'Serving signature name: "{signature_name}" not found')
        if (x < 0).any():
            raise InvalidArgument(f"x must not be negative: {x.min()}")
        outputs = {
            "double": lambda: {"y": 2 * x, "z": x + 1},
            "echo": lambda: {"y": x},
            "total": lambda: {"total": x.sum()},
            "declared_scalar": lambda: {"total": x.sum()},
        }[signature_name]()
        return {k: outputs[k] for k in (output_keys or outputs)}

    def unload(self) -> None:
        self.unloaded = True


class Caller(threading.Thread):
    """Runs one request on its own thread and keeps its answer or error."""

    def __init__(
        self, servable: BatchingServable, signature: str, x: Any, keys: Sequence[str] | None = None
    ) -> None:
        super().__init__(name=f"caller-{signature}")
        self.args = (servable, signature, x, keys)
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        servable, signature, x, keys = self.args
        try:
            self.result = servable.run(signature, {"x": x}, keys)
        except BaseException as exc:
            self.error = exc

    def answer(self) -> dict[str, Any]:
        self.join(10)
        assert not self.is_alive(), "the request never finished"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(n, dtype=np.float32) + start).reshape(n, 1)


@pytest.fixture
def fake() -> RecordingServable:
    return RecordingServable()


@pytest.fixture
def make(fake: RecordingServable):
    made: list[BatchingServable] = []

    def build(**params: Any) -> BatchingServable:
        params.setdefault("num_batch_threads", 1)
        servable = BatchingServable(fake, BatchingConfig(**params), name="m", on_batch=sizes.append)
        made.append(servable)
        return servable

    sizes: list[int] = []
    build.sizes = sizes  # type: ignore[attr-defined]
    yield build
    for servable in made:
        servable.unload()


def held(
    servable: BatchingServable, fake: RecordingServable, signature: str = "double"
) -> tuple[Gate, Caller]:
    """Occupy the only batch thread with a one-row request that waits at the gate."""
    gate = fake.hold_next_call()
    first = Caller(servable, signature, rows(1, 100))
    assert gate.entered.wait(10)
    return gate, first


def queue(
    servable: BatchingServable, requests: list[tuple[str, Any, Sequence[str] | None]]
) -> list[Caller]:
    """Queue requests one after the other (in this order) behind a held thread."""
    callers = []
    for signature, x, keys in requests:
        callers.append(Caller(servable, signature, x, keys))
        wait_until(lambda n=len(callers): servable.queued == n)
    return callers


# ---- merging and splitting --------------------------------------------------------


def test_concurrent_requests_merge_into_one_call_and_each_gets_its_rows(make, fake) -> None:
    servable = make()
    gate, first = held(servable, fake)
    sizes = [1, 3, 2, 1]
    callers = queue(servable, [("double", rows(n, 10 * i), None) for i, n in enumerate(sizes)])
    gate.open()

    assert np.array_equal(first.answer()["y"], 2 * rows(1, 100))
    for i, (caller, n) in enumerate(zip(callers, sizes, strict=True)):
        answer = caller.answer()
        assert np.array_equal(answer["y"], 2 * rows(n, 10 * i))
        assert np.array_equal(answer["z"], rows(n, 10 * i) + 1)
    assert [shape for _, shape, _ in fake.calls] == [(1, 1), (7, 1)]
    assert (servable.batches_run, servable.requests_batched) == (2, 5)
    assert make.sizes == [1, 7]


def test_batches_hold_at_most_max_batch_size_rows(make, fake) -> None:
    servable = make(max_batch_size=4)
    gate, first = held(servable, fake)
    callers = queue(servable, [("echo", rows(n, 10 * i), None) for i, n in enumerate([2, 1, 2, 3])])
    gate.open()
    for i, (caller, n) in enumerate(zip(callers, [2, 1, 2, 3], strict=True)):
        assert np.array_equal(caller.answer()["y"], rows(n, 10 * i))
    first.answer()
    # 2+1 fit; 2 more would make 5, so a new batch starts: 2, then 3 would make 5 again.
    assert [shape[0] for _, shape, _ in fake.calls] == [1, 3, 2, 3]


def test_a_request_larger_than_max_batch_size_is_refused(make, fake) -> None:
    servable = make(max_batch_size=4)
    with pytest.raises(InvalidArgument, match="^Task size 5 is larger than maximum batch size 4$"):
        servable.run("double", {"x": rows(5)})
    assert fake.calls == []


def test_a_full_queue_turns_requests_away_with_tf_servings_message(make, fake) -> None:
    servable = make(max_batch_size=2, max_enqueued_batches=2)
    gate, first = held(servable, fake)
    # The open batch takes two rows; the third closes it and opens the second batch.
    callers = queue(servable, [("double", rows(1, i), None) for i in range(4)])
    with pytest.raises(QueueFull) as raised:
        servable.run("double", {"x": rows(1)})
    assert isinstance(raised.value, ResourceExhausted)
    assert raised.value.message == QUEUE_FULL
    assert QUEUE_FULL == "The batch scheduling queue to which this task was submitted is full"
    assert raised.value.code is Code.RESOURCE_EXHAUSTED  # 429 over REST
    gate.open()
    for i, caller in enumerate(callers):
        assert np.array_equal(caller.answer()["y"], 2 * rows(1, i))
    first.answer()


# ---- submit: queueing without a waiting thread ----------------------------------------


class Hook:
    """A `done` hook that records where and with what it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any] | None, BaseException | None]] = []
        self.called = threading.Event()

    def __call__(self, result: dict[str, Any] | None, error: BaseException | None) -> None:
        self.calls.append((threading.current_thread().name, result, error))
        self.called.set()


def test_submit_returns_at_once_and_the_hook_hears_the_answer_once_on_a_batch_thread(
    make, fake
) -> None:
    servable = make()
    gate, first = held(servable, fake)
    hooks = [Hook() for _ in range(3)]
    for i, hook in enumerate(hooks):  # returns while the only batch thread is held
        assert servable.submit("double", {"x": rows(2, 10 * i)}, ["y"], hook)
    assert servable.queued == 3 and not any(hook.called.is_set() for hook in hooks)
    gate.open()
    first.answer()
    for hook in hooks:
        assert hook.called.wait(10)
    servable.unload()  # joins the batch thread: no late second call can follow
    for i, hook in enumerate(hooks):
        ((thread, result, error),) = hook.calls
        assert thread == "modelwatch-batch-m-1"
        assert error is None and result is not None and list(result) == ["y"]
        assert np.array_equal(result["y"], 2 * rows(2, 10 * i))
    assert [shape for _, shape, _ in fake.calls] == [(1, 1), (6, 1)]


def test_submit_hands_a_bad_request_its_own_error_through_the_hook(make, fake) -> None:
    servable = make()
    gate, first = held(servable, fake)
    good, bad = Hook(), Hook()
    assert servable.submit("double", {"x": rows(1, 3)}, None, good)
    assert servable.submit("double", {"x": -rows(1, 1)}, None, bad)
    gate.open()
    first.answer()
    assert good.called.wait(10) and bad.called.wait(10)
    assert np.array_equal(good.calls[0][1]["y"], 2 * rows(1, 3))
    _, result, error = bad.calls[0]
    assert result is None and isinstance(error, InvalidArgument)
    assert "must not be negative" in error.message


def test_submit_leaves_what_cannot_be_batched_to_the_caller(make, fake) -> None:
    servable = make()
    hook = Hook()
    assert not servable.submit("declared_scalar", {"x": rows(2)}, None, hook)
    assert not servable.submit("double", {"x": np.float32(1)}, None, hook)  # a scalar
    assert not servable.submit("nope", {"x": rows(1)}, None, hook)
    assert servable.queued == 0 and fake.calls == [] and hook.calls == []


def test_submit_refuses_a_full_queue_at_once(make, fake) -> None:
    servable = make(max_batch_size=2, max_enqueued_batches=2)
    gate, first = held(servable, fake)
    hooks = [Hook() for _ in range(4)]
    for i, hook in enumerate(hooks):
        assert servable.submit("double", {"x": rows(1, i)}, None, hook)
    refused = Hook()
    with pytest.raises(QueueFull):
        servable.submit("double", {"x": rows(1)}, None, refused)
    gate.open()
    first.answer()
    for i, hook in enumerate(hooks):
        assert hook.called.wait(10)
        assert np.array_equal(hook.calls[0][1]["y"], 2 * rows(1, i))
    assert refused.calls == []


def test_a_failing_hook_does_not_cost_the_other_requests_their_answers(make, fake) -> None:
    servable = make()
    gate, first = held(servable, fake)

    def broken(result: dict[str, Any] | None, error: BaseException | None) -> None:
        raise RuntimeError("the caller's event loop is closed")

    after = Hook()
    assert servable.submit("double", {"x": rows(1, 1)}, None, broken)
    assert servable.submit("double", {"x": rows(1, 2)}, None, after)
    gate.open()
    first.answer()
    assert after.called.wait(10)
    assert np.array_equal(after.calls[0][1]["y"], 2 * rows(1, 2))


def test_different_signatures_and_output_keys_never_share_a_call(make, fake) -> None:
    servable = make()
    gate, first = held(servable, fake)
    requests: list[tuple[str, Any, Sequence[str] | None]] = [
        ("double", rows(1, 1), None),
        ("echo", rows(1, 2), None),
        ("double", rows(1, 3), ["z"]),
        ("double", rows(1, 4), None),
        ("echo", rows(2, 5), None),
        ("double", rows(1, 6), ["z"]),
    ]
    callers = queue(servable, requests)
    gate.open()
    answers = [c.answer() for c in callers]
    first.answer()

    assert set(answers[0]) == {"y", "z"} and np.array_equal(answers[0]["y"], 2 * rows(1, 1))
    assert np.array_equal(answers[1]["y"], rows(1, 2))
    assert list(answers[2]) == ["z"] and np.array_equal(answers[2]["z"], rows(1, 3) + 1)
    assert np.array_equal(answers[4]["y"], rows(2, 5))
    batched = sorted((sig, shape[0], keys or ()) for sig, shape, keys in fake.calls[1:])
    assert batched == [("double", 2, ()), ("double", 2, ("z",)), ("echo", 3, ())]


def test_a_request_whose_deadline_passed_in_the_queue_never_reaches_the_model(fake) -> None:
    expired: list[int] = []
    servable = BatchingServable(
        fake, BatchingConfig(num_batch_threads=1), name="m", on_expired=expired.append
    )
    try:
        gate, first = held(servable, fake)
        answers: dict[str, tuple[Any, BaseException | None]] = {}

        def done(name: str) -> Callable[[Any, BaseException | None], None]:
            return lambda result, error: answers.__setitem__(name, (result, error))

        soon = time.monotonic() + 0.05
        late = time.monotonic() + 3600
        assert servable.submit("double", {"x": rows(1, 1)}, None, done("expires"), soon)
        assert servable.submit("double", {"x": rows(2, 2)}, None, done("in time"), late)
        assert servable.submit("double", {"x": rows(1, 4)}, None, done("no deadline"))
        wait_until(lambda: time.monotonic() > soon)  # it passes while the thread is held
        gate.open()
        first.answer()
        wait_until(lambda: len(answers) == 3)
        result, error = answers["expires"]
        assert isinstance(error, DeadlineExceeded) and result is None
        assert error.code is Code.DEADLINE_EXCEEDED
        assert error.message == "Run() timeout exceeded while waiting in batching queue"
        assert answers["in time"][0]["y"].tolist() == [[4.0], [6.0]]
        assert answers["no deadline"][0]["y"].tolist() == [[8.0]]
        # The held call, then one call of the two others' three rows: none of the expired.
        assert [shape for _, shape, _ in fake.calls] == [(1, 1), (3, 1)]
        assert expired == [1]
    finally:
        servable.unload()


# ---- padding ----------------------------------------------------------------------


def test_allowed_batch_sizes_pad_with_the_first_row_of_the_last_request(make, fake) -> None:
    servable = make(max_batch_size=8, allowed_batch_sizes=[2, 4, 8])
    gate, first = held(servable, fake, "echo")
    callers = queue(servable, [("echo", rows(n, 10 * i), None) for i, n in enumerate([1, 2])])
    gate.open()
    assert np.array_equal(first.answer()["y"], rows(1, 100))
    assert np.array_equal(callers[0].answer()["y"], rows(1, 0))
    assert np.array_equal(callers[1].answer()["y"], rows(2, 10))

    assert [shape[0] for _, shape, _ in fake.calls] == [2, 4]
    assert np.array_equal(fake.inputs_seen[0], [[100], [100]])
    assert np.array_equal(fake.inputs_seen[1], [[0], [10], [11], [10]])
    assert make.sizes == [2, 4]


def test_variable_length_inputs_are_padded_with_their_own_first_element(make, fake) -> None:
    servable = make(pad_variable_length_inputs=True)
    gate, first = held(servable, fake, "echo")
    a = np.array([[5, 6]], dtype=np.int32)
    b = np.array([[7, 8, 9], [1, 2, 3]], dtype=np.int32)
    c = np.array([[4]], dtype=np.int32)
    callers = queue(servable, [("echo", x, None) for x in (a, b, c)])
    gate.open()
    first.answer()

    assert np.array_equal(fake.inputs_seen[1], [[5, 6, 5], [7, 8, 9], [1, 2, 3], [4, 4, 4]])
    # As in TF Serving, outputs are cut by rows only: they keep the batch's padded length.
    assert np.array_equal(callers[0].answer()["y"], [[5, 6, 5]])
    assert np.array_equal(callers[1].answer()["y"], b)
    assert np.array_equal(callers[2].answer()["y"], [[4, 4, 4]])


def test_without_padding_differently_shaped_requests_run_in_separate_merged_calls(
    make, fake
) -> None:
    servable = make()
    gate, first = held(servable, fake, "echo")
    xs = [np.ones((1, 2), np.float32), np.ones((2, 3), np.float32), np.full((2, 2), 3, np.float32)]
    callers = queue(servable, [("echo", x, None) for x in xs])
    gate.open()
    first.answer()
    for caller, x in zip(callers, xs, strict=True):
        assert np.array_equal(caller.answer()["y"], x)
    assert sorted(shape for _, shape, _ in fake.calls[1:]) == [(2, 3), (3, 2)]


# ---- isolation --------------------------------------------------------------------


def test_a_bad_request_fails_alone_with_the_servables_own_error(make, fake) -> None:
    servable = make()
    gate, first = held(servable, fake)
    callers = queue(servable, [("double", x, None) for x in (rows(2, 1), rows(1, -5), rows(1, 7))])
    gate.open()
    first.answer()
    assert np.array_equal(callers[0].answer()["y"], 2 * rows(2, 1))
    assert np.array_equal(callers[2].answer()["y"], 2 * rows(1, 7))
    with pytest.raises(InvalidArgument, match="^x must not be negative: -5.0$"):
        callers[1].answer()
    # One merged call failed; each request then ran alone.
    assert [shape[0] for _, shape, _ in fake.calls[1:]] == [4, 2, 1, 1]


@pytest.mark.parametrize(
    "signature, inputs",
    [
        ("double", {"x": np.float32(3)}),  # a scalar has no rows to batch
        ("double", {"x": rows(2), "w": rows(3)}),  # unequal first dims; unknown input name
        ("double", {"x": np.zeros((0, 1), np.float32)}),  # no rows
        ("nope", {"x": rows(1)}),  # a signature the servable does not have
        ("declared_scalar", {"x": rows(2)}),  # declares an output with no batch dimension
    ],
)
def test_requests_that_cannot_be_batched_run_alone_at_once(
    make, fake, signature: str, inputs: dict[str, Any]
) -> None:
    servable = make()
    gate, first = held(servable, fake)  # the batch thread is busy: only a direct run answers
    try:
        expected = fake.run(signature, inputs)
    except InvalidArgument as exc:
        with pytest.raises(InvalidArgument, match=str(exc)):
            servable.run(signature, inputs)
    else:
        assert servable.run(signature, inputs).keys() == expected.keys()
    gate.open()
    first.answer()


def test_an_output_without_a_batch_dimension_falls_back_to_one_by_one(make, fake) -> None:
    servable = make()
    gate, first = held(servable, fake)
    callers = queue(servable, [("total", rows(n, 1), None) for n in (1, 2, 3)])
    gate.open()
    first.answer()
    assert [float(c.answer()["total"]) for c in callers] == [1.0, 3.0, 6.0]
    assert [shape[0] for _, shape, _ in fake.calls[1:]] == [6, 1, 2, 3]

    # Remembered: the next request runs directly, even with the batch thread busy.
    gate, first = held(servable, fake)
    assert float(servable.run("total", {"x": rows(4)})["total"]) == 6.0
    gate.open()
    first.answer()
    assert servable.batches_run == 3  # the two held calls and the failed merge


# ---- shutdown ---------------------------------------------------------------------


def test_unload_runs_what_is_queued_joins_its_threads_then_unloads_the_inner(make, fake) -> None:
    servable = make(num_batch_threads=2)
    gate = fake.hold_next_call()
    first = Caller(servable, "double", rows(1, 100))
    assert gate.entered.wait(10)
    threads = [t for t in threading.enumerate() if t.name.startswith("modelwatch-batch-m-")]
    assert sorted(t.name for t in threads) == ["modelwatch-batch-m-1", "modelwatch-batch-m-2"]

    unloading = threading.Thread(target=servable.unload, name="unloader")
    unloading.start()
    wait_until(lambda: servable._scheduler.stopped)
    with pytest.raises(FailedPrecondition, match="batching for m has stopped"):
        servable.run("double", {"x": rows(1)})
    assert not fake.unloaded  # the held call is still running
    gate.open()
    unloading.join(10)
    assert not unloading.is_alive()
    assert np.array_equal(first.answer()["y"], 2 * rows(1, 100))
    assert fake.unloaded
    assert not any(t.is_alive() for t in threads)
    servable.unload()  # idempotent


def test_unload_of_an_unused_servable_starts_no_threads(fake) -> None:
    servable = BatchingServable(fake, BatchingConfig(num_batch_threads=4), name="idle")
    servable.unload()
    servable.unload()
    assert fake.unloaded
    assert servable.signatures is fake.signatures
    assert servable.signature_def_json() == {"double": {}}


# ---- real SavedModels ---------------------------------------------------------------


class HeldServable:
    """Passes calls to a real servable, recording batch sizes; can hold its next call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sizes: list[int] = []
        self.gate: Gate | None = None

    @property
    def signatures(self) -> Mapping[str, SignatureInfo]:
        return self.inner.signatures

    def signature_def_json(self) -> dict[str, Any]:
        return self.inner.signature_def_json()

    def run(
        self, signature_name: str, inputs: Mapping[str, Any], output_keys=None
    ) -> dict[str, Any]:
        gate, self.gate = self.gate, None
        self.sizes.append(len(next(iter(inputs.values()))))
        if gate is not None:
            gate.entered.set()
            assert gate.opened.wait(10)
        return self.inner.run(signature_name, inputs, output_keys)

    def unload(self) -> None:
        self.inner.unload()


def test_tf_servings_half_plus_two_answers_merged_requests_as_it_answers_each(
    tfserving_testdata,
) -> None:
    from loader.servables.savedmodel import load_saved_model

    model = load_saved_model(tfserving_testdata / "saved_model_half_plus_two_cpu" / "00000123")
    held_model = HeldServable(model)
    servable = BatchingServable(held_model, BatchingConfig(num_batch_threads=1), name="hpt")
    try:
        held_model.gate = gate = Gate()
        first = Caller(servable, "serving_default", np.array([2.0, 3.0, 4.0], np.float32))
        assert gate.entered.wait(10)
        xs = [np.array([[1.0]], np.float32), np.array([[5.0], [7.0]], np.float32)]
        callers = queue(servable, [("serving_default", x, None) for x in xs])
        gate.open()
        assert np.array_equal(first.answer()["y"], [3.0, 3.5, 4.0])  # 1-D, as TF Serving takes it
        assert np.array_equal(callers[0].answer()["y"], [[2.5]])
        assert np.array_equal(callers[1].answer()["y"], [[4.5], [5.5]])
        assert held_model.sizes == [3, 3]
    finally:
        servable.unload()


def test_batched_results_equal_unbatched_ones_on_a_real_model(model_builder) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from loader.servables.savedmodel import load_saved_model

    model = load_saved_model(model_builder.built(1.5))
    servable = BatchingServable(
        model, BatchingConfig(num_batch_threads=2, max_batch_size=16, allowed_batch_sizes=[4, 16])
    )
    requests = st.lists(
        st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=5), min_size=1, max_size=8
    )
    try:
        with ThreadPoolExecutor(8) as pool:

            @settings(max_examples=30, deadline=None)
            @given(requests)
            def check(values: list[list[float]]) -> None:
                xs = [np.array(v, np.float32).reshape(-1, 1) for v in values]
                futures = [pool.submit(servable.run, "serving_default", {"x": x}) for x in xs]
                for x, future in zip(xs, futures, strict=True):
                    expected = model.run("serving_default", {"x": x})
                    assert np.array_equal(future.result(10)["y"], expected["y"])

            check()
    finally:
        servable.unload()
    assert servable.requests_batched >= servable.batches_run > 0


def test_only_the_signatures_own_names_are_kept_and_in_one_order(make, fake) -> None:
    """Clients choose output keys and input names: a kind of request is remembered (with a
    queue of its own) only in the signature's names, and the order of the keys makes no
    other kind."""
    servable = make()
    x = rows(1, 2)
    for i in range(100):  # 100 KiB names the signature does not have: never kept
        assert not servable.submit("double", {"x": x}, [f"{i}" + "q" * 100_000], lambda r, e: None)
        assert not servable.submit("double", {"x": x, f"{i}" + "w" * 100_000: x}, None,
                                   lambda r, e: None)
    assert servable._fit_cache == {}
    for keys in (["y", "z"], ["z", "y"], ["y"]):
        assert set(servable.run("double", {"x": x}, keys)) == set(keys)
    assert sorted(servable._fit_cache) == [("double", ("y",), ("x",)), ("double", ("y", "z"), ("x",))]
