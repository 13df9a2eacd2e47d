-- Helpers shared by every Weir script. RedisStore prepends this file to each script
-- before loading it, because Redis scripts cannot `require` one another; a script names
-- the other libraries it needs (`<name>.lib.lua`) with `-- requires: <name>` lines, in
-- the order they must come.
--
-- Numbers: Lua 5.1 numbers are doubles, exact for integers up to 2^53. Integers are
-- written with '%d' (tostring would switch to exponent notation above 1e14) and times
-- are stored as the exact strings the caller passed in ARGV, never reformatted.
--
-- Cost: every function defined here is made anew each time any script runs, so this
-- file holds only what nearly every script uses.

local format, encode = string.format, cjson.encode

local function int(x)
  return format('%d', x)
end

local function num(s)
  if s == false or s == nil or s == '' then return 0 end
  return tonumber(s)
end

local function fail(msg)
  return redis.error_reply('weir: ' .. msg)
end
