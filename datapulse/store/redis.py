"""The Redis session store: ``SessionStore`` on Redis (7.0 or later), through coredis.

coredis (6.x) is anyio-native, so it runs on Trio as it is: no asyncio bridge, and a Trio
cancellation reaches the command being awaited. Open the store before use and close it after,
in one task (``async with RedisSessionStore(url, ...) as store:``); coredis keeps its connection
pool's tasks in that task's nursery.

Key layout (``P`` is the ``prefix``; every key of one session carries the session id as its hash
tag, so a Redis Cluster would keep a session's keys, and so every script below, on one shard;
braces and ``%`` in an id are percent-encoded there, so the tag is always the whole id)::

    P:{<session id>}:rec      hash    the SessionRecord's fields (+ ``token``: who created it)
    P:{<session id>}:proto    string  the MCP protocol state, JSON
    P:{<session id>}:logs     hash    per log n: s:n last seq, o:n oldest held, b:n bytes held,
                                      c:n closed, t:n the last append's token; next: the next
                                      request stream number; open: the last open's token
    P:{<session id>}:reqs     list    the request streams kept, oldest first
    P:{<session id>}:log:<n>  stream  log n's events: id ``0-<seq>``, field ``w`` = the framed
                                      bytes (``id:`` line included), sent as they are
    P:sessions                zset    session id -> expires_at (``expired``, ``count``)
    P:state:<key>             string  a round-trip state, JSON, with its own TTL
    P:{t.<digest>}:tasks      zset    a principal's task ids by creation order (digest: blake2b
    P:{t.<digest>}:n          string  of the principal), the counter behind that order, and
    P:{t.<digest>}:task:<id>  hash    each task: rev, data (JSON), with its own TTL
    P:changes                 channel "<log's stream key> <seq>" published on every append

Round trips (each operation is one Lua script or one command unless said): ``append``, ``read``,
``last_seq``, ``open_request_log``, ``close_log``, ``drop_log``, ``get``, ``mark_delivered``,
``save_protocol``, ``load_protocol``, ``count``, ``expired``, ``put_state``, ``take_state`` and
every task method: 1. ``create``, ``touch`` and ``delete``: 2 (the session's own keys, then the
``P:sessions`` index, which lives in another slot). After a Redis restart each script costs one
``NOSCRIPT`` + ``SCRIPT LOAD`` once.

Logs. A log's seqs come from ``HINCRBY`` in the same script that adds the event (``XADD`` with
the explicit id ``0-<seq>``), trims the log and publishes the change: one atomic round trip.
Its bounds are exact, like ``ReplayLog``'s: the script keeps the oldest seq still held (``o:n``)
and the bytes held (``b:n``), and evicts oldest first while the log holds more than
``max_events`` events or ``max_bytes`` bytes, always keeping the newest. ``read`` raises
``ReplayGone`` exactly where the memory store does. The entries evicted are trimmed with
``XADD ... MINID ~ 0-<oldest>`` (the event-count bound alone would be ``MAXLEN ~ max_events``;
MINID also follows the byte bound): ``~`` lets Redis drop whole stream nodes only, so up to one
node's worth (``stream-node-max-entries``, 100 by default, or ``stream-node-max-bytes``) of
evicted entries may stay in memory until the next node fills; they are never read.

Instances. ``watch()`` (what ``SessionManager.run`` looks for on a shared store) yields
``(key, seq)`` for every append by any instance on the same Redis and prefix, from one pub/sub
subscription to ``P:changes`` per instance; ``changes()`` is the same as a context manager.

Expiry. ``touch``/``expired`` keep the caller's clock (``SessionRecord``'s times, as given); the
sweeper decides when a session ends. Redis TTLs are the backstop for sessions nobody sweeps (an
instance that died): every key of a session expires ``ttl_s + ttl_grace_s`` after the last
``create``/``touch``, and keys written later take the record's remaining TTL.

Failures. Every call has one deadline, ``timeout_s``, for everything it waits on (getting a
connection, connecting, each reply, the retries). A lost connection (Redis restarted, a network
cut) is retried under coredis' retry policy (exponential backoff) within that deadline, with a
fresh connection; a reply that does not come in time is never retried (the command may still
run). Scripts that are not idempotent (``create``, ``append``, ``open_request_log``,
``create_task``, ``save_task``) carry a token, so a retry after a lost reply finds its own earlier
effect instead of repeating it (``append``: unless another append to that log came in between).
Anything Redis-side that fails raises ``StoreUnavailable`` (503). A cancelled caller stops
waiting at once; a command already sent may still take effect on the server, and its late reply
is read and dropped, so the connection stays in step.

Differences from the memory store, by nature: round-trip states and tasks are bounded by their
TTLs and Redis' memory (``maxmemory-policy noeviction`` is the setting to use: an evicted key of a
session breaks it), not by ``MAX_STATES``/``MAX_TASKS``; tasks expire on Redis' clock.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from itertools import count as counter
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import parse_qs, urlsplit

import coredis
import orjson
import trio
from coredis.commands.script import Script
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import RedisError
from coredis.retry import ConstantRetryPolicy, ExponentialBackoffRetryPolicy, NoRetryPolicy
from coredis.tokens import PureToken

from datapulse.core.eventlog import LoggedEvent, ReplayGone
from datapulse.core.session import SessionRecord
from datapulse.core.sse import encode_data
from datapulse.errors import ServiceUnavailable
from datapulse.store.base import (
    KEPT_REQUEST_LOGS,
    LogKey,
    LogRead,
    SessionExists,
    StoredTask,
    TaskExists,
    TaskLimitReached,
    UnknownLog,
)

T = TypeVar("T")

DEFAULT_PREFIX: Final = "datapulse"
DEFAULT_TIMEOUT_S: Final = 2.0
DEFAULT_TTL_GRACE_S: Final = 300.0
DEFAULT_MAX_CONNECTIONS: Final = 16
"""coredis multiplexes commands over its connections, so a few carry a busy server."""

_PREFIX = re.compile(r"[\x21-\x7a\x7c\x7e]{1,100}")
"""Visible ASCII without braces (a brace would move the hash tag) and without spaces (the change
messages are space-separated)."""

_RECORD_FIELDS: Final = ("owner", "kind", "created_at", "last_active", "ttl_s", "delivered_seq")


class StoreUnavailable(ServiceUnavailable):
    """Redis could not be reached, or did not answer within the store's ``timeout_s``."""

    error = "store_unavailable"


