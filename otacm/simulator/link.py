"""The simulated vehicle's connectivity: the one place where the simulation breaks the network.

A real telematics unit loses its network in tunnels and car parks; the simulator turns a
vehicle's link off for a while (`online = False`) or cuts one transfer in the middle. The client
calls `require()` before every request and `transferred()` as bytes arrive, and gets the very
errors httpx raises for a real outage, so the code that survives them is the code a real vehicle
runs. A client outside the simulator passes no link.
"""

from __future__ import annotations

import random
import threading

import httpx


class NetworkLink:
    """Whether the vehicle can reach the server now. Read from the client's threads too.

    `lost_answers` is the share of vehicle API answers that never arrive although the server
    sent them (a connection dropped on the way back, a timeout a moment too early): the
    request did its work, the client does not know and sends it again.
    """

    def __init__(self, lost_answers: float = 0.0, rng: random.Random | None = None) -> None:
        if not 0 <= lost_answers <= 1:
            raise ValueError("lost_answers is a probability between 0 and 1")
        self.online = True
        self._lock = threading.Lock()
        self._cut_after: int | None = None  # bytes into the next transfer
        self.cuts = 0  # transfers cut so far
        self.lost_answers = lost_answers
        self._rng = rng or random.Random()

    def loses_answer(self) -> bool:
        """Whether the answer that just came is lost (the caller raises as httpx would)."""
        return self.lost_answers > 0 and self._rng.random() < self.lost_answers

    def require(self) -> None:
        """Raises httpx.ConnectError while the vehicle is offline."""
        if not self.online:
            raise httpx.ConnectError("no network (simulated outage)")

    def cut_next_transfer(self, after_bytes: int) -> None:
        """The next transfer breaks before more than `after_bytes` bytes of it arrive."""
        with self._lock:
            self._cut_after = after_bytes

    def transferred(self, received: int) -> None:
        """`received` bytes of the current transfer are arriving (the last piece included).

        Raises httpx.ReadError when the link went down or the transfer is cut within them:
        the caller then never sees the last piece, as after a real break.
        """
        self.require()
        with self._lock:
            if self._cut_after is None or received <= self._cut_after:
                return
            self._cut_after = None
            self.cuts += 1
        raise httpx.ReadError("connection lost mid-transfer (simulated)")
