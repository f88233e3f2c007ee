"""Micro-batching of concurrent inference requests into one ONNX Runtime call.

Requests from many threads put their crops on a bounded queue; one worker thread takes everything
already queued (up to ``max_batch`` crops) and runs it as one batch. It waits up to ``max_wait_ms``
for more only while other requests are announced (:meth:`MicroBatcher.expecting`: measuring their
fruit, about to submit): a lone request is never held back for company that is not coming. When the queue
is full the caller gets :class:`Overloaded` at once, and the service answers 503 with Retry-After,
instead of every camera's latency growing without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from grader.defect import ModelOutputs, evidence_from_outputs, preprocess
from grader.records import DefectEvidence

from .metrics import INFERENCE_BATCH, INFERENCE_SECONDS, QUEUE_DEPTH
from .onnx_model import OnnxDefectModel


class Overloaded(Exception):
    """The inference queue is full: try again shortly."""


class MicroBatcher:
    """One worker thread running queued batches; each queued item names the ONNX model it was
    preprocessed for, so a model swap never mixes two models' inputs in one call."""

    def __init__(self, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256) -> None:
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000.0
        self._q: queue.Queue[tuple[np.ndarray, Future, OnnxDefectModel]] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._expected = 0  # requests announced but not yet submitted
        self._local = threading.local()
        self._worker = threading.Thread(target=self._loop, name="inference-batcher", daemon=True)
        self._worker.start()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a request that will submit soon (it is decoding or measuring): while any is
        announced the worker may wait up to max_wait_ms to run it in the same batch."""
        if getattr(self._local, "announced", False):  # already announced by an enclosing block
            yield
            return
        with self._lock:
            self._expected += 1
        self._local.announced = True
        try:
            yield
        finally:
            self._arrived()  # a request that found no fruit never submits

    def _arrived(self) -> None:
        if getattr(self._local, "announced", False):
            self._local.announced = False
            with self._lock:
                self._expected -= 1

    def submit(self, model: OnnxDefectModel, batch: np.ndarray) -> ModelOutputs:
        """The model's outputs for a preprocessed batch, run together with whatever else is waiting."""
        fut: Future = Future()
        self._arrived()
        try:
            self._q.put_nowait((batch, fut, model))
        except queue.Full:
            raise Overloaded(f"inference queue is full ({self._q.maxsize} waiting)") from None
        QUEUE_DEPTH.set(self._q.qsize())
        return fut.result()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            items = [first]
            n = len(first[0])
            deadline = time.perf_counter() + self.max_wait_s
            while n < self.max_batch:
                try:  # everything already waiting joins at once
                    item = self._q.get_nowait()
                except queue.Empty:
                    left = deadline - time.perf_counter()
                    if left <= 0 or self._expected <= 0:
                        break  # nobody else is on the way: run now
                    try:
                        item = self._q.get(timeout=min(left, 0.001))
                    except queue.Empty:
                        continue
                items.append(item)
                n += len(item[0])
            QUEUE_DEPTH.set(self._q.qsize())
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
        self._stop.set()
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
