"""Where MetaSchedule times candidates: this machine (LocalRunner), or the RPC servers of a TVM tracker.

Does not build candidates (see workarounds.PooledBuilder) and does not tune (see tune.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tvm.s_tir import meta_schedule as ms

from lprnet.errors import InputError

logger = logging.getLogger(__name__)

RUN_TIMEOUT_S = 30.0
# An RPC session uploads one candidate, has the server link it into a shared library and times it: RUN_TIMEOUT_S plus
# room for the upload and the link on a slow device. It is also how long the tracker may take to answer.
RPC_SESSION_TIMEOUT_S = 60
# Each candidate runs for at least 3 x 50 ms (the runner raises `number` until a repeat lasts min_repeat_ms) and
# MetaSchedule keeps the median of the 3 repeats, which damps other load on the machine.
EVALUATOR = ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=50, enable_cpu_cache_flush=False)


@dataclass(frozen=True)
class RPCTarget:
    """Time candidates on the RPC servers registered with a TVM tracker under `key`, instead of on this machine."""

    host: str  # the tracker's
    port: int
    key: str  # the device key the servers registered with (`python -m tvm.exec.rpc_server --key KEY`)

    def __post_init__(self):
        if not self.host or isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise InputError(f"RPC tracker {self.host!r}:{self.port!r}: expected a host and a port in 1..65535")
        if not self.key or any(char.isspace() or char == ":" for char in self.key):
            # The tracker's protocol separates fields with spaces and ':'.
            raise InputError(f"RPC tracker {self.address}: device key {self.key!r} must be non-empty, without spaces "
                             f"or ':' (the servers' --key)")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, tracker: str, key: str) -> RPCTarget:
        """From the tracker's "host:port" and the servers' device key."""
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"RPC tracker {tracker!r}: expected host:port, e.g. 192.168.1.10:9190")
        return cls(host, int(port), key)




def make_runner(rpc: RPCTarget | None) -> ms.Runner:
    """MetaSchedule's LocalRunner, or its RPCRunner with one connection per server the tracker has under the key: the
    tracker gives a server to one session at a time, so candidates are timed side by side, never two on one device."""
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=EVALUATOR)
    config = ms.runner.RPCConfig(rpc.host, rpc.port, rpc.key, session_timeout_sec=RPC_SESSION_TIMEOUT_S)
    try:
        servers = config.count_num_servers()
    except ValueError as error:  # TVM's message spans several lines
        raise InputError(f"RPC tracker {rpc.address}: no answer within {RPC_SESSION_TIMEOUT_S} s (start it with "
                         f"`python -m tvm.exec.rpc_tracker`)") from error
    if not servers:
        # Else every candidate would wait in the tracker's queue for a server that never comes: TVM's runner sets no
        # limit on that wait (a session's timeout starts once a server takes it), nor when the servers go mid-run.
        raise InputError(f"RPC tracker {rpc.address}: no server with key {rpc.key!r} (start one on the device with "
                         f"`python -m tvm.exec.rpc_server --tracker {rpc.address} --key {rpc.key}`)")
    return ms.runner.RPCRunner(config, EVALUATOR, max_workers=servers)