class Change(NamedTuple):
    """One append, as published on the change channel: the log and its new last seq."""

    key: LogKey
    seq: int


# -- Lua -------------------------------------------------------------------------------------------
# Every script touches only the keys of one session (or one principal): one hash slot. Numbers go
# out through int(), which formats a Lua number as a decimal integer (string concatenation would
# use %.14g). ``forget`` deletes a session's keys; ``base`` is "P:{<session id>}:".

_LUA_INT = "local function int(x) return string.format('%d', x) end\n"

_LUA_FORGET = """
local function forget(base)
  for _, n in ipairs(redis.call('LRANGE', base .. 'reqs', 0, -1)) do
    redis.call('DEL', base .. 'log:' .. n)
  end
  redis.call('DEL', base .. 'rec', base .. 'proto', base .. 'logs', base .. 'reqs',
             base .. 'log:0')
end
"""

# KEYS: rec. ARGV: base, ttl_ms, token, field, value, ...  -> 1 created, 0 taken
_CREATE = (
    _LUA_FORGET
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'token') == ARGV[3] then return 1 end
  return 0
end
forget(ARGV[1])  -- leftovers of an earlier session of this id whose record expired first
redis.call('HSET', KEYS[1], 'token', ARGV[3], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: rec. ARGV: base. Deletes every key of the session.
_DELETE = _LUA_FORGET + "forget(ARGV[1])\nreturn 1\n"

# KEYS: rec. ARGV: base, now, grace_ms -> {last_active, ttl_s, owner} or nil
_TOUCH = (
    _LUA_INT
    + """
local f = redis.call('HMGET', KEYS[1], 'last_active', 'ttl_s', 'owner')
if not f[1] then return false end
local last = f[1]
if tonumber(ARGV[2]) > tonumber(last) then
  redis.call('HSET', KEYS[1], 'last_active', ARGV[2])
  last = ARGV[2]
end
local ms = int(math.ceil(tonumber(f[2]) * 1000) + tonumber(ARGV[3]))
local base = ARGV[1]
redis.call('PEXPIRE', KEYS[1], ms)
for _, suffix in ipairs({'proto', 'logs', 'reqs', 'log:0'}) do
  redis.call('PEXPIRE', base .. suffix, ms)
end
for _, n in ipairs(redis.call('LRANGE', base .. 'reqs', 0, -1)) do
  redis.call('PEXPIRE', base .. 'log:' .. n, ms)
end
return {last, f[2], f[3]}
"""
)

# KEYS: rec. ARGV: seq
_MARK_DELIVERED = """
local held = redis.call('HGET', KEYS[1], 'delivered_seq')
if held and tonumber(ARGV[1]) > tonumber(held) then
  redis.call('HSET', KEYS[1], 'delivered_seq', ARGV[1])
end
return 1
"""

# KEYS: rec, proto. ARGV: json
_SAVE_PROTOCOL = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[1])
end
return 1
"""

# KEYS: rec, logs, reqs. ARGV: base, kept, token -> the new stream number, or -1 (no session)
_OPEN_REQUEST_LOG = (
    _LUA_INT
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local prev = redis.call('HGET', KEYS[2], 'open')
if prev then
  local token, n = string.match(prev, '^(%S+) (%d+)$')
  if token == ARGV[3] then return tonumber(n) end
end
local n = int(redis.call('HINCRBY', KEYS[2], 'next', 1))
redis.call('HSET', KEYS[2], 's:' .. n, 0, 'open', ARGV[3] .. ' ' .. n)
redis.call('RPUSH', KEYS[3], n)
while redis.call('LLEN', KEYS[3]) > tonumber(ARGV[2]) do
  local old = redis.call('LPOP', KEYS[3])
  redis.call('DEL', ARGV[1] .. 'log:' .. old)
  redis.call('HDEL', KEYS[2], 's:' .. old, 'o:' .. old, 'b:' .. old, 'c:' .. old, 't:' .. old)
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return tonumber(n)
"""
)

