"""`grader sorter-sim`: a stand-in for the sorter's controller, to see the whole loop on one machine.

It subscribes to the outlet decisions (``<prefix>/<line>/<camera>/outlet``), "ejects" each fruit
after a delay (the belt carrying it from the camera to its outlet) and publishes the ejection to
``<prefix>/<line>/ejections``. A share of fruit can be ejected at a wrong outlet, or never, to
see the service's mis-ejection and not-ejected alerts. A decision received twice (at-least-once
delivery) is ejected once, deduplicated on result_id + fruit_index, as a real controller must.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .sorter import connect, make_client, parse_url


def run(
    url: str,
    prefix: str = "orchard-grader",
    line: str = "+",
    delay_s: float = 1.0,
    mis_ejection_rate: float = 0.0,
    miss_rate: float = 0.0,
    seed: int | None = None,
    count: int | None = None,
    stop: threading.Event | None = None,
    out: Callable[[str], None] | None = print,
    ready: threading.Event | None = None,
    client_id: str | None = None,
) -> dict[str, Any]:
    """Run until ``stop`` is set, or ``count`` decisions have been handled. Returns the tallies.
    With ``client_id`` the session is persistent: decisions published while the simulator was
    away are delivered when it is back (QoS 1), as a real controller would want."""
    cfg = parse_url(url)
    prefix = prefix.strip("/")
    rng = random.Random(seed)
    stop = stop or threading.Event()
    lock = threading.Lock()
    due: list[tuple[float, int, dict[str, Any], str]] = []
    seen: set[tuple[str, int]] = set()
    outlets: set[str] = set()
    tally = {"decisions": 0, "duplicates": 0, "ejected": 0, "mis_ejected": 0, "missed": 0}
    client = make_client(cfg, client_id or f"orchard-grader-sorter-sim-{os.getpid()}-{uuid.uuid4().hex[:6]}", persistent=bool(client_id))
    client.reconnect_delay_set(0.2, 2.0)

    def on_connect(c, _ud, _flags, rc, _props=None):
        if not rc.is_failure:
            c.subscribe(f"{prefix}/{line}/+/outlet", qos=1)
            if ready is not None:
                ready.set()

    def on_message(_c, _ud, msg):
        try:
            d = json.loads(msg.payload)
            key = (str(d["result_id"]), int(d["fruit_index"]))
        except (ValueError, KeyError, TypeError):
            return
        with lock:
            if key in seen:
                tally["duplicates"] += 1
                return
            seen.add(key)
            tally["decisions"] += 1
            if d.get("outlet"):
                outlets.add(d["outlet"])
            heapq.heappush(due, (time.monotonic() + delay_s, tally["decisions"], d, msg.topic.split("/")[-3]))

    client.on_connect = on_connect
    client.on_message = on_message
    connect(client, cfg)
    client.loop_start()
    if out:
        out(
            f"sorter-sim: listening on {prefix}/{line}/+/outlet at {cfg.safe()}; ejecting after {delay_s:g} s"
            f"{f', {mis_ejection_rate:.0%} at a wrong outlet' if mis_ejection_rate else ''}{f', {miss_rate:.0%} never' if miss_rate else ''}"
        )
    try:
        while not stop.is_set():
            with lock:
                batch = []
                while due and due[0][0] <= time.monotonic():
                    batch.append(heapq.heappop(due))
                known = sorted(outlets)
            for _, _, d, ln in batch:
                decided = d.get("outlet")
                roll = rng.random()
                if roll < miss_rate:
                    tally["missed"] += 1
                    if out:
                        out(f"  missed  {d['result_id']}#{d['fruit_index']} (decided {decided})")
                    continue
                outlet = decided
                if roll < miss_rate + mis_ejection_rate:
                    others = [o for o in known if o != decided] or ["reject" if decided != "reject" else "outlet-0"]
                    outlet = rng.choice(others)
                    tally["mis_ejected"] += 1
                body = {
                    "result_id": d["result_id"],
                    "fruit_index": d["fruit_index"],
                    "outlet": outlet,
                    "at": dt.datetime.now(dt.timezone.utc).isoformat(),
                }
                client.publish(f"{prefix}/{ln}/ejections", json.dumps(body), qos=1)
                tally["ejected"] += 1
                if out:
                    out(
                        f"  ejected {d['result_id']}#{d['fruit_index']} seq {d.get('seq')} at {outlet}"
                        f"{'' if outlet == decided else f' (decided {decided}: MIS-EJECTED)'}"
                    )
            if count is not None and tally["ejected"] + tally["missed"] >= count:
                break
            stop.wait(0.01)
    finally:
        time.sleep(0.2)  # let the last ejections' PUBACKs in
        client.disconnect()
        client.loop_stop()
    return tally
