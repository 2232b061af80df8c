"""Fair dispatch: per-tenant backlogs released into each pool's ready queue.

See docs/adr/0001-queue-topology.md. Work is published to its tenant queue
(``compute.high.acme``, a real kombu queue on the Redis broker); workers consume only their
pool's ready queue (``compute``). A Lua script moves messages from tenant backlogs to the
ready queue, keeping it only as deep as the pool's free worker slots (slots announced by
live workers, minus the tasks they hold: counted when a worker receives a task and when it
finishes one, and reset by each worker's heartbeat). Nothing waits in the ready queue while
the workers are busy, so the tenant and the band of the next task are chosen when a slot
frees, and a worker's BRPOP covers one queue whatever the number of tenants.

The choice is hierarchical. Tenants first: one ring per pool of the tenants with a backlog,
served by deficit round-robin, each tenant releasing up to its weight (from its plan, or an
admin's override: the ``celeriac:weights`` hash, kept by ``celeriac.platform.quotas.weights``)
per turn. Bands second, within the tenant's turn: its highest non-empty band, except that a
band passed over ``AGE_LIMIT`` times while it had work goes first (so ``low`` is never
starved by its own tenant's ``high``). A tenant's ``high`` therefore reorders only its own
work. Every step is O(1) in the number of tenants.

Only tenants with a backlog are in a ring, and the script keeps no state for the others,
so idle tenants cost nothing. A tenant that becomes active joins at the head of the ring,
so its first task goes to the next free slot instead of waiting a whole round behind every
busy tenant (a tenant whose queue keeps emptying gains at most one turn each time it comes
back). Suspended tenants are skipped. Releases happen when work is published, when a worker
takes a task, and every second from beat; the reconciler also re-adds any tenant queue
whose ring entry was lost (a crash between publish and notify, a broker restart) and
rewrites the weights from the database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import redis

from celeriac.platform.queues import Pool, TenantQueue, parse_queue
from celeriac.platform.settings import get_settings

RING = "celeriac:fair-ring:{pool}"
MEMBERS = "celeriac:fair-members:{pool}"
CREDIT = "celeriac:fair-credit:{pool}"
AGED = "celeriac:fair-aged:{pool}"
WEIGHTS = "celeriac:weights"
CAPACITY = "celeriac:capacity:{pool}"
SLOTS = "celeriac:slots:{pool}"
BUSY = "celeriac:busy:{pool}"
SUSPENDED = "celeriac:suspended"
CAPACITY_TTL_SECONDS = 15.0
MAX_MOVES_PER_CALL = 500
# How far the reconciler reads into one tenant queue looking for a job's message.
QUEUED_SCAN_LIMIT = 20_000
_BANDS = ("high", "normal", "low")
# Celery's protocol-2 header ``kwargsrepr`` holds the task's kwargs, job_id among them.
_JOB_ID = re.compile(rb"'job_id': '([0-9a-f-]{36})'")
# A tenant's weight when the weights hash has none for it (the free plan's).
DEFAULT_WEIGHT = 1
# Aging: a band passed over this many times in a row while it had work (its tenant's
# higher bands went first) goes first at its tenant's next release. So under a permanent
# ``high`` flood of its own tenant, ``low`` still gets one release in AGE_LIMIT + 2 of
# that tenant's (``normal`` ages the same way).
AGE_LIMIT = 8

# ARGV: pool, now, min_depth, max_moves, host, busy delta, age limit, then (band, tenant)
# pairs whose tenants join the ring (the band only says which queue got work; the ring is
# per tenant).
_RELEASE = """
local pool = ARGV[1]
local now = tonumber(ARGV[2])
local min_depth = tonumber(ARGV[3])
local max_moves = tonumber(ARGV[4])
local age_limit = tonumber(ARGV[7])
local busy = 'celeriac:busy:' .. pool
if ARGV[5] ~= '' and tonumber(ARGV[6]) ~= 0 then
  if redis.call('HINCRBY', busy, ARGV[5], ARGV[6]) < 0 then redis.call('HSET', busy, ARGV[5], 0) end
