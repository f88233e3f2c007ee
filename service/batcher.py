"""Micro-batching of concurrent inference requests into one ONNX Runtime call.

Requests from many threads put their crops on a bounded queue; one worker thread takes what has
arrived within ``max_wait_ms`` (up to ``max_batch`` crops) and runs it as one batch. When the queue
is full the caller gets :class:`Overloaded` at once, and the service answers 503 with Retry-After,
instead of every camera's latency growing without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Sequence

import numpy as np

from grader.defect import evidence_from_logits, preprocess
from grader.records import DefectEvidence

from .metrics import INFERENCE_BATCH, INFERENCE_SECONDS, QUEUE_DEPTH
from .onnx_model import OnnxDefectModel


class Overloaded(Exception):
    """The inference queue is full: try again shortly."""


class MicroBatcher:
    def __init__(self, model: OnnxDefectModel, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256) -> None:
        self.model = model
        self.spec = model.spec
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000.0
        self._q: queue.Queue[tuple[np.ndarray, Future]] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="inference-batcher", daemon=True)
        self._worker.start()

    def predict(self, crops: Sequence[np.ndarray]) -> list[DefectEvidence]:
        if not crops:
            return []
        batch = preprocess(crops, self.spec)  # in the caller's thread: preprocessing runs in parallel
        fut: Future = Future()
        try:
            self._q.put_nowait((batch, fut))
        except queue.Full:
            raise Overloaded(f"inference queue is full ({self._q.maxsize} waiting)") from None
        QUEUE_DEPTH.set(self._q.qsize())
        return evidence_from_logits(fut.result(), self.spec)

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
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    item = self._q.get(timeout=left)
                except queue.Empty:
                    break
                items.append(item)
                n += len(item[0])
            QUEUE_DEPTH.set(self._q.qsize())
            self._run(items)

    def _run(self, items: list[tuple[np.ndarray, Future]]) -> None:
        try:
            t0 = time.perf_counter()
            logits = self.model.run(np.concatenate([b for b, _ in items]))
            INFERENCE_SECONDS.observe(time.perf_counter() - t0)
            INFERENCE_BATCH.observe(len(logits))
        except Exception as exc:  # hand the error to every waiting request, never lose one silently
            for _, fut in items:
                fut.set_exception(exc)
            return
        i = 0
        for b, fut in items:
            fut.set_result(logits[i : i + len(b)])
            i += len(b)

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=2)
