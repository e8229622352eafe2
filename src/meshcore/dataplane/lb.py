"""Endpoint choice as Envoy's load balancers make it, and outlier detection.

Round robin and least request (power of two choices, Envoy's default ``choice_count`` of 2)
over the endpoints' weights; random; ring hash (``minimum_ring_size`` points, each host
weighted) and Maglev (a ``table_size`` lookup table, Google's population algorithm) on the
route's hash policy. Outlier detection: ``consecutive_5xx`` (or gateway errors) in a row eject
an endpoint for ``base_ejection_time`` times the number of times it was ejected (capped at
``max_ejection_time``), never more than ``max_ejection_percent`` of the cluster at once.

The state here (counters, active requests, ejections) is per cluster and endpoint address and
survives config updates; the compiled config itself stays immutable.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meshcore._core import decide as _core_decide
from meshcore._core import lb as _core_lb
from meshcore.dataplane.config import ClusterConfig, Endpoint, OutlierDetection


def hash64(data: bytes) -> int:
    """A stable 64-bit hash (the same in every process: hash stickiness survives restarts):
    BLAKE2b with an 8-byte digest, read little-endian (the core's)."""
    return _core_lb.hash64(data)


@dataclass
class _HostState:
    active: int = 0
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejected_until: float = 0.0
    ejections: int = 0


@dataclass
class _ClusterState:
    rr: int = 0
    hosts: dict[str, _HostState] = field(default_factory=dict)
    # Hash tables by the endpoint set they were built for.
    ring: tuple[tuple[Endpoint, ...], list[int], list[Endpoint]] | None = None
    maglev: tuple[tuple[Endpoint, ...], list[Endpoint]] | None = None
    uniform: tuple[Sequence[Endpoint], bool] | None = None
    ejected_until: float = 0.0  # the latest end of any ejection in this cluster


def _ring(endpoints: Sequence[Endpoint], size: int) -> tuple[list[int], list[Endpoint]]:
    """Ketama-style ring (built in the core): each host gets points in proportion to its
    weight (at least one); the points' hashes ascending and the host of each."""
    hashes, owners = _core_lb.ring_table([(str(e), e.weight) for e in endpoints], size)
    return hashes, [endpoints[i] for i in owners]


def _maglev(endpoints: Sequence[Endpoint], size: int) -> list[Endpoint]:
    """Maglev's table population (Eisenbud et al. 2016, built in the core), weighted as Envoy
    does it: a host takes a turn only while its weighted share is not yet used."""
    return [
        endpoints[i] for i in _core_lb.maglev_table([(str(e), e.weight) for e in endpoints], size)
    ]


class LoadBalancer:
    """Picks endpoints for every cluster of a data plane; thread-safe."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._clusters: dict[str, _ClusterState] = {}
        self._random = random.Random(seed)
        self.clock = time.monotonic

    def _state(self, cluster: str) -> _ClusterState:
        st = self._clusters.get(cluster)
        if st is None:
            st = self._clusters[cluster] = _ClusterState()
        return st

    def _healthy(
        self, cluster: ClusterConfig, st: _ClusterState, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        now = self.clock()
        if now >= st.ejected_until:  # nobody is ejected right now: the common case
            return endpoints
        healthy = [
            e for e in endpoints if (h := st.hosts.get(str(e))) is None or h.ejected_until <= now
        ]
        # Envoy's panic mode: below the healthy panic threshold, balance over every host.
        if not healthy or 100.0 * len(healthy) / len(endpoints) < cluster.panic_threshold:
            return endpoints
        return healthy

    def pick(
        self,
        cluster: ClusterConfig,
        endpoints: Sequence[Endpoint],
        hash_key: int | None = None,
    ) -> Endpoint | None:
        """An endpoint of ``cluster``; ``hash_key`` (from the route's hash policy) for ring
        hash and Maglev (without one they pick at random, as Envoy does).

        No lock on this path: the GIL keeps each step whole, and a rare lost round-robin
        increment between threads only repeats a host (Envoy's workers balance separately too);
        hash tables are built aside and then published by one assignment."""
        if not endpoints:
            return None
        st = self._clusters.get(cluster.name)
        if st is None:
            with self._lock:
                st = self._state(cluster.name)
        hosts = endpoints if cluster.outlier is None else self._healthy(cluster, st, endpoints)
        if len(hosts) == 1:
            return hosts[0]
        policy = cluster.lb_policy
        if policy == "ROUND_ROBIN":
            return self._round_robin(st, hosts)
        if policy == "LEAST_REQUEST":
            return self._least_request(st, hosts)
        if policy == "RANDOM" or hash_key is None:
            return self._weighted_random(st, hosts)
        if policy == "RING_HASH":
            ring = st.ring
            if ring is None or (ring[0] is not hosts and ring[0] != tuple(hosts)):
                hashes, owners = _ring(hosts, cluster.ring_size)
                ring = st.ring = (tuple(hosts), hashes, owners)
            _, hashes, owners = ring
            i = bisect.bisect_left(hashes, hash_key)
            return owners[i % len(owners)]
        maglev = st.maglev
        if maglev is None or (maglev[0] is not hosts and maglev[0] != tuple(hosts)):
            maglev = st.maglev = (tuple(hosts), _maglev(hosts, cluster.maglev_table_size))
        table = maglev[1]
        return table[hash_key % len(table)]

    def _uniform(self, st: _ClusterState, hosts: Sequence[Endpoint]) -> bool:
        """Whether every host has the same weight (remembered per endpoint set)."""
        known = st.uniform
        if known is not None and known[0] is hosts:
            return known[1]
        same = all(e.weight == hosts[0].weight for e in hosts)
        st.uniform = (hosts, same)
        return same

    def _round_robin(self, st: _ClusterState, hosts: Sequence[Endpoint]) -> Endpoint:
        st.rr += 1
        if self._uniform(st, hosts):
            return hosts[st.rr % len(hosts)]
        # Weighted: a smooth interleaving by position in the cumulative weights.
        total = sum(e.weight for e in hosts)
        target = st.rr % total
        acc = 0
        for e in hosts:
            acc += e.weight
            if target < acc:
                return e
        return hosts[-1]

    def _least_request(self, st: _ClusterState, hosts: Sequence[Endpoint]) -> Endpoint:
        # Envoy: with equal weights, the better of two random choices by active requests.
        a, b = self._random.sample(range(len(hosts)), 2)
        ea, eb = hosts[a], hosts[b]
        ha, hb = st.hosts.get(str(ea)), st.hosts.get(str(eb))
        aa = ha.active if ha else 0
        ab = hb.active if hb else 0
        if ea.weight != eb.weight:  # weighted: weight / (active + 1), Envoy's active_request_bias 1
            return ea if ea.weight / (aa + 1) >= eb.weight / (ab + 1) else eb
        return ea if aa <= ab else eb

    def _weighted_random(self, st: _ClusterState, hosts: Sequence[Endpoint]) -> Endpoint:
        if self._uniform(st, hosts):
            return hosts[self._random.randrange(len(hosts))]
        return self._random.choices(hosts, weights=[e.weight for e in hosts])[0]

    # --- request accounting and outlier detection ---------------------------------------------

    def started(self, cluster: str, endpoint: Endpoint) -> None:
        with self._lock:
            st = self._state(cluster)
            st.hosts.setdefault(str(endpoint), _HostState()).active += 1

    def finished(
        self,
        cluster: ClusterConfig | None,
        endpoint: Endpoint,
        status: int | None,
        endpoints: Sequence[Endpoint] = (),
        *,
        started: bool = True,
    ) -> bool:
        """Records a request's result (``status`` None: the connection failed, which counts as
        a gateway error as in Envoy); True when it ejected the endpoint."""
        if cluster is None:
            return False
        with self._lock:
            st = self._state(cluster.name)
            h = st.hosts.setdefault(str(endpoint), _HostState())
            if started:
                h.active = max(0, h.active - 1)
            od = cluster.outlier
            if od is None:
                return False
            failed_5xx = status is None or status >= 500
            gateway = status is None or status in (502, 503, 504)
            if not failed_5xx:
                h.consecutive_5xx = h.consecutive_gateway = 0
                return False
            h.consecutive_5xx += 1
            h.consecutive_gateway += int(gateway)
            trip = (
                od.consecutive_5xx > 0
                and h.consecutive_5xx >= od.consecutive_5xx
                and self._random.uniform(0, 100) < od.enforcing_consecutive_5xx
            ) or (
                od.enforcing_consecutive_gateway_failure > 0
                and od.consecutive_gateway_failure > 0
                and h.consecutive_gateway >= od.consecutive_gateway_failure
                and self._random.uniform(0, 100) < od.enforcing_consecutive_gateway_failure
            )
            if not trip:
                return False
            return self._eject(st, h, od, endpoints)

    def _eject(
        self,
        st: _ClusterState,
        h: _HostState,
        od: OutlierDetection,
        endpoints: Sequence[Endpoint],
    ) -> bool:
        now = self.clock()
        if h.ejected_until > now:
            return False
        total = max(len(endpoints), 1)
        ejected = sum(1 for e in endpoints if (x := st.hosts.get(str(e))) and x.ejected_until > now)
        # Envoy ejects at least one host even when max_ejection_percent rounds to zero hosts.
        if ejected > 0 and 100.0 * (ejected + 1) / total > od.max_ejection_percent:
            return False
        h.ejections += 1
        h.ejected_until = now + min(od.base_ejection_time * h.ejections, max(
            od.max_ejection_time, od.base_ejection_time))  # fmt: skip
        st.ejected_until = max(st.ejected_until, h.ejected_until)
        h.consecutive_5xx = h.consecutive_gateway = 0
        return True

    def ejected(self, cluster: str) -> list[str]:
        """The endpoints of ``cluster`` ejected right now."""
        now = self.clock()
        with self._lock:
            st = self._clusters.get(cluster)
            if st is None:
                return []
            return sorted(a for a, h in st.hosts.items() if h.ejected_until > now)


def _outlier(od: OutlierDetection | None) -> tuple[int, int, int, int, float, float, float] | None:
    if od is None:
        return None
    return (od.consecutive_5xx, od.enforcing_consecutive_5xx, od.consecutive_gateway_failure,
            od.enforcing_consecutive_gateway_failure, od.base_ejection_time,
            od.max_ejection_time, float(od.max_ejection_percent))  # fmt: skip


def cluster_head(
    cluster: ClusterConfig,
) -> tuple[str, str, tuple[int, int, int, int, float, float, float] | None, float, int, int]:
    """A cluster as the core's balancer reads it."""
    return (cluster.name, cluster.lb_policy, _outlier(cluster.outlier),
            float(cluster.panic_threshold), cluster.ring_size,
            cluster.maglev_table_size)  # fmt: skip


class CoreLoadBalancer:
    """:class:`LoadBalancer`'s choices with the state held in the core
    (``meshcore._core.decide.Balancer``): the data plane's default, so that ``decide()`` picks
    endpoints in the same call into the core as it routes. Seeded alike, it chooses exactly as
    :class:`LoadBalancer` (the reference, kept for the tests that prove it)."""

    def __init__(self, seed: int | None = None) -> None:
        self.core = _core_decide.Balancer(seed)
        self._clock: Callable[[], float] | None = None

    @property
    def clock(self) -> Callable[[], float]:
        """The clock ejections are timed with (settable, as :class:`LoadBalancer`'s)."""
        return self._clock if self._clock is not None else self.core.now

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.core.set_clock(clock)

    def pick(
        self,
        cluster: ClusterConfig,
        endpoints: Sequence[Endpoint],
        hash_key: int | None = None,
    ) -> Endpoint | None:
        i = self.core.pick(cluster_head(cluster), [(str(e), e.weight) for e in endpoints],
                           hash_key)  # fmt: skip
        return None if i is None else endpoints[i]

    def started(self, cluster: str, endpoint: Endpoint) -> None:
        self.core.started(cluster, str(endpoint))

    def finished(
        self,
        cluster: ClusterConfig | None,
        endpoint: Endpoint,
        status: int | None,
        endpoints: Sequence[Endpoint] = (),
        *,
        started: bool = True,
    ) -> bool:
        if cluster is None:
            return False
        return self.core.finished(cluster.name, _outlier(cluster.outlier), str(endpoint), status,
                                  [str(e) for e in endpoints], started)  # fmt: skip

    def ejected(self, cluster: str) -> list[str]:
        return self.core.ejected(cluster)