end
local ring = 'celeriac:fair-ring:' .. pool
local members = 'celeriac:fair-members:' .. pool
local credit = 'celeriac:fair-credit:' .. pool
local aged = 'celeriac:fair-aged:' .. pool
-- New tenants join at the head of the ring; walking the pairs backwards keeps the order
-- they were given in.
for i = #ARGV - 1, 8, -2 do
  if redis.call('SADD', members, ARGV[i + 1]) == 1 then
    redis.call('LPUSH', ring, ARGV[i + 1])
  end
end
local capacity = 'celeriac:capacity:' .. pool
redis.call('ZREMRANGEBYSCORE', capacity, '-inf', now)
local hosts = redis.call('ZRANGE', capacity, 0, -1)
local depth = min_depth
if #hosts > 0 then
  depth = 0
  for _, host in ipairs(hosts) do
    local slots = tonumber(redis.call('HGET', 'celeriac:slots:' .. pool, host) or '0')
    local taken = tonumber(redis.call('HGET', busy, host) or '0')
    depth = depth + math.max(0, slots - taken)
  end
end
local ready_len = redis.call('LLEN', pool)
if ready_len >= depth then return 0 end
-- Deficit round-robin over tenants: the ring's head has the turn and releases up to its
-- weight in tasks (counted in the credit hash) before it moves to the tail. Within its
-- turn its highest non-empty band goes first, unless a lower band has aged.
local moved = 0
local left = redis.call('LLEN', ring)
while ready_len < depth and moved < max_moves and left > 0 do
  local tenant = redis.call('LINDEX', ring, 0)
  local message = false
  local band = nil
  local age_normal, age_low = 0, 0
  if redis.call('SISMEMBER', 'celeriac:suspended', tenant) == 0 then
    local age = redis.call('HMGET', aged, tenant .. '.normal', tenant .. '.low')
    age_normal, age_low = tonumber(age[1] or '0'), tonumber(age[2] or '0')
    local order = {'high', 'normal', 'low'}
    if age_low >= age_limit then
      order = {'low', 'high', 'normal'}
    elseif age_normal >= age_limit then
      order = {'normal', 'high', 'low'}
    end
    for i, b in ipairs(order) do
      message = redis.call('RPOP', pool .. '.' .. b .. '.' .. tenant)
      if message then band = b break end
      -- An aged band found empty (its work was deleted) stops going first.
      if i == 1 and b ~= 'high' then redis.call('HDEL', aged, tenant .. '.' .. b) end
    end
  end
  if message then
    redis.call('LPUSH', pool, message)
    ready_len = ready_len + 1
    moved = moved + 1
    if (band == 'normal' and age_normal > 0) or (band == 'low' and age_low > 0) then
      redis.call('HDEL', aged, tenant .. '.' .. band)
    end
    -- The bands this release passed over, if they have work, age by one.
    local passed = (band == 'high' and {'normal', 'low'}) or (band == 'normal' and {'low'}) or {}
    for _, b in ipairs(passed) do
      if redis.call('LLEN', pool .. '.' .. b .. '.' .. tenant) > 0 then
        redis.call('HINCRBY', aged, tenant .. '.' .. b, 1)
      end
    end
    local weight = tonumber(redis.call('HGET', 'celeriac:weights', tenant) or '1')
    if weight <= 1 then
      redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')  -- most tenants: no credit to keep
    elseif redis.call('HINCRBY', credit, tenant, 1) >= weight then
      redis.call('HDEL', credit, tenant)
      redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
    end
  else
    -- Empty (or suspended): out of the ring until it has work again, keeping no state.
    redis.call('LPOP', ring)
    redis.call('SREM', members, tenant)
    redis.call('HDEL', credit, tenant)
    redis.call('HDEL', aged, tenant .. '.normal', tenant .. '.low')
    left = left - 1
  end
