"""Micro-batching of concurrent inference requests into one ONNX Runtime call.

Requests from many threads put their crops on a bounded queue; one worker thread takes everything
already queued (up to ``max_batch`` rows of the network: crops times the views a model's graph
averages, so a four-view model runs at most a quarter as many crops per call) and runs it as one
batch. It waits up to ``max_wait_ms``
for more only while other requests are announced (:meth:`MicroBatcher.expecting`: measuring their
fruit, about to submit): a lone request is never held back for company that is not coming. When the queue
is full the caller gets :class:`Overloaded` at once, and the service answers 503 with Retry-After,
instead of every camera's latency growing without bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from grader.defect import ModelOutputs, evidence_from_outputs, preprocess
from grader.records import DefectEvidence

from .metrics import INFERENCE_BATCH, INFERENCE_SECONDS, QUEUE_DEPTH
from .onnx_model import OnnxDefectModel


def _rows(item: tuple[np.ndarray, Future, OnnxDefectModel]) -> int:
    """Rows of the network a queued batch makes: its crops times the views its model's graph averages."""
    return len(item[0]) * item[2].spec.test_time_views


class Overloaded(Exception):
    """The inference queue is full: try again shortly."""


class MicroBatcher:
    """One worker thread running queued batches; each queued item names the ONNX model it was
    preprocessed for, so a model swap never mixes two models' inputs in one call.

    The queue and the count of announced requests share one condition variable: the worker sleeps
    until a crop is queued or the last announced request arrives, never polling (a poll every
    millisecond while it waits for company would take the interpreter lock from the threads that
    are measuring fruit, hundreds of times a second on a busy line)."""

    def __init__(self, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256) -> None:
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self._items: deque[tuple[np.ndarray, Future, OnnxDefectModel]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._expected = 0  # requests announced but not yet submitted
        self._local = threading.local()
        self._worker: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """Run the worker thread (again, after close()); a no-op while it runs."""
        with self._cond:
            if self._worker is not None and self._worker.is_alive() and not self._stop:
                return
        if self._worker is not None:
            self._worker.join(timeout=2)  # a worker told to stop finishes first
        with self._cond:
            self._stop = False
        self._worker = threading.Thread(target=self._loop, name="inference-batcher", daemon=True)
        self._worker.start()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a request that will submit soon (it is decoding or measuring): while any is
        announced the worker may wait up to max_wait_ms to run it in the same batch."""
        if getattr(self._local, "announced", False):  # already announced by an enclosing block
            yield
            return
        with self._cond:
            self._expected += 1
        self._local.announced = True
        try:
            yield
        finally:
            with self._cond:
                self._arrived()  # a request that found no fruit never submits

    def _arrived(self) -> None:
        """End this thread's announcement (call with the condition held)."""
        if getattr(self._local, "announced", False):
            self._local.announced = False
            self._expected -= 1
            if self._expected <= 0:
                self._cond.notify()  # a worker waiting for company stops waiting

    def queued(self) -> int:
        """Requests waiting for inference."""
        return len(self._items)

    def submit(self, model: OnnxDefectModel, batch: np.ndarray) -> ModelOutputs:
        """The model's outputs for a preprocessed batch, run together with whatever else is waiting."""
        fut: Future = Future()
        with self._cond:
            self._arrived()
            if len(self._items) >= self.max_queue:
                raise Overloaded(f"inference queue is full ({self.max_queue} waiting)")
            self._items.append((batch, fut, model))
            depth = len(self._items)
            self._cond.notify()
        QUEUE_DEPTH.set(depth)
        return fut.result()

    def _next_batch(self) -> list[tuple[np.ndarray, Future, OnnxDefectModel]] | None:
        """Everything already queued, up to max_batch rows; waits up to max_wait_ms for more only
        while other requests are announced. None once closed."""
        with self._cond:
            while not self._items:
                if self._stop:
                    return None
                self._cond.wait()
            first = self._items.popleft()
            items, n = [first], _rows(first)
            deadline = time.perf_counter() + self.max_wait_s
            while n < self.max_batch:
                if self._items:  # everything already waiting joins at once
                    item = self._items.popleft()
                    items.append(item)
                    n += _rows(item)
                    continue
                left = deadline - time.perf_counter()
                if left <= 0 or self._expected <= 0 or self._stop:
                    break  # nobody else is on the way: run now
                self._cond.wait(left)
            depth = len(self._items)
        QUEUE_DEPTH.set(depth)
        return items

    def _loop(self) -> None:
        while (items := self._next_batch()) is not None:
            by_model: dict[int, list] = {}
            for it in items:
                by_model.setdefault(id(it[2]), []).append(it)
            for group in by_model.values():
                self._run(group)

    def _run(self, items: list[tuple[np.ndarray, Future, OnnxDefectModel]]) -> None:
        try:
            t0 = time.perf_counter()
            outputs = items[0][2].run(np.concatenate([b for b, _, _ in items]))
            INFERENCE_SECONDS.observe(time.perf_counter() - t0)
            INFERENCE_BATCH.observe(len(outputs))
        except Exception as exc:  # hand the error to every waiting request, never lose one silently
            for _, fut, _ in items:
                fut.set_exception(exc)
            return
        i = 0
        for b, fut, _ in items:
            fut.set_result(outputs.rows(i, i + len(b)))
            i += len(b)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=2)


class ServingModel:
    """The DefectModel the grader calls: one loaded artifact, inference through the shared batcher.
    A request takes one ServingModel at its start and uses it throughout, so a promotion in the
    middle never mixes two models in one result."""

    def __init__(self, onnx: OnnxDefectModel, batcher: MicroBatcher, model_id: str | None = None) -> None:
        self.onnx, self.batcher, self.spec = onnx, batcher, onnx.spec
        self.model_id = model_id or f"{onnx.spec.name}@{onnx.spec.version}"
        self.commodity = str(onnx.meta.get("commodity", "apple"))

    def predict(self, crops: Sequence[np.ndarray]) -> list[DefectEvidence]:
        if not crops:
            return []
        batch = preprocess(crops, self.spec)  # in the caller's thread: preprocessing runs in parallel
        return evidence_from_outputs(self.batcher.submit(self.onnx, batch), self.spec)
