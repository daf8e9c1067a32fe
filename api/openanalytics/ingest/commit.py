"""Storing /collect hits in Redis: one script call for a whole batch of hits.

The last steps of the pipeline need Redis: the per-IP and per-site budgets, the session,
the stream append, and the Verify Installation record. Doing them one command at a time
made Redis client overhead the cost of /collect. Instead the intake (intake.py) hands over
a whole batch of hits, and one Lua script does every hit's work in order, atomically, and
answers each hit's outcome.

A hit's short fields travel in one JSON array (decoded by Redis's C cjson, not by Lua code);
the row, arrival and acquisition texts follow in one more argument, one per line, which needs
no escaping or decoding. Lua keeps visitor and session ids and times as strings (its numbers
are doubles).

Where a visit came from (referrer, source, UTM fields: its acquisition) belongs to the
session, as in every analytics tool: the session keeps its first event's, and the script
writes it into every event of the session, so a conversion three pages after landing from
Google counts for Google, not as direct traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from functools import lru_cache

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openanalytics.ingest import arrivals

log = logging.getLogger(__name__)

MAX_HITS_PER_CALL = 500
ATTEMPT_SECONDS = 10.0  # one call: a hung Redis must not stall /collect for good
RETRY_SECONDS = 30.0  # while Redis cannot be reached (a restart), a batch is sent again for this long
BATCH_KEY_MS = 120_000  # how long a batch's outcome is kept for a call sent again
RECENT_MS = 5 * 60_000  # realtime: visitors, top pages and sources of the last five minutes
MINUTES = 30  # realtime: pageviews per minute for the last thirty

_SCRIPT = r"""
local window, idle, stream = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local keep, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
-- A batch sent again (its first call may or may not have run when Redis went away) is answered from
-- what its first run left, and stores nothing twice.
local batch_key = ARGV[11]
local done = redis.call('GET', batch_key)
if done then return done end
-- The ingest queue's bound (buffer.py): past it, hits that would be stored are dropped as overloaded.
local room = tonumber(ARGV[10]) - redis.call('XLEN', stream)
local now
local function spend(key, limit)
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('PEXPIRE', key, window) end
  return count <= limit, count <= limit + 1
