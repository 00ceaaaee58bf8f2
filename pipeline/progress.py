"""A driver-side progress bar over the shards of one layer."""

import logging
import sys
import time

log = logging.getLogger("qlift")


class LayerProgress:
    """Shards done out of a layer's total, with states per second.

    Draws a bar on stderr when it is a terminal, and logs one line per layer
    in every case.
    """

    def __init__(self, label, n_shards, n_states, done_shards=0, stream=None):
        self.label, self.total, self.states_total = label, n_shards, n_states
        self.done, self.states = done_shards, 0
        self.t0 = time.perf_counter()
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def update(self, n_states):
        self.done += 1
        self.states += n_states
        now = time.perf_counter()
        if self.tty and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            width = 30
            fill = int(width * self.done / max(self.total, 1))
            rate = self.states / max(now - self.t0, 1e-9)
            self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] "
                              f"{self.done}/{self.total} shards, {rate:,.0f} states/s ")
            self.stream.flush()

    def close(self, extra=""):
        dt = time.perf_counter() - self.t0
        if self.tty:
            self.stream.write("\n")
        log.info("%s: %d/%d shards, %d states in %.2f s (%.3g states/s)%s", self.label,
                 self.done, self.total, self.states, dt, self.states / max(dt, 1e-9), extra)
        return dt
