-- ZimSend's error envelope for REST callers (SPEC.md §1), as an Envoy Lua filter.
--
-- It sits before the gRPC-JSON transcoder, so on the way in it sees the REST request as the
-- client sent it, and on the way out it sees the JSON the transcoder produced.
--
-- Requests: marks REST requests with `x-zimsend-rest` (local_reply_config keys its JSON
-- mappers on it, so native gRPC and gRPC-Web callers keep plain gRPC statuses), drops the
-- headers gRPC metadata cannot carry, and enforces the body size limit (the transcoder's own
-- `max_request_body_size` does not trip for a body it can parse as it streams). It runs on
-- every REST call, so it does no more than that: stream metadata, a buffered body of known
-- length, each cost Envoy measurable CPU per request (the 404's "No endpoint METHOD PATH" is
-- written by local_reply_config from the request headers instead).
--
-- Responses: a unary JSON answer gets the RateLimit headers the server sent as trailers.
-- Errors (JSON only, status >= 400):
-- * a google.rpc.Status from the server (`{"code":…,"message":…,"details":[…]}`) gets
--   `"success":false,"error":{"code":<zimsend-error-code header>,"message":<same message>}`
--   added in front; code, message and details stay byte for byte what the server sent;
-- * Envoy's own errors already carry the envelope (local_reply_config); their terse parser
--   messages are rewritten into ones that say what to fix, and an unknown enum name for
--   `zimsend.v1.Priority` becomes INVALID_PRIORITY.
-- Every error response also gets the `zimsend-error-code` header.

local REST_MARKER = "x-zimsend-rest"
local ERROR_CODE_HEADER = "zimsend-error-code"
local MAX_BODY_BYTES = __MAX_BODY_BYTES__
local HEADERS_TOO_LARGE = "Request URL and headers are larger than the server accepts; shorten "
  .. "them (long values belong in a JSON body)."
-- Full enum name -> accepted value names, filled in from the descriptor set.
local ENUM_VALUES = __ENUM_VALUES__

local GRPC_NAMES = {
  [1] = "CANCELLED", [2] = "UNKNOWN", [3] = "INVALID_REQUEST", [4] = "DEADLINE_EXCEEDED",
  [5] = "NOT_FOUND", [6] = "ALREADY_EXISTS", [7] = "PERMISSION_DENIED",
  [8] = "RATE_LIMIT_EXCEEDED", [9] = "FAILED_PRECONDITION", [10] = "ABORTED",
  [11] = "OUT_OF_RANGE", [12] = "UNIMPLEMENTED", [13] = "INTERNAL", [14] = "UNAVAILABLE",
  [15] = "DATA_LOSS", [16] = "UNAUTHENTICATED",
}

local TYPE_WORDS = {
  TYPE_STRING = "a string", TYPE_BOOL = "true or false", TYPE_INT32 = "an integer",
  TYPE_INT64 = "an integer", TYPE_UINT32 = "a non-negative integer",
  TYPE_UINT64 = "a non-negative integer", TYPE_SINT32 = "an integer",
  TYPE_SINT64 = "an integer", TYPE_FIXED32 = "a non-negative integer",
  TYPE_FIXED64 = "a non-negative integer", TYPE_DOUBLE = "a number", TYPE_FLOAT = "a number",
  TYPE_BYTES = "base64 text",
}

-- JSON text helpers ------------------------------------------------------------------------

local REPLACEMENT = "\239\191\189" -- U+FFFD

