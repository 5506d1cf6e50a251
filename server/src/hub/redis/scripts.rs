//! The Lua scripts the Redis broker runs: each is one atomic step on one room's keys, so no
//! node can see a half-done publish or claim.
//!
//! Keys of room R (hash-tagged on R): `tc:{R}:m` meta hash (`e` epoch, `o` top offset, `r` the
//! Redis run id at its last use, `l` lost-through offset, `b` bytes kept), `tc:{R}:s` stream
//! (entry id `<offset>-0`, fields `d` record, `b` bytes, `t` ms), `tc:{R}:p` presence hash
//! (name -> `node|conn|token hash`, conn `0` while the name waits out its grace), `tc:{R}:x`
//! presence expiry zset (name -> ms of Redis time), `tc:{R}:v` the number of the room's last
//! presence change. Channel `tc:{R}`, whose payloads are
//! `m<offset>:<epoch>:<node>:<conn>:<record>`, `j<number>,<count>:<name>`,
//! `l<number>,<count>:<name>` (count: the room's members after the change) and
//! `t<node>|<conn>|<name>` (a resume elsewhere took that connection's name).

use std::sync::LazyLock;

use redis::Script;

/// Opens a room's stream for a script: creates it with the caller's fresh epoch when Redis has
/// none (new room, or Redis lost it), and when Redis restarted since the room was last used and
/// may have lost its last writes, moves the offsets past anything that may have been handed
/// out (ids are never reused) and marks them lost (resumes from before are not `recovered`).
/// ARGV[1] run id, ARGV[2] `1` when Redis cannot lose acknowledged writes, ARGV[3] fresh epoch.
const OPEN: &str = r#"
local JUMP = 1048576
local function open_stream(meta, stream)
  local m = redis.call('HMGET', meta, 'e', 'o', 'r', 'l')
  local e, o, r, l = m[1], tonumber(m[2]) or 0, m[3], tonumber(m[4]) or 0
  if not e then
    redis.call('DEL', stream)
    e, o, l = ARGV[3], 0, 0
    redis.call('HSET', meta, 'e', e, 'o', 0, 'r', ARGV[1], 'l', 0, 'b', 0)
  elseif r ~= ARGV[1] then
    if ARGV[2] ~= '1' then
      o = o + JUMP
      l = o
      redis.call('HSET', meta, 'o', string.format('%d', o), 'l', string.format('%d', l))
    end
    redis.call('HSET', meta, 'r', ARGV[1])
  end
  return e, o, l
end
"#;

/// KEYS meta, stream. ARGV 1-3 as [`OPEN`], then record, bytes, ts, max messages, max bytes,
/// oldest ts kept (0: no age limit), stream ttl ms (0: none), channel, `node:conn`.
/// Returns `{offset, epoch}`.
const PUBLISH: &str = r#"
local meta, stream = KEYS[1], KEYS[2]
local record, size, ts = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local max_n, max_b, min_ts, ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local e, o = open_stream(meta, stream)
o = o + 1
local id = string.format('%d', o)
redis.call('HSET', meta, 'o', id)
redis.call('XADD', stream, id .. '-0', 'd', record, 'b', size, 't', ts)
local total = redis.call('HINCRBY', meta, 'b', size)
local n = redis.call('XLEN', stream)
if n > max_n or total > max_b or min_ts > 0 then
  -- Oldest first, only as many as can go (reading more on every publish costs Redis dearly).
  local drop, cut, start, done = 0, nil, '-', false
  while not done and drop < 64 do
    local over = n - drop - max_n
    local entries = redis.call('XRANGE', stream, start, '+', 'COUNT', math.max(1, math.min(over, 16)))
    if #entries == 0 then
      break
    end
    for _, entry in ipairs(entries) do
      local f = entry[2]
      if n - drop > 1 and (n - drop > max_n or total > max_b or tonumber(f[6]) < min_ts) then
        drop = drop + 1
        total = total - tonumber(f[4])
        cut = entry[1]
      else
        done = true
        break
      end
    end
    if cut then
      start = '(' .. cut
    end
  end
  if cut then
    local first = tonumber(string.match(cut, '^(%d+)')) + 1
    redis.call('XTRIM', stream, 'MINID', string.format('%d', first) .. '-0')
    redis.call('HSET', meta, 'b', total)
  end