end
return moved
"""


class FairDispatcher:
    """Releases tenant backlogs into pool ready queues on a Redis broker."""

    def __init__(self, client: redis.Redis, min_depth: int = 1, age_limit: int = AGE_LIMIT) -> None:
        self.client = client
        self.min_depth = min_depth
        self.age_limit = age_limit
        self._release = client.register_script(_RELEASE)

    def release(
        self, pool: Pool, added: Iterable[TenantQueue] = (), *, host: str = "", busy: int = 0
    ) -> int:
        """Register backlogs in ``added``, count ``busy`` more (or fewer) tasks taken by
        worker ``host``, and top up the pool's ready queue to its free slots; returns how
        many messages moved."""
        argv: list[Any] = [
            pool.value,
            time.time(),
            self.min_depth,
            MAX_MOVES_PER_CALL,
            host,
            busy,
            self.age_limit,
        ]
        for queue in added:
            if queue.pool is not pool:
                raise ValueError(f"{queue.name} is not a {pool.value} queue")
            argv += [queue.band.value, queue.tenant]
        return int(self._release(args=argv))

    def register_capacity(
        self, pool: Pool, hostname: str, slots: int, busy: int | None = None
    ) -> None:
        """A worker announces its slots (and, when it knows, how many tasks it holds, which
        corrects any drift of the counts kept on receive and finish); they count while it
        keeps announcing."""
        expires = time.time() + CAPACITY_TTL_SECONDS
        with self.client.pipeline() as pipe:
            pipe.hset(SLOTS.format(pool=pool.value), hostname, slots)
            if busy is not None:
                pipe.hset(BUSY.format(pool=pool.value), hostname, busy)
            pipe.zadd(CAPACITY.format(pool=pool.value), {hostname: expires})
            pipe.execute()

    def busy(self, pool: Pool, hostname: str) -> int:
        """Tasks the dispatcher counts as held by worker ``hostname``."""
        return int(self.client.hget(BUSY.format(pool=pool.value), hostname) or 0)

    def withdraw_capacity(self, pool: Pool, hostname: str) -> None:
        with self.client.pipeline() as pipe:
            pipe.zrem(CAPACITY.format(pool=pool.value), hostname)
            pipe.hdel(SLOTS.format(pool=pool.value), hostname)
            pipe.hdel(BUSY.format(pool=pool.value), hostname)
            pipe.execute()

    def set_suspended(self, tenant_slug: str, suspended: bool) -> None:
        if suspended:
            self.client.sadd(SUSPENDED, tenant_slug)
        else:
            self.client.srem(SUSPENDED, tenant_slug)

    def replace_suspended(self, tenant_slugs: Iterable[str]) -> None:
        """Make the set of suspended tenants exactly ``tenant_slugs`` (beat rebuilds it from
        the database, so a Redis restart cannot forget a suspension)."""
        slugs = sorted(set(tenant_slugs))
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(SUSPENDED)
            if slugs:
                pipe.sadd(SUSPENDED, *slugs)
            pipe.execute()

    def queued_job_ids(
        self, tenant_slugs: Iterable[str], max_messages: int = QUEUED_SCAN_LIMIT
    ) -> tuple[set[str], set[str]]:
        """The ids of the jobs that have a message waiting in these tenants' queues (any
        pool, any band) or in a pool's ready queue: what the reconciler leaves alone, since
        such a job waits its turn and is not lost. Read from Celery's own header
        (``kwargsrepr``) without decoding the bodies. A tenant whose backlog is longer than
        ``max_messages`` is not read past it, and all its jobs count as waiting (the
        reconciler must never re-dispatch work that is merely queued). Returns the job ids
        and the slugs of such tenants. Not on the dispatch path: beat calls it for the
        tenants of stalled jobs only."""
        found: set[str] = set()
        unread: set[str] = set()
        names = [pool.value for pool in Pool]
        for slug in tenant_slugs:
            names += [f"{pool.value}.{band}.{slug}" for pool in Pool for band in _BANDS]
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.lrange(name, 0, max_messages - 1)
            contents = pipe.execute()
        for name, messages in zip(names, contents, strict=True):
            if len(messages) >= max_messages and name.count(".") == 2:
                unread.add(name.rsplit(".", 1)[-1])
            for message in messages:
                match = _JOB_ID.search(message)
                if match is not None:
                    found.add(match.group(1).decode())
        return found, unread

    def weights(self) -> dict[str, int]:
        """The weights the release script reads (tenants absent from it weigh
        ``DEFAULT_WEIGHT``)."""
        raw: dict[Any, Any] = self.client.hgetall(WEIGHTS)
        return {_text(k): int(v) for k, v in raw.items()}

    def set_weight(self, tenant_slug: str, weight: int) -> None:
        """The tenant's share from its next turn on (its plan's, or an admin's override)."""
        if weight == DEFAULT_WEIGHT:
            self.client.hdel(WEIGHTS, tenant_slug)
        else:
            self.client.hset(WEIGHTS, tenant_slug, weight)

    def sync_weights(self, wanted: dict[str, int]) -> int:
        """Make the weights hash say ``wanted`` (slug -> weight; the default weight may be
        left out), repairing a lost or stale hash; returns how many entries changed."""
        wanted = {slug: w for slug, w in wanted.items() if w != DEFAULT_WEIGHT}
        current = self.weights()
        stale = [slug for slug in current if slug not in wanted]
        changed: dict[Any, Any] = {s: w for s, w in wanted.items() if current.get(s) != w}
        with self.client.pipeline() as pipe:
            if stale:
                pipe.hdel(WEIGHTS, *stale)
            if changed:
                pipe.hset(WEIGHTS, mapping=changed)
            pipe.execute()
        return len(stale) + len(changed)

    def tenant_backlogs(self, pool: Pool | None = None) -> dict[TenantQueue, int]:
        """Messages waiting per tenant queue (the backlog KEDA and the admin view read).

        Scans the broker's keys: its cost grows with the number of queues, which is why
        it serves metrics and reconciliation, never the dispatch path."""
        pattern = f"{pool.value}.*" if pool is not None else "*.*.*"
        names = [
            key.decode() if isinstance(key, bytes) else str(key)
            for key in self.client.scan_iter(match=pattern, count=1000)
        ]
        queues = [q for q in (parse_queue(n) for n in names) if q is not None]
        if not queues:
            return {}
        with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue.name)
            lengths = pipe.execute()
        return {q: int(n) for q, n in zip(queues, lengths, strict=True) if n}

    def reconcile(self) -> int:
        """Re-add every non-empty tenant queue to its ring, then release every pool;
        returns how many messages moved."""
        backlogs = self.tenant_backlogs()
        moved = 0
        for pool in Pool:
            moved += self.release(pool, [q for q in backlogs if q.pool is pool])
        return moved

    def ready_depth(self, pool: Pool) -> int:
        return int(self.client.llen(pool.value))

    def slots(self, pool: Pool) -> int:
        """Task slots the pool's live workers announced (the console's admin backlog page
        shows them beside what is held)."""
        hosts: list[Any] = self.client.zrangebyscore(
            CAPACITY.format(pool=pool.value), f"({time.time()}", "+inf"
        )
        if not hosts:
            return 0
        counts = self.client.hmget(SLOTS.format(pool=pool.value), hosts)
        return sum(max(0, int(count or 0)) for count in counts)

    def held(self, pool: Pool) -> int:
        """Tasks the pool's live workers hold (the busy counts the release script reads,
        for workers whose capacity has not expired): the running side of the demand that
        KEDA scales on. Read-only; not on the dispatch path."""
        # Live workers: the release script drops expired ones with ZREMRANGEBYSCORE ..now.
        hosts: list[Any] = self.client.zrangebyscore(
            CAPACITY.format(pool=pool.value), f"({time.time()}", "+inf"
        )
        if not hosts:
            return 0
        counts = self.client.hmget(BUSY.format(pool=pool.value), hosts)
        return sum(max(0, int(count or 0)) for count in counts)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@lru_cache(maxsize=1)
def get_dispatcher() -> FairDispatcher | None:
    """The dispatcher when the broker is Redis; None otherwise (work goes straight to the
    pool queues: the embedded mode's filesystem broker has no fairness to keep)."""
    settings = get_settings()
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
    return FairDispatcher(client)