# KEYS: logs, reqs, log. ARGV: n
_DROP_LOG = """
local n = ARGV[1]
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[1], 's:' .. n, 'o:' .. n, 'b:' .. n, 'c:' .. n, 't:' .. n)
redis.call('LREM', KEYS[2], 0, n)
return 1
"""

# KEYS: logs. ARGV: n
_CLOSE_LOG = """
if redis.call('HEXISTS', KEYS[1], 's:' .. ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'c:' .. ARGV[1], 1)
end
return 1
"""

# Is log n held? Stream 0 is held while its session is; request streams while s:n is there.
_LUA_HELD = """
local function held(rec, logs, n)
  if n == '0' then return redis.call('EXISTS', rec) == 1 end
  return redis.call('HEXISTS', logs, 's:' .. n) == 1
end
"""

# KEYS: rec, logs, log. ARGV: n, head, tail, id prefix, max_events, max_bytes, token, channel,
# change key -> the event's seq, or nil (log not held)
_APPEND = (
    _LUA_INT
    + _LUA_HELD
    + """
local n = ARGV[1]
if not held(KEYS[1], KEYS[2], n) then return false end
local tf = 't:' .. n
local prev = redis.call('HGET', KEYS[2], tf)
if prev then
  local token, seq = string.match(prev, '^(%S+) (%d+)$')
  if token == ARGV[7] then return tonumber(seq) end
end
local seq = redis.call('HINCRBY', KEYS[2], 's:' .. n, 1)
local id = int(seq)
local wire = ARGV[2] .. 'id: ' .. ARGV[4] .. id .. '\\n' .. ARGV[3]
local of, bf = 'o:' .. n, 'b:' .. n
local oldest = tonumber(redis.call('HGET', KEYS[2], of) or '1')
local bytes = tonumber(redis.call('HGET', KEYS[2], bf) or '0') + #wire
local max_events, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
while oldest < seq and (seq - oldest + 1 > max_events or bytes > max_bytes) do
  local gone = redis.call('XRANGE', KEYS[3], '0-' .. int(oldest), '0-' .. int(oldest))
  if gone[1] then bytes = bytes - #gone[1][2][2] end
  oldest = oldest + 1
end
redis.call('XADD', KEYS[3], 'MINID', '~', '0-' .. int(oldest), '0-' .. id, 'w', wire)
redis.call('HSET', KEYS[2], of, int(oldest), bf, int(bytes), tf, ARGV[7] .. ' ' .. id)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
redis.call('PUBLISH', ARGV[8], ARGV[9] .. ' ' .. id)
return seq
"""
)

# KEYS: rec, logs, log. ARGV: n, after, limit ('' for none), first id to read
# -> {last_seq, closed, oldest held if the asked events are gone else 0, entries} or nil
_READ = (
    _LUA_HELD
    + """
local n = ARGV[1]
if not held(KEYS[1], KEYS[2], n) then return false end
local last = tonumber(redis.call('HGET', KEYS[2], 's:' .. n) or '0')
local closed = redis.call('HEXISTS', KEYS[2], 'c:' .. n)
local after = tonumber(ARGV[2])
if after >= last then return {last, closed, 0, {}} end
local oldest = tonumber(redis.call('HGET', KEYS[2], 'o:' .. n) or '1')
if after + 1 < oldest then return {last, closed, oldest, {}} end
local entries = {}
if ARGV[3] == '' then
  entries = redis.call('XRANGE', KEYS[3], ARGV[4], '+')
elseif tonumber(ARGV[3]) > 0 then
  entries = redis.call('XRANGE', KEYS[3], ARGV[4], '+', 'COUNT', ARGV[3])
end
return {last, closed, 0, entries}
"""
)