end
if ttl > 0 then
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('PUBLISH', ARGV[11], 'm' .. id .. ':' .. e .. ':' .. ARGV[12] .. ':' .. record)
return {o, e}
"#;

/// KEYS meta, stream. ARGV 1-3 as [`OPEN`], then `since` or `before`, the range start as a
/// stream id (`(` for exclusive, `+` for the end), count. Returns `{epoch, last, lost_through,
/// entries}` read in one step.
const HISTORY: &str = r#"
local meta, stream = KEYS[1], KEYS[2]
local e, o, l = open_stream(meta, stream)
local count = tonumber(ARGV[6])
local entries = {}
if count > 0 then
  if ARGV[4] == 'since' then
    entries = redis.call('XRANGE', stream, ARGV[5], '+', 'COUNT', count)
  else
    entries = redis.call('XREVRANGE', stream, ARGV[5], '-', 'COUNT', count)
  end
end
return {e, o, l, entries}
"#;

/// Presence helpers: Redis time (so node clocks do not matter), the sweep of names whose time
/// ran out (each `left` is published once, by whoever removes it), and keeping the keys alive
/// as long as their longest entry.
const PRESENCE: &str = r#"
local p, x, v = KEYS[1], KEYS[2], KEYS[3]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Every announced change takes the room's next presence number, so a joiner can skip the
-- ones its member list already shows; `count` is the room's members after it.
local function announce(channel, kind, name, count)
  local n = redis.call('INCR', v)
  redis.call('PUBLISH', channel, kind .. n .. ',' .. count .. ':' .. name)