-- `s` with every byte that is not part of a well-formed UTF-8 sequence replaced by U+FFFD:
-- messages echo what the caller sent (the parser's window onto a body), and an error body
-- must stay valid JSON, which is UTF-8.
local function valid_utf8(s)
  if not s:find("[\128-\255]") then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = 0
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4 end
    local ok = len > 0 and i + len - 1 <= n
    if ok and len > 1 then
      for j = i + 1, i + len - 1 do
        local b = s:byte(j)
        if b < 0x80 or b > 0xBF then
          ok = false
          break
        end
      end
      local b2 = s:byte(i + 1)
      -- Overlong forms, UTF-16 surrogates and code points above U+10FFFF.
      if (c == 0xE0 and b2 < 0xA0) or (c == 0xED and b2 > 0x9F) or (c == 0xF0 and b2 < 0x90)
        or (c == 0xF4 and b2 > 0x8F) then ok = false end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = REPLACEMENT
      i = i + 1
    end
  end
  return table.concat(out)
end

local function json_string(s)
  s = valid_utf8(s)
  local escaped = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    if c == "\n" then return "\\n" end
    if c == "\r" then return "\\r" end
    if c == "\t" then return "\\t" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. escaped .. '"'
end

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 0x1000), 0x80 + math.floor(cp / 0x40) % 0x40,
      0x80 + cp % 0x40)
  end
  return string.char(0xF0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
    0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

-- The JSON string literal starting at `start` (on its opening quote): returns the literal as
-- written and the index just after it.
local function string_literal_at(text, start)
  local i = start + 1
  local n = #text
  while i <= n do
    local c = text:sub(i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      return text:sub(start, i), i + 1
    else
      i = i + 1
    end
  end
  return nil, nil
end

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n",
  r = "\r", t = "\t" }

local function decode_literal(literal)
  local body = literal:sub(2, -2)
  local out = {}
  local i = 1
  local n = #body
  while i <= n do
    local c = body:sub(i, i)
    if c == "\\" then
      local e = body:sub(i + 1, i + 1)
      if e == "u" then
        local cp = tonumber(body:sub(i + 2, i + 5), 16) or 63
        local consumed = 6
        if cp >= 0xD800 and cp <= 0xDBFF and body:sub(i + 6, i + 7) == "\\u" then
          local low = tonumber(body:sub(i + 8, i + 11), 16) or 0
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (low - 0xDC00)
          consumed = 12
        end
        out[#out + 1] = utf8_char(cp)
        i = i + consumed
      else
        out[#out + 1] = ESCAPES[e] or e
        i = i + 2
      end
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return table.concat(out)
end

-- The first `"key":"…"` string literal in `text` (as written), and where it starts.
local function find_string_field(text, key)
  local pattern = '"' .. key .. '":%s*"'
  local s, e = text:find(pattern)
  if not s then return nil end
  local literal = string_literal_at(text, e)
  return literal, s
end

-- Messages ---------------------------------------------------------------------------------

local function enum_hint(enum_name)
  local values = ENUM_VALUES[enum_name]
  if values then return " Accepted: " .. values .. "." end
  return ""
end

-- What to say about a 400 Envoy produced itself; returns code, message.
local function explain_bad_request(raw)
  -- Unknown enum name: `priority: invalid value "super" for type type.googleapis.com/zimsend.v1.Priority`
  local field, value, enum_name = raw:match("^([%w_%.%[%]]*): invalid value (.-) for type type%.googleapis%.com/([%w_%.]+)$")
  if enum_name then
    local code = "INVALID_REQUEST"
    if enum_name == "zimsend.v1.Priority" then code = "INVALID_PRIORITY" end
    return code, "Invalid value " .. value .. " for `" .. field .. "`." .. enum_hint(enum_name)
  end
  -- Wrong JSON type or unparsable query value: `limit: invalid value "abc" for type TYPE_INT32`
  local field2, value2, proto_type = raw:match("^([%w_%.%[%]]*): invalid value (.-) for type (TYPE_[%u%d]+)$")
  if proto_type then
    local expected = TYPE_WORDS[proto_type] or proto_type
    return "INVALID_REQUEST", "Invalid value " .. value2 .. " for `" .. field2 .. "`: expected "
      .. expected .. "."
  end
  -- Unknown query parameter: `Could not find field "foo" in the type "zimsend.v1.AuthTestRequest".`
  local param = raw:match('^Could not find field "([^"]*)" in the type')
  if param then
    return "INVALID_REQUEST", "Unknown query parameter `" .. param
      .. "`; see /v1/openapi.json for the parameters of this endpoint."
  end
  -- JSON syntax errors echo the input with a caret under the error: keep the first line and
  -- turn the caret into a position.
  local first, segment, caret = raw:match("^(.-)\n(.*)\n( *)%^%s*$")
  if first then
    first = first:gsub("%.$", "")
    local col = #caret + 1
    local first_byte, last_byte = math.max(1, col - 15), col + 10
    -- Whole characters only: move both ends off UTF-8 continuation bytes.
    while first_byte > 1 and (segment:byte(first_byte) or 0) >= 0x80
      and (segment:byte(first_byte) or 0) < 0xC0 do
      first_byte = first_byte + 1
    end
    while (segment:byte(last_byte + 1) or 0) >= 0x80 and (segment:byte(last_byte + 1) or 0) < 0xC0
      and last_byte < #segment do
      last_byte = last_byte + 1
    end
    local near = segment:sub(first_byte, last_byte)
    return "INVALID_REQUEST", "Request body is not valid JSON: " .. first .. ", near `" .. near
      .. "`."
  end
  if raw:find("Root element must be a message", 1, true) then
    return "INVALID_REQUEST", "Request body must be a JSON object."
  end
  local where, what = raw:match("^([%w_%.%[%]]*): (.*)$")
  if what then
    local prefix = "Invalid request body: "
    if where ~= "" then prefix = "Invalid value for `" .. where .. "`: " end
    return "INVALID_REQUEST", prefix .. what
  end
  return "INVALID_REQUEST", "Invalid request: " .. raw
end

local function envelope(code, grpc_code, message, details)
  local text = json_string(message)
  return '{"success":false,"error":{"code":' .. json_string(code) .. ',"message":' .. text
    .. '},"code":' .. grpc_code .. ',"message":' .. text .. ',"details":' .. details .. '}'
end

local function error_info(code)
  return '[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":' .. json_string(code)
    .. ',"domain":"zimsend.dev","metadata":{}}]'
end

-- Filter callbacks -------------------------------------------------------------------------

-- Whether a REST caller's header can go on to the server as gRPC metadata. grpc core refuses
-- the whole call (INTERNAL, a 500) for a name HTTP allows but gRPC does not (`a'b`, `x!`),
-- for a `-bin` value that is not base64, and for a `grpc-*` header it cannot parse
-- (`grpc-timeout: zz`, `grpc-encoding: foo`). None of these means anything to the REST API,
-- so they are dropped, as HTTP drops any header it does not know.
local function passes_as_metadata(name)
  if name:byte(1) == 58 then return true end -- ":", a pseudo-header
  return not (name:find("[^0-9a-z_.%-]") or name:find("^grpc%-") or name:find("%-bin$"))
end

-- HTML forms and most HTTP clients (httpx, requests) write a space in a query as `+`, which
-- Envoy's transcoder keeps as a plus sign (`search=big+world` found nothing). A `+` that starts
-- a value and is followed by a digit stays: it is an E.164 number typed as is (`to=+336…`).
local function spaces_from_plus(query)
  return (query:gsub("([^&]*)", function(pair)
    local name, value = pair:match("^([^=]*=)(.*)$")
    if not name then return (pair:gsub("%+", "%%20")) end
    local keep = value:match("^%+%d") and "+" or ""
    if keep ~= "" then value = value:sub(2) end
    return name .. keep .. value:gsub("%+", "%%20")
  end))
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type")
  if content_type and content_type:find("^application/grpc") then
    headers:remove(REST_MARKER)
    return
  end
  local unfit
  for name, _ in pairs(headers) do
    if not passes_as_metadata(name) then
      unfit = unfit or {}
      unfit[#unfit + 1] = name
    end
  end
  if unfit then
    for _, name in ipairs(unfit) do headers:remove(name) end
  end
  headers:replace(REST_MARKER, "1")
  local full_path = headers:get(":path") or ""
  local query_start = full_path:find("?", 1, true)
  if query_start and full_path:find("+", query_start, true) then
    full_path = full_path:sub(1, query_start) .. spaces_from_plus(full_path:sub(query_start + 1))
    headers:replace(":path", full_path)
  end
  if full_path:find("[?&]=") then
    -- Envoy's transcoder silently skips a parameter without a name (`?=x`), where every other
    -- unknown parameter is a 400: refuse it the same way.
    handle:respond({ [":status"] = "400", ["content-type"] = "application/json" },
      envelope("INVALID_REQUEST", 3, "A query parameter has no name (\"=value\"): remove it "
        .. "or name it; unknown parameters are refused.", error_info("INVALID_REQUEST")))
    return
  end

  local length = tonumber(headers:get("content-length") or "")
  if length then
    if length > MAX_BODY_BYTES then
      -- local_reply_config writes the envelope for the 413.
      handle:respond({ [":status"] = "413" }, "request body too large")
    end
    -- Otherwise the codec holds the body to its declared length: nothing to buffer.
    return
  end
  local method = headers:get(":method")
  if method ~= "GET" and method ~= "HEAD" and method ~= "DELETE" and method ~= "OPTIONS" then
    -- A body without a length (chunked): buffer it, so that one over the stream's buffer
    -- limit (the listener's per-connection limit, set to the body limit) is refused with 413.
    handle:body()
  end
end

-- The server sends the RateLimit headers of a call as gRPC trailing metadata, which travels
-- with the status for free (initial metadata of its own costs grpc a batch per call); HTTP/1.1
-- callers get no trailers, so a unary JSON answer (the transcoder gives it a Content-Length)
-- has them copied into its headers. A refusal and a streamed export carry them as initial
-- metadata already.
local RATELIMIT_HEADERS = { "ratelimit", "ratelimit-policy" }

local function ratelimit_into_headers(handle, headers)
  if headers:get("content-length") == nil then return end
  local content_type = headers:get("content-type") or ""
  if content_type:sub(1, 16) ~= "application/json" then return end
  -- The body first: waiting for the trailers alone would let the headers go on. Both yield:
  -- header handles taken before are dead afterwards.
  if handle:body() == nil then return end
  local trailers = handle:trailers()
  if trailers == nil then return end
  headers = handle:headers()
  for _, name in ipairs(RATELIMIT_HEADERS) do
    local value = trailers:get(name)
    if value then headers:replace(name, value) end
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local status = tonumber(headers:get(":status") or "") or 0
  if status < 400 then
    ratelimit_into_headers(handle, headers)
    return
  end
  local content_type = headers:get("content-type") or ""
  if content_type:sub(1, 16) ~= "application/json" then return end

  local server_code = headers:get(ERROR_CODE_HEADER)
  -- Set by the local rate limit for native gRPC callers; the JSON body says the same.
  headers:remove("grpc-status-details-bin")
  -- Buffering the body yields: header handles taken before it are dead afterwards.
  local buffer = handle:body()
  if buffer == nil then return end
  local text = buffer:getBytes(0, buffer:length())
  headers = handle:headers()

  if server_code == nil and text:find('"success":%s*false') then
    -- Envoy's own error, already an envelope (local_reply_config): refine the transcoder's
    -- terse messages and write it in the same key order as the server's errors.
    local literal = find_string_field(text, "message")
    local code = text:match('"error":%s*{%s*"code":%s*"([%w_]+)"')
    local grpc_code = tonumber(text:match('"code":%s*(%d+)') or "")
    if literal == nil or code == nil or grpc_code == nil then return end
    local message = decode_literal(literal)
    if status == 400 then
      code, message = explain_bad_request(message)
    end
    local details = error_info(code)
    local retry_after = tonumber(headers:get("retry-after") or "")
    if status == 429 and retry_after then
      details = details:sub(1, -2) .. ',{"@type":"type.googleapis.com/google.rpc.RetryInfo",'
        .. '"retry_delay":"' .. retry_after .. 's"}]'
    end
    local new = envelope(code, grpc_code, message, details)
    buffer:setBytes(new)
    headers:replace("content-length", tostring(#new))
    headers:replace(ERROR_CODE_HEADER, code)
    return
  end

  -- A google.rpc.Status from the server (or a bare gRPC status Envoy converted).
  local grpc_code = tonumber(text:match('^%s*{%s*"code":%s*(%d+)') or "")
  if grpc_code == nil then return end
  local literal = find_string_field(text, "message") or '""'
  local reason = text:match('"@type":%s*"type%.googleapis%.com/google%.rpc%.ErrorInfo",%s*"reason":%s*"([%w_]+)"')
  local code = server_code or reason or GRPC_NAMES[grpc_code] or "INTERNAL"
  if reason == nil and grpc_code == 8 and text:find("metadata size", 1, true) then
    -- grpc core refused the request's headers before any handler saw it: not a rate limit
    -- (a client would retry it forever), and its text lists internal header names and sizes.
    -- The server's limit is above Envoy's (common.proto `RequestLimit`), so this only happens
    -- when the two were configured apart.
    local new = envelope("INVALID_REQUEST", 3, HEADERS_TOO_LARGE, error_info("INVALID_REQUEST"))
    buffer:setBytes(new)
    headers:replace(":status", "431")
    headers:replace("content-length", tostring(#new))
    headers:replace(ERROR_CODE_HEADER, "INVALID_REQUEST")
    return
  end
  if reason == nil then
    -- No ErrorInfo (a bare gRPC status, not one of ours): give it the one SPEC promises.
    local new = envelope(code, grpc_code, decode_literal(literal), error_info(code))
    buffer:setBytes(new)
    headers:replace("content-length", tostring(#new))
    headers:replace(ERROR_CODE_HEADER, code)
    return
  end
  local rest = text:gsub("^%s*{", "", 1)
  local new = valid_utf8('{"success":false,"error":{"code":' .. json_string(code)
    .. ',"message":' .. literal .. '},' .. rest)
  buffer:setBytes(new)
  headers:replace("content-length", tostring(#new))
  headers:replace(ERROR_CODE_HEADER, code)
end