# KEYS: rec, logs. ARGV: n -> last seq, or nil
_LAST_SEQ = (
    _LUA_HELD
    + """
if not held(KEYS[1], KEYS[2], ARGV[1]) then return false end
return tonumber(redis.call('HGET', KEYS[2], 's:' .. ARGV[1]) or '0')
"""
)

# A principal's tasks. ``live`` counts the unexpired ones and drops expired ids from the index.
_LUA_TASKS = """
local function live(index, base)
  local held = {}
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if redis.call('EXISTS', base .. id) == 1 then
      held[#held + 1] = id
    else
      redis.call('ZREM', index, id)
    end
  end
  return held
end
"""

# KEYS: index, counter, task. ARGV: base, task id, data, ttl_ms, limit, token
# -> {1, 0} created, {-1, 0} taken, {0, held} at the limit
_CREATE_TASK = (
    _LUA_TASKS
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('HGET', KEYS[3], 'token') == ARGV[6] then return {1, 0} end
  return {-1, 0}
end
local held = #live(KEYS[1], ARGV[1])
if held >= tonumber(ARGV[5]) then return {0, held} end
local order = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], 'rev', 1, 'data', ARGV[3], 'token', ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[1], order, ARGV[2])
for i = 1, 2 do  -- the index and its counter live as long as the longest-lived task
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl == -1 or ttl < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
return {1, 0}
"""
)

# KEYS: task. ARGV: rev, data, token -> the new rev, or nil
_SAVE_TASK = """
local prev = redis.call('HGET', KEYS[1], 'saved')
if prev then
  local token, rev = string.match(prev, '^(%S+) (%d+)$')
  if token == ARGV[3] then return tonumber(rev) end
end
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev or rev ~= ARGV[1] then return false end
rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'saved', ARGV[3] .. ' ' .. rev)
return rev
"""

# KEYS: index. ARGV: base -> {rev, data, rev, data, ...} oldest first
_LIST_TASKS = (
    _LUA_TASKS
    + """