end
local function sweep(channel, cap, now)
  local gone = redis.call('ZRANGEBYSCORE', x, '-inf', now, 'LIMIT', 0, 1000)
  if #gone == 0 then
    return
  end
  for _, name in ipairs(gone) do
    redis.call('HDEL', p, name)
    redis.call('ZREM', x, name)
  end
  local left = redis.call('HLEN', p)
  if left < cap then
    for i, name in ipairs(gone) do
      announce(channel, 'l', name, left + #gone - i)
    end
  end
end
local function keep(ms)
  if redis.call('PTTL', p) < ms then
    redis.call('PEXPIRE', p, ms)
    redis.call('PEXPIRE', x, ms)
    redis.call('PEXPIRE', v, ms)
  end
end
local function holder(v)
  return string.match(v, '^([^|]*)|([^|]*)|(.*)$')
end
"#;

/// KEYS p, x, v. ARGV channel, cap, name, node, conn, presented token hash (`` none), new token
/// hash, ttl ms. Returns `{'new'}`, `{'resumed', replaced local conn or '0'}`, `{'already'}` or
/// `{'taken'}`.
const CLAIM: &str = r#"
local channel, cap, name, node, conn = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local given, fresh, ttl = ARGV[6], ARGV[7], tonumber(ARGV[8])
local now = now_ms()
sweep(channel, cap, now)
local mine = node .. '|' .. conn .. '|' .. fresh
local cur = redis.call('HGET', p, name)
if cur then
  local cnode, cconn, chash = holder(cur)
  if cnode == node and cconn == conn then
    return {'already'}
  end
  if given == '' or given ~= chash then
    return {'taken'}
  end
  redis.call('HSET', p, name, mine)
  redis.call('ZADD', x, now + ttl, name)
  keep(ttl + 1000)
  if cconn == '0' then
    return {'resumed', '0'}
  end
  if cnode ~= node then
    redis.call('PUBLISH', channel, 't' .. cnode .. '|' .. cconn .. '|' .. name)
    return {'resumed', '0'}
  end
  return {'resumed', cconn}
end
local count = redis.call('HLEN', p)
redis.call('HSET', p, name, mine)
redis.call('ZADD', x, now + ttl, name)
keep(ttl + 1000)
if count < cap then
  announce(channel, 'j', name, count + 1)
end
return {'new'}
"#;

/// KEYS p, x, v. ARGV channel, cap, name, node, conn. Frees the name if that connection holds it.
const RELEASE: &str = r#"
local channel, cap, name, node, conn = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local cur = redis.call('HGET', p, name)
if not cur then
  return 0
end
local cnode, cconn = holder(cur)
if cnode ~= node or cconn ~= conn then
  return 0
end
redis.call('HDEL', p, name)
redis.call('ZREM', x, name)
local count = redis.call('HLEN', p)
if count < cap then
  announce(channel, 'l', name, count)
end
return 1
"#;

/// KEYS p, x, v. ARGV name, node, conn, grace ms. The name waits for its token until the grace
/// ends (then a sweep sends `left`).
const DETACH: &str = r#"
local name, node, conn, grace = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local cur = redis.call('HGET', p, name)
if not cur then
  return 0
end
local cnode, cconn, chash = holder(cur)
if cnode ~= node or cconn ~= conn then
  return 0
end
redis.call('HSET', p, name, node .. '|0|' .. chash)
redis.call('ZADD', x, now_ms() + grace, name)
keep(grace + 1000)
return 1
"#;

/// KEYS p, x, v. ARGV node, ttl ms, channel, cap, then `name, conn, token hash` per local
/// member. Extends this node's members, puts back (and announces again) the ones that are gone
/// (this node stalled past the ttl and was swept, or Redis lost them), and returns the names
/// someone else holds now.
const REFRESH: &str = r#"
local node, ttl, channel, cap = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local lost = {}
for i = 5, #ARGV, 3 do
  local name, conn = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', p, name)
  if not cur then
    local count = redis.call('HLEN', p)
    redis.call('HSET', p, name, node .. '|' .. conn .. '|' .. ARGV[i + 2])
    redis.call('ZADD', x, now + ttl, name)
    if count < cap then
      announce(channel, 'j', name, count + 1)
    end
  else
    local cnode, cconn = holder(cur)
    if cnode == node and cconn == conn then
      redis.call('ZADD', x, now + ttl, name)
    else
      lost[#lost + 1] = name
    end
  end
end
keep(ttl + 1000)
return lost
"#;

/// KEYS p, x, v. ARGV channel, cap. Ends the names whose time ran out.
const SWEEP: &str = r#"
sweep(ARGV[1], tonumber(ARGV[2]), now_ms())
return 0
"#;

/// KEYS p, x, v. ARGV channel, cap, max. Returns `{count, presence number, names...}` (at most
/// `max` names).
const LIST: &str = r#"
local channel, cap, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
sweep(channel, cap, now_ms())
local count = redis.call('HLEN', p)
local names = {}
if max > 0 then
  if count <= max then
    names = redis.call('HKEYS', p)
  else
    names = redis.call('HRANDFIELD', p, max)
  end
end
table.insert(names, 1, tonumber(redis.call('GET', v)) or 0)
table.insert(names, 1, count)
return names
"#;

fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

pub static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[OPEN, PUBLISH]));
pub static HISTORY_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[OPEN, HISTORY]));
pub static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[PRESENCE, CLAIM]));
pub static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[PRESENCE, RELEASE]));
pub static DETACH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[PRESENCE, DETACH]));
pub static REFRESH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[PRESENCE, REFRESH]));
pub static SWEEP_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[PRESENCE, SWEEP]));
pub static LIST_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[PRESENCE, LIST]));

/// The keys of room `room`.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    pub meta: String,
    pub stream: String,
    pub presence: String,
    pub expiry: String,
    pub version: String,
    pub channel: String,
}

impl RoomKeys {
    pub fn new(room: &str) -> Self {
        Self {
            meta: format!("tc:{{{room}}}:m"),
            stream: format!("tc:{{{room}}}:s"),
            presence: format!("tc:{{{room}}}:p"),
            expiry: format!("tc:{{{room}}}:x"),
            version: format!("tc:{{{room}}}:v"),
            channel: channel(room),
        }
    }
}

/// The pub/sub channel of `room`.
pub fn channel(room: &str) -> String {
    format!("tc:{{{room}}}")
}

/// The room a channel name belongs to.
pub fn room_of(channel: &str) -> Option<&str> {
    channel.strip_prefix("tc:{")?.strip_suffix('}')
}
