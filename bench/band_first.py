"""The release script fair dispatch ran before issue 13, band first, kept here for the
benches' comparison only (it is not a product option: nothing outside ``bench/`` reaches
it).

It served the ``high`` band of every tenant before any ``normal`` work, round-robin only
among the tenants of a band, so a tenant sending ``high`` took the whole pool. Its rings
(``celeriac:ring:<pool>.<band>``) and its ARGV differ from the product's; the rest (slots,
busy counts, suspended set, ready queue) is the same, so the same worker code runs it.

A bench selects it with :func:`use_design` in its own process, and starts the worker with
``-A band_first_app`` (``bench/band_first_app.py``), which does the same before the
worker's app is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis

from celeriac.platform import dispatch
from celeriac.platform.dispatch import MAX_MOVES_PER_CALL, FairDispatcher
from celeriac.platform.queues import Pool, TenantQueue

BAND_FIRST = "band-first"

# ARGV: pool, now, min_depth, max_moves, host, busy delta, then (band, tenant) pairs to add
# to the rings.
_BAND_FIRST_RELEASE = """
local pool = ARGV[1]
local now = tonumber(ARGV[2])
local min_depth = tonumber(ARGV[3])
local max_moves = tonumber(ARGV[4])
local busy = 'celeriac:busy:' .. pool
if ARGV[5] ~= '' and tonumber(ARGV[6]) ~= 0 then
  if redis.call('HINCRBY', busy, ARGV[5], ARGV[6]) < 0 then redis.call('HSET', busy, ARGV[5], 0) end
end
local last = #ARGV - 1
for i = last, 7, -2 do
  local key = pool .. '.' .. ARGV[i]
  if redis.call('SADD', 'celeriac:ring-members:' .. key, ARGV[i + 1]) == 1 then
    redis.call('LPUSH', 'celeriac:ring:' .. key, ARGV[i + 1])
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
local moved = 0
for _, band in ipairs({'high', 'normal', 'low'}) do
  local key = pool .. '.' .. band
  local ring = 'celeriac:ring:' .. key
  local left = redis.call('LLEN', ring)
  while ready_len < depth and moved < max_moves and left > 0 do
    local tenant = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
    local message = false
    if redis.call('SISMEMBER', 'celeriac:suspended', tenant) == 0 then
      message = redis.call('RPOP', key .. '.' .. tenant)
    end
    if message then
      redis.call('LPUSH', pool, message)
      ready_len = ready_len + 1
      moved = moved + 1
    else
      redis.call('LREM', ring, -1, tenant)
      redis.call('SREM', 'celeriac:ring-members:' .. key, tenant)
      left = left - 1
    end
  end
end
return moved
"""


class BandFirstDispatcher(FairDispatcher):
    """:class:`FairDispatcher` with the band-first script (weights and aging ignored)."""

    def __init__(self, client: redis.Redis, min_depth: int = 1) -> None:
        super().__init__(client, min_depth)
        self._release = client.register_script(_BAND_FIRST_RELEASE)

    def release(
        self, pool: Pool, added: Iterable[TenantQueue] = (), *, host: str = "", busy: int = 0
    ) -> int:
        argv: list[Any] = [pool.value, time.time(), self.min_depth, MAX_MOVES_PER_CALL, host, busy]
        for queue in added:
            argv += [queue.band.value, queue.tenant]
        return int(self._release(args=argv))


def use_design(design: str) -> None:
    """Make this process's dispatcher (``get_dispatcher()``, cached) the product's or, for
    ``band-first``, the old one: every caller of ``get_dispatcher`` then gets it."""
    dispatch.get_dispatcher.cache_clear()
    dispatcher = dispatch.get_dispatcher()
    if dispatcher is None:
        raise RuntimeError("the benches need a Redis broker")
    if design == BAND_FIRST:
        dispatcher.__class__ = BandFirstDispatcher
        dispatcher._release = dispatcher.client.register_script(_BAND_FIRST_RELEASE)