local out = {}
for _, id in ipairs(live(KEYS[1], ARGV[1])) do
  local f = redis.call('HMGET', ARGV[1] .. id, 'rev', 'data')
  out[#out + 1] = f[1]
  out[#out + 1] = f[2]
end
return out
"""
)

# KEYS: index, task. ARGV: task id
_DELETE_TASK = """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


def _tag(session_id: str) -> str:
    """The session id as a hash tag: braces (and ``%``, the escape) percent-encoded, so the tag
    is the whole id and never empty (``{}`` would make Redis hash the whole key instead)."""
    if "{" not in session_id and "}" not in session_id and "%" not in session_id:
        return session_id
    return session_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _untag(tag: str) -> str:
    return tag.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def _split_wire(data: str, event: str | None) -> tuple[bytes, bytes]:
    """The event framed around its ``id:`` line: (what comes before it, what comes after).

    The script puts ``id: <prefix><seq>`` between the two once it has the seq, so the bytes
    stored and returned are exactly ``encode_data(data, event_id=..., event=event)``.
    """
    probe = encode_data(data, event_id="0", event=event)
    line = b"id: 0\n"
    at = 0 if probe.startswith(line) else probe.index(b"\n" + line) + 1
    return probe[:at], probe[at + len(line) :]


def _ssl_context(query: dict[str, list[str]]) -> ssl.SSLContext:
    """The TLS context of a ``rediss://`` URL: the server's certificate and host name are
    verified unless the URL says otherwise (``ssl_cert_reqs=none``, ``ssl_check_hostname=false``);
    ``ssl_ca_certs`` names the CA file (or directory), ``ssl_certfile``/``ssl_keyfile`` a client
    certificate."""

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    context = ssl.create_default_context()
    if (ca := one("ssl_ca_certs")) is not None:
        if ca.endswith("/"):
            context.load_verify_locations(capath=ca)
        else:
            context.load_verify_locations(cafile=ca)
    if (certfile := one("ssl_certfile")) is not None:
        context.load_cert_chain(certfile, one("ssl_keyfile"))
    check = one("ssl_check_hostname")
    if check is not None and check.lower() in {"0", "false", "no", "off"}:
        context.check_hostname = False
    reqs = (one("ssl_cert_reqs") or "required").lower()
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif reqs != "required":
        raise ValueError(f"ssl_cert_reqs must be 'required' or 'none', not {reqs!r}")
    return context


def redacted_url(url: str) -> str:
    """``url`` without its password (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=user + host).geturl()


class RedisSessionStore:
    """``SessionStore`` on Redis. ``url``: ``redis://[user[:password]@]host[:port][/db]`` or
    ``rediss://`` (TLS), user and password percent-encoded. ``prefix`` starts every key, so
    deployments can share one Redis. ``timeout_s`` bounds each call, retries included."""

    def __init__(
        self,
        url: str,
        *,
        max_events: int,
        max_bytes: int,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ttl_grace_s: float = DEFAULT_TTL_GRACE_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        client_name: str | None = "datapulse",
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("a replay log must hold at least one event and one byte")
        if _PREFIX.fullmatch(prefix) is None:
            raise ValueError(
                f"a Redis key prefix is 1-100 visible ASCII characters without braces: {prefix!r}"
            )
        if not timeout_s > 0 or ttl_grace_s < 0:
            raise ValueError("timeout_s must be positive and ttl_grace_s not negative")
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
            raise ValueError(
                f"a Redis URL is redis://host[:port][/db] or rediss://...: {redacted_url(url)}"
            )
        self.url = redacted_url(url)
        self.prefix = prefix
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.ttl_grace_s = ttl_grace_s
        self.channel = f"{prefix}:changes"
        self.notice_channel = f"{prefix}:notices"
        self._index = f"{prefix}:sessions"
        extra: dict[str, Any] = {}
        if parts.scheme == "rediss":
            extra["ssl_context"] = _ssl_context(parse_qs(parts.query))
        self._client: coredis.Redis[bytes] = coredis.Redis.from_url(
            url,
            decode_responses=False,
            decode_components=True,
            stream_timeout=timeout_s,
            connect_timeout=timeout_s,
            pool_timeout=timeout_s,
            max_connections=max_connections,
            client_name=client_name,
            # Commands are retried here (_call), per operation, within the one deadline.
            retry_policy=NoRetryPolicy(),
            **extra,
        )
        self._retry = ExponentialBackoffRetryPolicy(
            (RedisConnectionError,), retries=None, base_delay=0.02, max_delay=0.5
        )
        self._retry_once = ConstantRetryPolicy((RedisConnectionError,), retries=1, delay=0)
        script = self._client.register_script
        self._create = script(_CREATE)
        self._delete = script(_DELETE)
        self._touch = script(_TOUCH)
        self._mark_delivered = script(_MARK_DELIVERED)
        self._save_protocol = script(_SAVE_PROTOCOL)
        self._open_request_log = script(_OPEN_REQUEST_LOG)
        self._drop_log = script(_DROP_LOG)
        self._close_log = script(_CLOSE_LOG)
        self._append = script(_APPEND)
        self._read = script(_READ)
        self._last_seq = script(_LAST_SEQ)
        self._create_task = script(_CREATE_TASK)
        self._save_task = script(_SAVE_TASK)
        self._list_tasks = script(_LIST_TASKS)
        self._delete_task = script(_DELETE_TASK)
        # Tokens that make a retried script find its own earlier effect.
        self._nonce = secrets.token_hex(8)
        self._tokens: Iterator[int] = counter(1)
        self._stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"RedisSessionStore({self.url!r}, prefix={self.prefix!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> RedisSessionStore:
        if self._stack is not None:
            raise RuntimeError("this RedisSessionStore is already open")
        stack = AsyncExitStack()
        await stack.enter_async_context(self._client)
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (idempotent). Call it in the task that opened the store."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def ready(self) -> str | None:
        """None when Redis answers a PING within ``timeout_s``; otherwise why not (for the
        log: names the server, never the password)."""
        if self._stack is None:
            return "the Redis session store is not open"
        try:
            with trio.fail_after(self.timeout_s):
                # One retry: a connection Redis closed (a restart) is only found out by using it.
                await self._retry_once.call_with_retries(self._client.ping)
        except trio.TooSlowError:
            return f"Redis at {self.url} did not answer within {self.timeout_s:g}s"
        except (RedisError, OSError, TimeoutError) as exc:
            return f"Redis at {self.url} is unreachable ({type(exc).__name__}: {exc})"
        return None

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        """``request()`` (made anew for each attempt) under the deadline and the retry policy."""
        if self._stack is None:
            raise RuntimeError("open the RedisSessionStore first: async with store: ...")
        try:
            with trio.fail_after(self.timeout_s):
                return await self._retry.call_with_retries(request)
        except trio.TooSlowError as exc:
            raise StoreUnavailable(
                f"the session store did not answer within {self.timeout_s:g}s"
            ) from exc
        except (RedisError, TimeoutError) as exc:
            raise StoreUnavailable(f"the session store failed ({type(exc).__name__})") from exc

    async def _eval(
        self, script: Script[bytes], keys: list[str], args: list[Any], *, readonly: bool = False
    ) -> Any:
        """Run one of the Lua scripts (EVALSHA; loaded again after a Redis restart)."""
        return await self._call(lambda: script(keys=keys, args=args, readonly=readonly))

    def _token(self) -> str:
        return f"{self._nonce}.{next(self._tokens)}"

    # -- keys --------------------------------------------------------------------------------

    def _base(self, session_id: str) -> str:
        """What every key of the session starts with: the session id is its hash tag."""
        return f"{self.prefix}:{{{_tag(session_id)}}}:"

    def log_key(self, key: LogKey) -> str:
        """The Redis stream of a log (what the change channel names)."""
        return f"{self._base(key.session_id)}log:{key.stream}"

    def parse_change(self, message: bytes | str) -> Change:
        """A change channel message back as (log, seq)."""
        text = message.decode() if isinstance(message, bytes) else message
        stream_key, _, seq = text.rpartition(" ")
        start = f"{self.prefix}:{{"
        if not stream_key.startswith(start):
            raise ValueError(f"not a change of this store: {text!r}")
        tag, _, stream = stream_key[len(start) :].rpartition("}:log:")
        return Change(LogKey(_untag(tag), int(stream)), int(seq))

    def _owned_key(self, owner: str) -> str:
        """The zset of ``owner``'s sessions (id -> expiry): what the per-principal cap counts
        across instances. Its own slot, like the index (a digest: any principal id fits)."""
        digest = hashlib.blake2b(owner.encode(), digest_size=12).hexdigest()
        return f"{self.prefix}:{{o.{digest}}}:owned"

    async def count_owned(self, owner: str, now: float) -> int:
        """How many live (unexpired) sessions ``owner`` holds, on every instance."""
        key = self._owned_key(owner)
        await self._call(lambda: self._client.zremrangebyscore(key, -math.inf, now))
        return await self._call(lambda: self._client.zcard(key))

    def _task_base(self, principal: str) -> str:
        digest = hashlib.blake2b(principal.encode(), digest_size=12).hexdigest()
        return f"{self.prefix}:{{t.{digest}}}:"

    # -- records -----------------------------------------------------------------------------

    async def create(self, record: SessionRecord) -> None:
        base = self._base(record.id)
        ttl_ms = math.ceil((record.ttl_s + self.ttl_grace_s) * 1000)
        fields: list[str] = [
            "owner",
            record.owner,
            "kind",
            record.kind,
            "created_at",
            repr(record.created_at),
            "last_active",
            repr(record.last_active),
            "ttl_s",
            repr(record.ttl_s),
            "delivered_seq",
            str(record.delivered_seq),
        ]
        if record.name is not None:
            fields += ["name", record.name]
        token = self._token()
        created = await self._eval(self._create, [base + "rec"], [base, ttl_ms, token, *fields])
        if not created:
            raise SessionExists(record.id)
        await self._call(lambda: self._client.zadd(self._index, {record.id: record.expires_at}))
        owned = self._owned_key(record.owner)
        await self._call(lambda: self._client.zadd(owned, {record.id: record.expires_at}))

    async def get(self, session_id: str) -> SessionRecord | None:
        held = await self._call(lambda: self._client.hgetall(self._base(session_id) + "rec"))
        if not held:
            return None
        f = {name.decode(): value.decode() for name, value in held.items()}
        name = f.get("name")
        return SessionRecord(
            id=session_id,
            owner=f["owner"],
            kind=f["kind"],
            created_at=float(f["created_at"]),
            last_active=float(f["last_active"]),
            ttl_s=float(f["ttl_s"]),
            delivered_seq=int(f["delivered_seq"]),
            name=name,
        )

    async def delete(self, session_id: str) -> None:
        base = self._base(session_id)
        owner = await self._call(lambda: self._client.hget(base + "rec", "owner"))
        await self._eval(self._delete, [base + "rec"], [base])
        if owner is not None:
            owned = self._owned_key(owner.decode())
            await self._call(lambda: self._client.zrem(owned, [session_id]))
        await self._call(lambda: self._client.zrem(self._index, [session_id]))
        # Seq 0 on the change channel: the session ended (no append has seq 0), so the instances
        # holding it end it too (``live.streams.follow``).
        ended = f"{self.log_key(LogKey(session_id))} 0"
        await self._call(lambda: self._client.publish(self.channel, ended))

    async def touch(self, session_id: str, now: float) -> None:
        base = self._base(session_id)
        grace_ms = math.ceil(self.ttl_grace_s * 1000)
        held = await self._eval(self._touch, [base + "rec"], [base, repr(now), grace_ms])
        if held is None:
            return
        last_active, ttl_s = float(held[0]), float(held[1])
        owner = held[2].decode() if isinstance(held[2], bytes) else str(held[2])
        # XX: a session deleted meanwhile is not put back; GT: concurrent touches keep the latest.
        for index in (self._index, self._owned_key(owner)):
            await self._call(partial(self._refresh, index, session_id, last_active + ttl_s))

    def _refresh(self, index: str, session_id: str, expires_at: float) -> Awaitable[Any]:
        return self._client.zadd(
            index, {session_id: expires_at}, condition=PureToken.XX, comparison=PureToken.GT
        )

    async def expired(self, now: float) -> list[str]:
        due = await self._call(
            lambda: self._client.zrange(self._index, "-inf", repr(now), sortby=PureToken.BYSCORE)
        )
        return [session_id.decode() for session_id in due]

    async def count(self) -> int:
        return await self._call(lambda: self._client.zcard(self._index))

    async def mark_delivered(self, session_id: str, seq: int) -> None:
        key = self._base(session_id) + "rec"
        await self._eval(self._mark_delivered, [key], [seq])

    async def save_protocol(self, session_id: str, state: dict[str, Any]) -> None:
        base = self._base(session_id)
        data = orjson.dumps(state)
        await self._eval(self._save_protocol, [base + "rec", base + "proto"], [data])

    async def load_protocol(self, session_id: str) -> dict[str, Any] | None:
        data = await self._call(lambda: self._client.get(self._base(session_id) + "proto"))
        return None if data is None else orjson.loads(data)

    # -- logs --------------------------------------------------------------------------------

    async def open_request_log(self, session_id: str) -> LogKey:
        base = self._base(session_id)
        token = self._token()
        number = await self._eval(
            self._open_request_log,
            [base + "rec", base + "logs", base + "reqs"],
            [base, KEPT_REQUEST_LOGS, token],
        )
        if number < 0:
            raise UnknownLog(f"no session {session_id}")
        return LogKey(session_id, number)

    async def drop_log(self, key: LogKey) -> None:
        if key.stream == 0:
            return  # the session's own stream goes only with the session
        base = self._base(key.session_id)
        await self._eval(
            self._drop_log, [base + "logs", base + "reqs", self.log_key(key)], [key.stream]
        )

    async def append(self, key: LogKey, data: str, event: str | None = None) -> LoggedEvent:
        return await self._append_once(key, data, event, self._token())

    async def _append_once(
        self, key: LogKey, data: str, event: str | None, token: str
    ) -> LoggedEvent:
        """``append`` with its token given (a second call with the same token appends nothing
        if no other append came in between: what a retry after a lost reply does)."""
        head, tail = _split_wire(data, event)
        base = self._base(key.session_id)
        stream_key = self.log_key(key)
        seq = await self._eval(
            self._append,
            [base + "rec", base + "logs", stream_key],
            [
                key.stream,
                head,
                tail,
                key.id_prefix,
                self.max_events,
                self.max_bytes,
                token,
                self.channel,
                stream_key,
            ],
        )
        if seq is None:
            raise UnknownLog(f"no log {key.stream} for session {key.session_id}")
        return LoggedEvent(seq, head + f"id: {key.id_prefix}{seq}\n".encode() + tail)

    async def close_log(self, key: LogKey) -> None:
        if key.stream == 0:
            return
        logs = self._base(key.session_id) + "logs"
        await self._eval(self._close_log, [logs], [key.stream])

    async def last_seq(self, key: LogKey) -> int:
        base = self._base(key.session_id)
        seq = await self._eval(
            self._last_seq, [base + "rec", base + "logs"], [key.stream], readonly=True
        )
        if seq is None:
            raise UnknownLog(f"no log {key.stream} for session {key.session_id}")
        return int(seq)

    async def read(self, key: LogKey, after: int, limit: int | None = None) -> LogRead:
        base = self._base(key.session_id)
        args = [key.stream, after, "" if limit is None else limit, f"0-{max(after, 0) + 1}"]
        held = await self._eval(
            self._read, [base + "rec", base + "logs", self.log_key(key)], args, readonly=True
        )
        if held is None:
            raise UnknownLog(f"no log {key.stream} for session {key.session_id}")
        last, closed, oldest, entries = held
        if oldest:
            raise ReplayGone(after, int(oldest))
        events = [LoggedEvent(int(entry_id[2:]), fields[1]) for entry_id, fields in entries]
        return LogRead(events, int(last), bool(closed))

    @asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[Change]]:
        """Subscribe to the change channel: ``async with store.changes() as changes: async for
        change in changes: ...`` yields a ``Change`` per append, from every instance (Redis
        pub/sub: a subscriber that is disconnected misses what is published meanwhile, so a
        consumer re-reads its logs after a reconnect)."""
        async with self._client.pubsub(
            channels=[self.channel], ignore_subscribe_messages=True
        ) as pubsub:

            async def iterate() -> AsyncIterator[Change]:
                async for message in pubsub:
                    if message["type"] == "message":
                        data = message["data"]
                        assert isinstance(data, bytes | str)
                        yield self.parse_change(data)

            yield iterate()

    async def watch(self) -> AsyncIterator[tuple[LogKey, int]]:
        """``(key, seq)`` for every append by any instance sharing this Redis and prefix: the
        shared-store seam ``live.streams.follow`` consumes (``SessionManager.run`` looks for it).
        Iterate it with ``async for`` in one task, to its end or the task's cancellation: its
        subscription's tasks live in a nursery around the ``yield``."""
        async with self.changes() as changes:
            async for change in changes:
                yield change

    async def publish_notice(self, uri: str) -> int:
        """Announce ``uri`` updated to every instance (``notices``); how many instances heard."""
        told: int = await self._call(lambda: self._client.publish(self.notice_channel, uri))
        return told

    async def notices(self) -> AsyncIterator[str]:
        """The resource URIs any instance announced (``publish_notice``), as they come; like
        ``watch``, iterate it in one task (its subscription lives around the ``yield``)."""
        async with self._client.pubsub(
            channels=[self.notice_channel], ignore_subscribe_messages=True
        ) as pubsub:
            async for message in pubsub:
                if message["type"] == "message":
                    data = message["data"]
                    yield data.decode() if isinstance(data, bytes) else str(data)

    # -- round-trip state --------------------------------------------------------------------

    def _state_key(self, key: str) -> str:
        return f"{self.prefix}:state:{key}"

    async def put_state(self, key: str, data: dict[str, Any], ttl_s: float) -> None:
        redis_key = self._state_key(key)
        if ttl_s <= 0:  # expired at once: nothing is kept
            await self._call(lambda: self._client.delete([redis_key]))
            return
        value = orjson.dumps(data)
        px = max(1, math.ceil(ttl_s * 1000))
        await self._call(lambda: self._client.set(redis_key, value, px=px))

    async def take_state(self, key: str) -> dict[str, Any] | None:
        # GETDEL: each state is redeemed once. A retry after a lost reply finds nothing: the
        # client is told to start over, never handed the state twice.
        data = await self._call(lambda: self._client.getdel(self._state_key(key)))
        return None if data is None else orjson.loads(data)

    # -- tasks -------------------------------------------------------------------------------

    async def create_task(
        self, principal: str, task_id: str, data: dict[str, Any], ttl_s: float, limit: int
    ) -> None:
        base = self._task_base(principal)
        token = self._token()
        value = orjson.dumps(data)
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        code, held = await self._eval(
            self._create_task,
            [base + "tasks", base + "n", base + "task:" + task_id],
            [base + "task:", task_id, value, ttl_ms, limit, token],
        )
        if code == -1:
            raise TaskExists(task_id)
        if code == 0:
            raise TaskLimitReached(
                f"this principal holds {held} tasks, the most it may; wait for one to"
                " expire (each lives for its ttl from creation)"
            )

    async def load_task(self, principal: str, task_id: str) -> StoredTask | None:
        key = self._task_base(principal) + "task:" + task_id
        rev, data = await self._call(lambda: self._client.hmget(key, ["rev", "data"]))
        if rev is None or data is None:
            return None
        return StoredTask(int(rev), orjson.loads(data))

    async def save_task(
        self, principal: str, task_id: str, data: dict[str, Any], rev: int
    ) -> int | None:
        key = self._task_base(principal) + "task:" + task_id
        token = self._token()
        value = orjson.dumps(data)
        new_rev = await self._eval(self._save_task, [key], [rev, value, token])
        return None if new_rev is None else int(new_rev)

    async def list_tasks(self, principal: str) -> list[StoredTask]:
        base = self._task_base(principal)
        flat = await self._eval(self._list_tasks, [base + "tasks"], [base + "task:"])
        return [
            StoredTask(int(flat[i]), orjson.loads(flat[i + 1]))
            for i in range(0, len(flat), 2)
            if flat[i] is not None and flat[i + 1] is not None
        ]

    async def delete_task(self, principal: str, task_id: str) -> None:
        base = self._task_base(principal)
        await self._eval(self._delete_task, [base + "tasks", base + "task:" + task_id], [task_id])