end
-- A site's budget is read once per batch, counted here and written back at the end: one hit
-- after another, exactly as INCR per hit would, for two calls per site instead of one per hit.
-- (Should the script fail halfway, the hits already on the stream are not charged: Redis keeps
-- a failed script's writes, and the budget is written last.)
local site_used, site_spent = {}, {}
local function spend_site(key, limit)
  if not site_used[key] then
    site_used[key], site_spent[key] = tonumber(redis.call('GET', key) or '0'), 0
  end
  site_used[key], site_spent[key] = site_used[key] + 1, site_spent[key] + 1
  return site_used[key] <= limit
end
-- Calls with one argument per member, cut so no call unpacks too many (Lua's stack is bounded).
local function each_chunk(list, size, call)
  for first = 1, #list, size do
    call(unpack(list, first, math.min(first + size - 1, #list)))
  end
end
-- A session is "sid:last seen ms:visitor:events so far:first was a pageview (1/0)", then while it is
-- one pageview, "\n" and that pageview's path. Older values end after the visitor: their count is
-- unknown (0), and so is the path (nil).
local function session_of(value)
  if not value then return nil end
  local sid, seen, who, rest = string.match(value, '^(%d+):(%d+):(%d+)(.*)')  -- whatever a later form appends
  if not sid then return nil end
  local count, first_pv, marked, first_path = string.match(rest, '^:(%d+):([01])(\n?)(.*)$')
  if marked ~= '\n' then first_path = nil end
  return sid, tonumber(seen), who, tonumber(count or '0'), first_pv, first_path
end
-- Ages are hours (of the clock) since a visitor's last event (on a path), plus 1 (65535: none).
local function age(at, last_ms)
  return math.min(math.max(0, math.floor(at / 3600000) - math.floor(last_ms / 3600000)) + 1, 65534)
end
local function ages(last_path, last_seen, sid, at)
  local path_age, session_age, visitor_age = 65535, 65535, 65535
  if last_path then
    local last_ms, last_sid = string.match(last_path, '^(%d+):(%d+)$')
    path_age = age(at, tonumber(last_ms))
    if last_sid == sid then session_age = path_age end
  end
  if last_seen then visitor_age = age(at, last_seen) end
  return path_age, session_age, visitor_age
end
-- A visitor's hash (`oa:vp:`) holds all that is kept per visitor, in one key so a hit reads it in one
-- call and writes it in one: per path its last event, "ms:session" (the field is the path's key), under
-- '*' its last event on any path, under 's' its session and under 'a' where that session came from,
-- "source\nJSON members for the row" ("" for a direct visit). It is kept while the visitor can come
-- back: its visits start on one day and each goes on while events come. The release before kept
-- the session and its source in keys of their own (`oa:sess:`, `oa:acq:`), which live an hour after
-- its last hit, and wrote only the paths and '*' here: where it wrote last (no 's', or '*' after the
-- session's last event), the visit goes on from those.
local function visitor_state(pid, visitor, path_key)
  local key = 'oa:vp:' .. pid .. ':' .. visitor
  return key, redis.call('HMGET', key, path_key, '*', 's', 'a')
end
-- The live visit in `got` (the hash of `visitor`): the key and fields of the hash that keeps it, its
-- visitor, and its session (see session_of); nothing if there is none. A visit that began yesterday
-- goes on as yesterday's visitor, which keeps it; today's visitor's 's' names that visitor, so the
-- visit goes on while that hash keeps it, and yesterday's names today's under 'n' (for privacy
-- deletion, which removes both).
local function visit(pid, path_key, key, got, visitor)
  local sid, seen, who, count, first_pv, first_path = session_of(got[3])
  if sid and who ~= visitor then
    visitor = who
    key, got = visitor_state(pid, visitor, path_key)
    sid, seen, who, count, first_pv, first_path = session_of(got[3])
  end
  local last = got[2] and tonumber(got[2])
  if last and (not sid or seen < last) then  -- the release before wrote last (5: the source is not in the hash)
    local older = redis.call('GET', 'oa:sess:' .. pid .. ':' .. visitor)
    local o_sid, o_seen, _, o_count, o_first_pv, o_first_path = session_of(older)
    if o_sid and (not sid or o_seen >= last) then
      got[3], got[4], got[5] = older, redis.call('GET', 'oa:acq:' .. pid .. ':' .. visitor) or '', true
      sid, seen, count, first_pv, first_path = o_sid, o_seen, o_count, o_first_pv, o_first_path
    end
  end
  if sid and now - seen <= idle then return key, got, visitor, sid, seen, count, first_pv, first_path end
  return nil
end
-- Each hit's row, arrival and acquisition, one per line: JSON from orjson holds no raw line break.
local texts, at = ARGV[9], 1
local function next_text()
  local stop = string.find(texts, '\n', at, true)
  local text = string.sub(texts, at, stop - 1)
  at = stop + 1
  return text
end
-- Per project: the hits Verify lists (their texts are put together only for the newest `keep`), and
-- the realtime state, summed over the batch and written once per key at the end (see realtime.py).
local outcomes, listed, drops, realtime = {}, {}, {}, {}
local function tally(counted, member)
  counted[member] = (counted[member] or 0) + 1
end
for _, f in ipairs(cjson.decode(ARGV[6])) do
  local kind, pid, iptag, iplimit, sitelimit = f[1], f[2], f[3], f[4], f[5]
  local visitor, previous, fresh = f[6], f[7], f[8]
  local event_id, reason, stamp, day = f[9], f[10], f[11], f[12]
  local event_type, path, source, path_key = f[13], f[14], f[15], f[16]
  local row, arrival, acquired = next_text(), next_text(), next_text()
  now = tonumber(stamp)
  local outcome = reason
  -- Every hit, ignored ones too, spends its IP's budget; past it (and the first hit over it, which
  -- shows why) hits are only counted, not listed: a flood from one address, bots included,
  -- cannot push everyone else's arrivals out of the Verify list.
  local within, listable = spend('oa:rl:collect:ip:' .. pid .. ':' .. iptag, tonumber(iplimit))
  if kind == 'E' then
    if not within then
      outcome = 'rate_limited_ip'
    elseif not spend_site('oa:rl:collect:site:' .. pid, tonumber(sitelimit)) then
      outcome = 'rate_limited_site'
    elseif room <= 0 then
      outcome = 'overloaded'
    else
      room = room - 1
      local today, own_key, own = visitor, visitor_state(pid, visitor, path_key)
      local paths_key, last, who, sid, last_at, count, first_pv, first_path = visit(pid, path_key, own_key, own, visitor)
      local named = sid ~= nil or previous == ''
      if not sid and previous ~= '' then
        -- Just after midnight: yesterday's visitor may be mid-visit.
        local key, before = visitor_state(pid, previous, path_key)
        paths_key, last, who, sid, last_at, count, first_pv, first_path = visit(pid, path_key, key, before, previous)
      end
      if not sid then paths_key, last, who, named = own_key, own, visitor, true end
      local continued = sid ~= nil
      local kept_from = acquired ~= '' and source .. '\n' .. acquired or ''
      if continued then  -- a new session keeps this hit's source
        kept_from = last[4] or ''
        source, acquired = string.match(kept_from, '^([^\n]*)\n(.*)$')
        source, acquired = source or '', acquired or ''
      end
      sid, visitor = sid or fresh, who
      local last_seen = last[2] and tonumber(last[2])
      -- The event's time is its arrival, but never before its visitor's or its session's last event:
      -- hits that pods with their own clocks commit out of order keep the order (off by as much).
      -- Its place in the session, for sums of session numbers (query/session_sums.py): which event
      -- (0 once unknown), the time since the one before, and +1 for a bounce while the session is
      -- one pageview, -1 when a second event ends that.
      local at, seq, gap, bounce, bounce_path = math.max(now, last_seen or 0), 1, 0, 0, ''
      if continued then
        at = math.max(at, last_at)
        seq, gap = (count > 0) and count + 1 or 0, at - last_at
        if seq == 2 and first_pv == '1' then bounce, bounce_path = -1, first_path end
      else
        first_pv = (event_type == 'pageview') and '1' or '0'
        if first_pv == '1' then bounce = 1 end
      end
      -- Per path (query/path_sums.py): hours since the visitor's and the session's last event on it,
      -- and where a bounce ends, the path it was on. Not known (0) where the place is not. And hours
      -- since the visitor's last event at all (query/visitor_sums.py).
      local path_age, session_age, visitor_age = ages(last[1], last_seen, sid, at)
      if seq == 0 or bounce_path == nil then path_age, session_age, bounce_path = 0, 0, '' end
      local kept = sid .. ':' .. string.format('%d', at) .. ':' .. visitor .. ':' .. seq .. ':' .. (first_pv or '0')
      if seq == 1 and first_pv == '1' then kept = kept .. '\n' .. path end
      at = string.format('%d', at)
      if last[4] == kept_from and not last[5] then
        redis.call('HSET', paths_key, path_key, at .. ':' .. sid, '*', at, 's', kept)
      else
        redis.call('HSET', paths_key, path_key, at .. ':' .. sid, '*', at, 's', kept, 'a', kept_from)
      end
      redis.call('PEXPIRE', paths_key, 86400000 + idle * 2)
      if not named then  -- the visit goes on from yesterday's visitor: today's names it, and the other way
        redis.call('HSET', own_key, 's', kept)
        redis.call('PEXPIRE', own_key, 86400000 + idle * 2)
        redis.call('HSET', paths_key, 'n', today)
      end
      -- field 'e' as in buffer.FIELD, which the worker reads
      redis.call('XADD', stream, '*', 'e', row .. acquired .. ',"visitor_id":' .. visitor .. ',"session_id":' .. sid ..
        ',"session_seq":' .. seq .. ',"session_gap_ms":' .. string.format('%d', gap) .. ',"bounce":' .. bounce ..
        ',"path_visitor_age":' .. path_age .. ',"path_session_age":' .. session_age ..
        ',"bounce_path":' .. (bounce_path == '' and '""' or cjson.encode(bounce_path)) .. ',"visitor_age":' .. visitor_age .. ',"timestamp":' .. at .. '}')
      outcome = 'accepted'
      local rt = realtime[pid]
      if not rt then
        rt = {seen = {}, minutes = {}}
        realtime[pid] = rt
      end
      if (rt.seen[visitor] or 0) < now then rt.seen[visitor] = now end
      if event_type == 'pageview' then
        local minute = math.floor(now / 60000)
        local counted = rt.minutes[minute]
        if not counted then
          counted = {pv = 0, pages = {}, sources = {}}
          rt.minutes[minute] = counted
        end
        counted.pv = counted.pv + 1
        tally(counted.pages, path)
        tally(counted.sources, source)
      end
    end
  end
  if listable then
    local arrived = listed[pid] or {}
    listed[pid] = arrived
    arrived[#arrived + 1], arrived[#arrived + 2], arrived[#arrived + 3] = arrival, outcome, event_id
  end
  if outcome ~= 'accepted' then
    local counted = 'oa:drops:' .. pid .. ':' .. day
    drops[counted] = drops[counted] or {}
    drops[counted][outcome] = (drops[counted][outcome] or 0) + 1
  end
  outcomes[#outcomes + 1] = outcome
end
for key, n in pairs(site_spent) do
  if redis.call('INCRBY', key, n) == n then redis.call('PEXPIRE', key, window) end
end
-- Only the newest `keep` arrivals stay listed: older ones of this batch are never pushed.
for pid, arrived in pairs(listed) do
  local key, texts = 'oa:arrivals:' .. pid, {}
  for n = math.max(1, #arrived - 3 * keep + 1), #arrived, 3 do  -- arrival, outcome, event id
    local outcome, id = arrived[n + 1], 'null'
    if outcome == 'accepted' then id = '"' .. arrived[n + 2] .. '"' end
    texts[#texts + 1] = arrived[n] .. ',"outcome":"' .. outcome .. '","event_id":' .. id .. '}'
  end
  each_chunk(texts, 1000, function(...) redis.call('LPUSH', key, ...) end)
  redis.call('LTRIM', key, 0, keep - 1)
  redis.call('EXPIRE', key, ttl)
end
for key, reasons in pairs(drops) do
  for reason, n in pairs(reasons) do redis.call('HINCRBY', key, reason, n) end
  redis.call('EXPIRE', key, ttl * 2)
end
local recent, minutes = tonumber(ARGV[7]), tonumber(ARGV[8])
local function ranked(key, members)
  for member, n in pairs(members) do redis.call('ZINCRBY', key, n, member) end
  redis.call('PEXPIRE', key, recent + 60000)
end
for pid, rt in pairs(realtime) do
  local prefix, latest, scored = 'oa:rt:' .. pid, 0, {}
  for visitor, last in pairs(rt.seen) do
    scored[#scored + 1], scored[#scored + 2] = last, visitor
    latest = math.max(latest, last)
  end
  -- an even chunk size: a score never parts from its member
  each_chunk(scored, 1000, function(...) redis.call('ZADD', prefix .. ':visitors', 'GT', ...) end)
  redis.call('ZREMRANGEBYSCORE', prefix .. ':visitors', '-inf', string.format('(%d', latest - recent))
  redis.call('PEXPIRE', prefix .. ':visitors', recent)
  for minute, counted in pairs(rt.minutes) do
    local suffix = ':' .. string.format('%d', minute)
    redis.call('INCRBY', prefix .. ':pv' .. suffix, counted.pv)
    redis.call('PEXPIRE', prefix .. ':pv' .. suffix, minutes * 60000)
    ranked(prefix .. ':pages' .. suffix, counted.pages)
    ranked(prefix .. ':sources' .. suffix, counted.sources)
  end
end
-- What this batch came to, for a second call of it: outcomes and how many of each.
local counts, tallied = {}, {}
for _, outcome in ipairs(outcomes) do counts[outcome] = (counts[outcome] or 0) + 1 end
for outcome, n in pairs(counts) do tallied[#tallied + 1] = outcome .. '=' .. n end
redis.call('SET', batch_key, '=' .. table.concat(tallied, ','), 'PX', tonumber(ARGV[12]))
-- One string, not an array: parsing thousands of replies costs the client more than Redis.
return table.concat(outcomes, ',')
"""
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


@lru_cache(maxsize=4096)
def path_key(path: str) -> str:
    """A short stable key for a path, which the script keeps per visitor instead of the path itself."""
    return hashlib.blake2b(path.encode(), digest_size=8).hexdigest()


def accepted(project_id: str, ip_tag: str, per_ip: int, per_site: int, visitor: int, previous: int | None,
             fresh_session: int, row: str, arrival: str, event_id: str, stamp_ms: int, day: str,
             event_type: str, path: str, source: str, acquired: str = "") -> list:
    """An event that passed the steps, as the script takes it (`row` and `arrival` are JSON objects
    without their closing brace and without raw line breaks, as orjson writes them: the script appends
    fields, the event's time among them; the last three feed realtime). `source` and `acquired` (JSON members with a leading comma,
    or "") are where this hit came from, which its session keeps if this hit starts it."""
    return [row, arrival, acquired, "E", project_id, ip_tag, per_ip, per_site, str(visitor), str(previous or ""),
            str(fresh_session), event_id, "", str(stamp_ms), day, event_type, path, source, path_key(path)]


def dropped(project_id: str, ip_tag: str, per_ip: int, arrival: str, reason: str, stamp_ms: int, day: str) -> list:
    """A hit the steps ignored for `reason`: counted and listed for Verify; it spends its IP's budget."""
    return ["", arrival, "", "D", project_id, ip_tag, per_ip, 0, "", "", "", "", reason, str(stamp_ms), day, "", "", "", ""]


def _outcomes(reply: str) -> list[str]:
    """Each hit's outcome; from a batch sent again, its first run's counts ("=accepted=3,bot=1")."""
    if not reply.startswith("="):
        return reply.split(",")
    return [outcome for part in reply[1:].split(",") if part
            for outcome, n in [part.rsplit("=", 1)] for _ in range(int(n))]


class Committer:
    def __init__(self, redis: aioredis.Redis, stream: str, window_ms: int, idle_ms: int,
                 max_queued: int = 1_000_000, memory_full: Callable[[], bool] = lambda: False):
        self.redis = redis
        self.shared = [window_ms, idle_ms, stream, arrivals.KEEP, arrivals.TTL_SECONDS]
        self.max_queued = max_queued  # the ingest queue's bound (buffer.py)
        self.memory_full = memory_full  # Redis too full for ingest (durability.py): nothing is stored
        self._unreachable_since: float | None = None

    async def commit(self, hits: list[list]) -> list[str]:
        """Store `hits` (from `accepted` and `dropped`); returns each outcome. Raises if Redis fails."""
        outcomes: list[str] = []
        for start in range(0, len(hits), MAX_HITS_PER_CALL):  # no call long enough to stall Redis
            chunk = hits[start:start + MAX_HITS_PER_CALL]
            # The row and arrival texts go apart, one per line: inside the JSON array every quote
            # in them would be escaped here and unescaped by Redis.
            fields = orjson.dumps([hit[3:] for hit in chunk])
            texts = "".join(f"{hit[0]}\n{hit[1]}\n{hit[2]}\n" for hit in chunk)
            if texts.count("\n") != 3 * len(chunk):  # a line break inside one would shift every later hit
                raise ValueError("a row, arrival or acquisition holds a line break")
            room = 0 if self.memory_full() else self.max_queued
            batch_key = f"oa:commit:{secrets.token_hex(8)}"
            reply = await self._call_through_outage([*self.shared, fields, RECENT_MS, MINUTES, texts, room, batch_key,
                                           BATCH_KEY_MS])
            outcomes += _outcomes(reply.decode() if isinstance(reply, bytes) else reply)
        return outcomes

    async def _call_through_outage(self, argv: list) -> bytes | str:
        """The script's call, sent again while Redis cannot be reached or does not answer, for up to
        RETRY_SECONDS since Redis last answered (then at once, once per batch: a long outage must not
        hold every batch that long). The batch key in `argv` makes a call that ran already answer from
        its first run, so nothing is stored twice."""
        delay = 0.05
        while True:
            try:
                async with asyncio.timeout(ATTEMPT_SECONDS):
                    reply = await self._call(argv)
            except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError):
                now = time.monotonic()
                if self._unreachable_since is None:
                    self._unreachable_since = now
                if now - self._unreachable_since >= RETRY_SECONDS:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            else:
                self._unreachable_since = None
                return reply

    async def _call(self, argv: list) -> bytes | str:
        try:
            return await self.redis.evalsha(_SHA, 0, *argv)
        except NoScriptError:
            await self.redis.script_load(_SCRIPT)  # a new or restarted Redis
            return await self.redis.evalsha(_SHA, 0, *argv)
