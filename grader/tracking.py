"""Follow fruit along a conveyor from frame to frame, so each is counted and graded once.

A fruit rides its lane in the belt's direction at about the belt's speed. Each open track predicts
where its fruit is now (last centroid + velocity × frames elapsed); detections are matched to
predictions greedily by distance, within gates: across the belt no more than a third of the fruit's
size (a fruit does not change lanes), along it no more than ``gate_frac`` of the fruit's size
from the prediction. The velocity starts at the belt's known speed (when given) and follows what
is observed. A track closes when its fruit has not been seen for ``max_missed`` frames or has
left the frame; unmatched detections open new tracks, except pieces cut off at the exit edge
(fruit come in at the entry side; a piece at the exit is part of a fruit on its way out), pieces
touching a tracked fruit that is still entering in the same lane (a fruit half in view can segment
in two), and new shapes in mid-belt after the first frame (pieces of a fruit already tracked, split
where it touches a neighbour).

Pure: detections in, tracks out; no images, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .records import BBox


@dataclass
class Detection:
    frame: int
    t_s: float
    bbox: BBox
    cut_off: bool  # touches the frame border: seen, but not whole
    payload: Any = None  # whatever the caller needs later (the segment, for measurement)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    @property
    def size(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return float(max(x1 - x0, y1 - y0))


@dataclass
class Track:
    id: int
    lane: int
    detections: list[Detection] = field(default_factory=list)
    velocity_px: float = 0.0  # along the belt, pixels per frame (signed)
    missed: int = 0

    @property
    def last(self) -> Detection:
        return self.detections[-1]

    @property
    def frames(self) -> list[int]:
        return [d.frame for d in self.detections]

    def whole_views(self) -> list[Detection]:
        return [d for d in self.detections if not d.cut_off]


def _touching(a, b, gap_px: int = 3) -> bool:
    """Two boxes that overlap or lie within a few pixels of each other."""
    return a[0] <= b[2] + gap_px and b[0] <= a[2] + gap_px and a[1] <= b[3] + gap_px and b[1] <= a[3] + gap_px


class BeltTracker:
    """Tracks on a belt moving along x (``direction`` +1: left to right, -1: right to left)."""

    def __init__(
        self,
        width_px: int,
        height_px: int,
        lanes: int = 1,
        direction: int = 1,
        speed_px_per_frame: float | None = None,
        max_missed: int = 2,
        gate_frac: float = 0.6,
    ) -> None:
        if direction not in (1, -1):
            raise ValueError("direction is +1 (left to right) or -1 (right to left)")
        self.width, self.height, self.lanes, self.direction = width_px, height_px, max(1, lanes), direction
        self.speed = speed_px_per_frame
        self.max_missed, self.gate_frac = max_missed, gate_frac
        self.open: list[Track] = []
        self._next = 1
        self._first_frame: int | None = None

    def lane_of(self, y: float) -> int:
        return min(self.lanes, max(1, int(y / (self.height / self.lanes)) + 1))

    def _at_exit(self, d: Detection) -> bool:
        """Cut off by the frame edge the belt carries fruit out through."""
        x0, _, x1, _ = d.bbox
        return d.cut_off and (x1 >= self.width - 1 if self.direction > 0 else x0 <= 0)

    def _near_entry(self, d: Detection) -> bool:
        """Within one fruit size of the edge fruit come in through (where a fruit is still entering)."""
        x0, _, x1, _ = d.bbox
        return x0 < d.size if self.direction > 0 else x1 > self.width - d.size

    def _predict(self, t: Track, frame: int) -> tuple[float, float]:
        x, y = t.last.centre
        return x + t.velocity_px * (frame - t.last.frame), y

    def update(self, frame: int, detections: list[Detection]) -> list[Track]:
        """Add one frame's detections; returns the tracks that closed."""
        if self._first_frame is None:
            self._first_frame = frame  # fruit already on the belt when the camera starts may be anywhere
        pairs = []
        for ti, t in enumerate(self.open):
            px, py = self._predict(t, frame)
            for di, d in enumerate(detections):
                x, y = d.centre
                size = max(d.size, t.last.size)
                if abs(y - py) > size / 3.0 or abs(x - px) > self.gate_frac * size:
                    continue
                pairs.append(((x - px) ** 2 + (y - py) ** 2, ti, di))
        used_t, used_d = set(), set()
        for _, ti, di in sorted(pairs):
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            t, d = self.open[ti], detections[di]
            steps = max(1, frame - t.last.frame)
            observed = (d.centre[0] - t.last.centre[0]) / steps
            # a fruit entering or leaving is partly hidden: its box centre moves at a different
            # rate than the fruit, so only whole views teach the velocity
            if not d.cut_off and not t.last.cut_off:
                t.velocity_px = observed if len(t.whole_views()) < 2 and self.speed is None else 0.5 * t.velocity_px + 0.5 * observed
            t.detections.append(d)
            t.missed = 0
        matched_cut = [detections[di] for di in used_d if detections[di].cut_off or self._near_entry(detections[di])]
        for di, d in enumerate(detections):
            if di not in used_d:
                if self._at_exit(d):
                    continue  # fruit enter at the entry side: a piece at the exit is a leaving fruit's
                if (d.cut_off or self._near_entry(d)) and any(
                    _touching(d.bbox, m.bbox) and self.lane_of(m.centre[1]) == self.lane_of(d.centre[1]) for m in matched_cut
                ):
                    # a fruit half in view can be cut in two pieces: this one belongs to a tracked fruit
                    # (in its lane: a neighbour entering beside it in the next lane is a fruit of its own)
                    continue
                if self._first_frame is not None and frame > self._first_frame and not self._near_entry(d):
                    continue  # fruit come into view at the entry side; a new shape mid-belt is a piece of one already tracked
                v = self.direction * self.speed if self.speed is not None else 0.0
                self.open.append(Track(self._next, self.lane_of(d.centre[1]), [d], v))
                self._next += 1
                if d.cut_off:
                    matched_cut.append(d)  # its other piece, if any, joins it
        closed = []
        for ti, t in enumerate(self.open):
            if ti in used_t or t.last.frame == frame:
                continue
            t.missed += 1
            gone = (
                self._predict(t, frame)[0] - t.last.size / 2 > self.width
                if self.direction > 0
                else self._predict(t, frame)[0] + t.last.size / 2 < 0
            )
            if t.missed > self.max_missed or gone:
                closed.append(t)
        self.open = [t for t in self.open if t not in closed]
        return closed

    def finish(self) -> list[Track]:
        """Close every open track (the end of the clip)."""
        closed, self.open = self.open, []
        return closed
