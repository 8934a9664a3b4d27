// chatgate admin dashboard. Everything on screen comes from the /admin/ws push feed (one
// frame per second). The page never polls: it makes HTTP calls only when the operator
// presses an action button, plus one probe to explain why the feed refused a connection.

const TOKEN_KEY = 'chatgate.adminToken';
const STALE_MS = 3000;
// A feed silent this long is presumed dead (say, a half-open TCP connection): reconnect.
const DEAD_MS = 20000;
const BACKOFF_BASE_MS = 1000;
const BACKOFF_CAP_MS = 30000;
const HISTORY_MS = 5 * 60 * 1000;
const PALETTE = ['#2f7ed8', '#e8743b', '#19a979', '#945ecf', '#ed4a7b', '#13a4b4', '#bf9b00', '#7a8699'];

const $ = (selector, root = document) => root.querySelector(selector);

/** Builds an element; text is always set as text, never parsed as HTML. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

const num = (n) => Number(n ?? 0).toLocaleString('en-US');
const bytes = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB`
  : n >= 1024 ? `${(n / 1024).toFixed(1)} KB` : `${num(n)} B`);
const rate = (n) => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));
const ms = (n) => (n == null ? '–' : Number(n).toFixed(1));
const clock = (at) => new Date(at).toLocaleTimeString('en-GB', { hour12: false });

// ---------------------------------------------------------------- token

let token = '';

function loadToken() {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromUrl !== null) {
    // The fragment never reaches the server, but it would stay in the address bar, history
    // and bookmarks; keep the token in this tab's storage instead.
    history.replaceState(null, '', location.pathname + location.search);
    if (fromUrl.trim()) sessionStorage.setItem(TOKEN_KEY, fromUrl.trim());
  }
  token = sessionStorage.getItem(TOKEN_KEY) || '';
}

function showAuth(message) {
  $('#auth').hidden = false;
  const msg = $('#auth-msg');
  msg.textContent = message || '';
  msg.hidden = !message;
  $('#token-input').focus();
}

$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  token = $('#token-input').value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#token-input').value = '';
  $('#auth').hidden = true;
  reconnectNow();
});
$('#token-forget').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = '';
  disconnect();
  setState('idle');
  showAuth('');
});
$('#token-change').addEventListener('click', () => {
  if ($('#auth').hidden) showAuth('');
  else $('#auth').hidden = true;
});

// ---------------------------------------------------------------- connection

const conn = {
  ws: null,
  state: 'idle',
  opened: false,
  attempt: 0,
  retryAt: 0,
  timer: 0,
  lastFrameAt: 0,
  // Bumped by every connect, so a probe that returns late cannot act for an older attempt.
  generation: 0,
  // Whether a probe reached the server during this run of failures: if it did and the token
  // was fine, asking again would only tell us the same thing.
  probeAnswered: false,
};

function setState(state) {
  conn.state = state;
  renderState();
}

function renderState() {
  const node = $('#conn');
  const now = Date.now();
  const text = {
    idle: 'no token',
    connecting: 'connecting…',
    live: 'live',
    stale: `stale since ${clock(conn.lastFrameAt)}`,
    reconnecting: conn.retryAt > now
      ? `reconnecting in ${Math.ceil((conn.retryAt - now) / 1000)} s`
      : 'reconnecting…',
    auth: 'token refused',
  }[conn.state];
  if (node.textContent !== text) node.textContent = text;
  node.dataset.state = conn.state;
}

function feedUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/admin/ws?token=${encodeURIComponent(token)}`;
}

function connect() {
  clearTimeout(conn.timer);
  if (!token) {
    setState('idle');
    showAuth('');
    return;
  }
  const ws = new WebSocket(feedUrl());
  const generation = ++conn.generation;
  conn.ws = ws;
  conn.opened = false;
  // A new connection may be to a restarted server whose counters began again at zero.
  previous = null;
  setState('connecting');
  ws.onopen = () => { conn.opened = true; };
  ws.onmessage = (event) => {
    if (ws !== conn.ws) return;
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    if (frame.type !== 'metrics') return;
    conn.attempt = 0;
    conn.probeAnswered = false;
    conn.lastFrameAt = Date.now();
    if (conn.state !== 'live') setState('live');
    render(frame);
  };
  ws.onclose = () => {
    if (ws !== conn.ws) return;
    conn.ws = null;
    if (conn.opened) scheduleReconnect();
    else upgradeFailed(generation);
  };
}

function disconnect() {
  clearTimeout(conn.timer);
  const ws = conn.ws;
  conn.ws = null;
  if (ws) ws.close();
}

function reconnectNow() {
  disconnect();
  conn.attempt = 0;
  conn.probeAnswered = false;
  connect();
}

/** The browser hides why an upgrade failed; the same token on one HTTP call tells a refused
 *  token (401/403, with the server's message) from a server that is down or restarting. */
async function upgradeFailed(generation) {
  if (!conn.probeAnswered) {
    const probe = await api('GET', '/admin/metrics?recent=0');
    if (generation !== conn.generation) return; // the operator reconnected meanwhile
    if (probe.status === 401 || probe.status === 403) {
      setState('auth');
      const why = probe.status === 401
        ? 'The token was refused (bad, expired or signed with another secret)'
        : 'This token is not an admin token';
      showAuth(`${why}: ${probe.message}`);
      return;
    }
    conn.probeAnswered = probe.status !== 0;
  }
  scheduleReconnect();
}

function scheduleReconnect() {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** conn.attempt);
  // Jitter over the upper half, so dashboards do not all come back in the same instant
  // after a restart, while the wait still grows with every failure.
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  conn.attempt += 1;
  conn.retryAt = Date.now() + delay;
  setState('reconnecting');
  conn.timer = setTimeout(connect, delay);
}

// One local clock for everything time-based on screen; it never touches the network.
setInterval(() => {
  const silent = Date.now() - conn.lastFrameAt;
  if (conn.state === 'live' && silent > STALE_MS) setState('stale');
  if (conn.state === 'stale' && silent > DEAD_MS) {
    disconnect();
    scheduleReconnect();
  }
  renderState();
  tickCooldowns();
}, 500);

// ---------------------------------------------------------------- rendering

let windowName = 'minute';
let lastFrame = null;

for (const button of document.querySelectorAll('.seg button')) {
  button.addEventListener('click', () => {
    windowName = button.dataset.window;
    for (const b of document.querySelectorAll('.seg button')) {
      b.setAttribute('aria-pressed', String(b === button));
    }
    if (lastFrame) renderModels(lastFrame);
  });
}

function render(frame) {
  lastFrame = frame;
  record(frame);
  renderTotals(frame);
  renderModels(frame);
  renderCharts();
  renderRecent(frame);
  renderHealth(frame);
  renderInstances(frame);
  $('#generated').textContent = `updated ${clock(frame.generated_at_ms)}`;
}

// Chats refused at admission (`rate_limited`, `quota_exceeded`, …) never reach a model, so the
// windows leave them out, and `rejected` counts them since the server started: their rate is
// how much that count grew across the frames of the last minute.
const refusals = [];
function refusalRate(frame) {
  const t = frame.generated_at_ms;
  const n = Object.values(frame.rejected || {}).reduce((sum, v) => sum + v, 0);
  // A smaller count means a restarted server: start over from this frame.
  if (refusals.length && n < refusals[refusals.length - 1].n) refusals.length = 0;
  refusals.push({ t, n });
  while (refusals.length > 1 && refusals[0].t < t - 60000) refusals.shift();
  const first = refusals[0];
  return t > first.t ? (n - first.n) / ((t - first.t) / 1000) : 0;
}

function renderTotals(frame) {
  const minute = frame.totals.minute;
  $('#t-rps').textContent = rate(minute.requests / 60);
  $('#t-eps').textContent = rate(minute.errors / 60 + refusalRate(frame));
  $('#t-tps').textContent = rate((minute.tokens_in + minute.tokens_out) / 60);
  $('#t-conns').textContent = num(frame.hub.connections);
  $('#t-active').textContent = num(frame.sessions.active);
  $('#t-inactive').textContent = num(frame.sessions.inactive);
  renderReplies(frame.hub);
  const refused = Object.entries(frame.rejected || {});
  $('#rejected').textContent = refused.length
    ? `Refused at admission since start: ${refused.map(([c, n]) => `${c} ${num(n)}`).join(' · ')}`
    : '';
}

// Resumable replies, from `hub` (whole cluster): `replies_awaiting_resume` (running, socket
// gone), `replies_kept` (ended, still resumable), `replies_kept_bytes`. An older server sends
// none of them: the tile then shows "–".
function renderReplies(hub) {
  const awaiting = hub?.replies_awaiting_resume;
  $('#t-awaiting').textContent = typeof awaiting === 'number' ? num(awaiting) : '–';
  const detail = [
    typeof hub?.replies_kept === 'number' && `${num(hub.replies_kept)} ended kept`,
    typeof hub?.replies_kept_bytes === 'number' && `${bytes(hub.replies_kept_bytes)}`,
  ].filter(Boolean).join(' · ');
  $('#t-replies').textContent = detail;
}

const codesText = (codes) => Object.entries(codes || {}).map(([c, n]) => `${c} ${num(n)}`).join(' · ');

function renderModels(frame) {
  const rows = Object.entries(frame.models).map(([name, windows]) => {
    const s = windows[windowName];
    const errors = el('td', { 'data-label': 'Errors', 'data-col': 'errors' }, num(s.errors));
    const detail = [codesText(s.errors_by_code), s.cancelled ? `cancelled ${num(s.cancelled)}` : '']
      .filter(Boolean).join(' · ');
    if (detail) errors.append(el('span', { class: 'codes' }, detail));
    return el('tr', { 'data-model': name },
      el('td', { 'data-col': 'model' }, swatch(name), name),
      el('td', { 'data-label': 'Requests', 'data-col': 'requests' }, num(s.requests)),
      errors,
      el('td', { 'data-label': 'Avg ms' }, ms(s.avg_latency_ms)),
      el('td', { 'data-label': 'p95 ms' }, ms(s.p95_latency_ms)),
      el('td', { 'data-label': 'p99 ms' }, ms(s.p99_latency_ms)),
      el('td', { 'data-label': 'Tokens in' }, num(s.tokens_in)),
      el('td', { 'data-label': 'Tokens out' }, num(s.tokens_out)));
  });
  if (!rows.length) rows.push(el('tr', { class: 'empty' }, el('td', { colspan: 8 }, 'no requests yet')));
  $('#models tbody').replaceChildren(...rows);
}

function renderRecent(frame) {
  const rows = (frame.recent || []).map((r) => {
    const kind = r.outcome === 'ok' ? 'ok' : r.outcome === 'cancelled' ? 'cancelled' : 'error';
    return el('tr', {},
      el('td', {}, clock(r.at_ms)),
      el('td', { 'data-label': 'User' }, r.user),
      el('td', { 'data-label': 'Model' }, r.model),
      el('td', { 'data-label': 'Latency ms' }, num(r.latency_ms)),
      el('td', { 'data-label': 'Outcome', class: `outcome-${kind}` }, r.outcome),
      el('td', { 'data-label': 'Tokens' }, `${num(r.tokens_in)} → ${num(r.tokens_out)}`));
  });
  if (!rows.length) rows.push(el('tr', { class: 'empty' }, el('td', { colspan: 6 }, 'no requests yet')));
  $('#recent tbody').replaceChildren(...rows);
}

const bufferedSeen = [];

function renderHealth(frame) {
  const f = frame.flusher;
  bufferedSeen.push(f.buffered);
  if (bufferedSeen.length > 6) bufferedSeen.shift();
  // Growing = never went down over the last five frames and ended higher: the flusher is
  // not keeping up, usually because the database is slow or failing.
  const growing = bufferedSeen.length === 6 && f.buffered > bufferedSeen[0]
    && bufferedSeen.every((v, i) => i === 0 || v >= bufferedSeen[i - 1]);
  const flusherWhy = [
    f.dropped > 0 && `${num(f.dropped)} rows dropped`,
    f.last_error && 'database writes failing',
    growing && 'buffer growing',
  ].filter(Boolean);
  fillCard('#flusher', { ...f, last_error: f.last_error || 'none' }, flusherWhy);

  const h = frame.hub;
  const hubWhy = [
    h.frames_dropped > 0 && `${num(h.frames_dropped)} frames dropped`,
    h.subscribers_dropped > 0 && `${num(h.subscribers_dropped)} slow subscribers cut off`,
  ].filter(Boolean);
  fillCard('#hub', h, hubWhy);
}

// Each instance of the cluster (one without Redis): how recently it was heard from and its own
// connections, sessions and flusher. The totals above add them all up.
function renderInstances(frame) {
  const cluster = frame.cluster || {};
  const redis = cluster.redis === 'off' ? 'single instance (no Redis)' : `Redis ${cluster.redis ?? '?'}`;
  $('#cluster-state').textContent = `${redis} · ${num(cluster.instances)} live`;
  const rows = Object.entries(frame.instances || {}).map(([id, m]) => el('tr', { 'data-instance': id },
    el('td', {}, id),
    el('td', { 'data-label': 'Seen' }, `${(Number(m.seen_ms_ago ?? 0) / 1000).toFixed(1)} s ago`),
    el('td', { 'data-label': 'Connections' }, num(m.hub?.connections)),
    el('td', { 'data-label': 'Sessions' }, `${num(m.sessions?.active)} / ${num(m.sessions?.total)}`),
    el('td', { 'data-label': 'Buffered' }, num(m.flusher?.buffered)),
    el('td', { 'data-label': 'Dropped' }, num(m.flusher?.dropped)),
    el('td', { 'data-label': 'Last error' }, m.flusher?.last_error || 'none')));
  if (!rows.length) rows.push(el('tr', { class: 'empty' }, el('td', { colspan: 7 }, 'no instances')));
  $('#instances tbody').replaceChildren(...rows);
  const card = $('#instances-card');
  const why = cluster.redis === 'down'
    ? ['Redis is down: showing this instance only, limits and sessions are per instance'] : [];
  card.classList.toggle('warn', why.length > 0);
  const line = $('.why', card);
  line.hidden = why.length === 0;
  line.textContent = why.join(' · ');
}

function fillCard(selector, values, why) {
  const card = $(selector);
  for (const dd of card.querySelectorAll('dd')) {
    const v = values[dd.dataset.k];
    dd.textContent = typeof v === 'number' ? num(v) : String(v ?? '–');
  }
  card.classList.toggle('warn', why.length > 0);
  const line = $('.why', card);
  line.hidden = why.length === 0;
  line.textContent = why.join(' · ');
}

// ---------------------------------------------------------------- charts

// One point per frame: requests/s and p95 per model. Kept only in this page.
const points = [];
let previous = null; // { t, day: { model: requests } } from the frame before
const colours = new Map();

function colourOf(model) {
  if (!colours.has(model)) colours.set(model, PALETTE[colours.size % PALETTE.length]);
  return colours.get(model);
}

function swatch(model) {
  const dot = el('span', { class: 'dot', 'aria-hidden': 'true' });
  // Set through the CSSOM: the CSP refuses inline style attributes.
  dot.style.setProperty('--swatch', colourOf(model));
  return dot;
}

function record(frame) {
  const t = frame.generated_at_ms;
  const point = { t, rps: {}, p95: {} };
  // Requests/s from how much the day window grew since the last frame. The minute window
  // cannot give this: it also loses its oldest second every frame. The day window only loses
  // requests when an hour ends, so a frame across an hour boundary gets no rate (a gap beats
  // a false dip). Likewise when an instance joins or leaves the cluster: the totals jump by
  // its whole day at once.
  const members = Object.keys(frame.instances || {}).sort().join(' ');
  const comparable = previous && t > previous.t && previous.members === members
    && Math.floor(previous.t / 3600000) === Math.floor(t / 3600000);
  const day = {};
  for (const [model, windows] of Object.entries(frame.models)) {
    colourOf(model);
    day[model] = windows.day.requests;
    point.p95[model] = windows.minute.p95_latency_ms;
    if (comparable) {
      const grown = windows.day.requests - (previous.day[model] ?? 0);
      if (grown >= 0) point.rps[model] = grown / ((t - previous.t) / 1000);
    }
  }
  previous = { t, day, members };
  points.push(point);
  while (points.length && points[0].t < t - HISTORY_MS) points.shift();
}

function renderCharts() {
  drawChart($('#chart-rps'), 'rps');
  drawChart($('#chart-p95'), 'p95');
  const legend = [...colours.keys()].map((m) => el('span', {}, swatch(m), m));
  $('#legend').replaceChildren(...legend);
}

/** Rounds up to 1, 2 or 5 times a power of ten, so the axis labels are round numbers. */
function niceCeil(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= value);
}

function drawChart(canvas, key) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const style = getComputedStyle(document.documentElement);
  const muted = style.getPropertyValue('--muted').trim();
  const grid = style.getPropertyValue('--grid').trim();
  const end = points.length ? points[points.length - 1].t : Date.now();
  const start = end - HISTORY_MS;
  let max = 0;
  for (const p of points) for (const v of Object.values(p[key])) max = Math.max(max, v);
  const top = niceCeil(max);
  // Grid values are quarters of a round number: three significant digits show them exactly.
  const format = (v) => String(Number(v.toPrecision(3)));

  const pad = { left: 40, right: 8, top: 8, bottom: 18 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const x = (t) => pad.left + ((t - start) / HISTORY_MS) * plotW;
  const y = (v) => pad.top + plotH - (v / top) * plotH;

  ctx.font = '11px system-ui, sans-serif';
  ctx.lineWidth = 1;
  ctx.fillStyle = muted;
  ctx.strokeStyle = grid;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i += 1) {
    const v = (top / 4) * i;
    ctx.beginPath();
    ctx.moveTo(pad.left, Math.round(y(v)) + 0.5);
    ctx.lineTo(width - pad.right, Math.round(y(v)) + 0.5);
    ctx.stroke();
    ctx.fillText(format(v), pad.left - 6, y(v));
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'alphabetic';
  for (let m = 0; m <= 5; m += 1) {
    const label = m === 5 ? 'now' : `-${5 - m}m`;
    ctx.textAlign = m === 0 ? 'left' : m === 5 ? 'right' : 'center';
    ctx.fillText(label, x(start + m * 60000), height - 4);
  }

  ctx.lineWidth = 1.75;
  ctx.lineJoin = 'round';
  for (const model of colours.keys()) {
    ctx.strokeStyle = colourOf(model);
    ctx.beginPath();
    let last = null;
    for (const p of points) {
      const v = p[key][model];
      if (v === undefined) { last = null; continue; }
      // A missing frame (reconnect, a gap) breaks the line instead of drawing across it.
      if (last !== null && p.t - last > 3000) ctx.moveTo(x(p.t), y(v));
      else if (last === null) ctx.moveTo(x(p.t), y(v));
      else ctx.lineTo(x(p.t), y(v));
      last = p.t;
    }
    ctx.stroke();
  }
}

window.addEventListener('resize', () => { if (lastFrame) renderCharts(); });

// ---------------------------------------------------------------- admin actions

/** One admin HTTP call; never throws. `status` 0 means the server could not be reached. */
async function api(method, path, { body, ifMatch } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (ifMatch) headers['If-Match'] = ifMatch;
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    return { status: 0, message: 'the server cannot be reached' };
  }
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch { /* not JSON: keep the status */ }
  }
  return {
    status: response.status,
    data,
    etag: response.headers.get('ETag'),
    retryAfter: Math.max(1, Number(response.headers.get('Retry-After')) || 1),
    code: data?.error?.code,
    message: data?.error?.message || `HTTP ${response.status}`,
  };
}

/** Action sections: a result line each, and a cool-down after a 429. */
const cooldowns = new Map(); // section -> until (ms)

function show(section, kind, text) {
  const out = $('.result', section);
  out.dataset.kind = kind;
  out.textContent = text;
}

function setBusy(section, busy) {
  const cooling = (cooldowns.get(section) || 0) > Date.now();
  for (const b of section.querySelectorAll('button')) b.disabled = busy || cooling;
}

function tickCooldowns() {
  const now = Date.now();
  for (const [section, until] of cooldowns) {
    if (until > now) {
      show(section, 'warn', `Slow down: the admin rate limit was hit, retry in ${Math.ceil((until - now) / 1000)} s`);
    } else {
      cooldowns.delete(section);
      show(section, 'warn', 'You can retry now.');
      setBusy(section, false);
    }
  }
}

/** The message for any answer that is not the one the action hoped for. */
function explain(section, result, what) {
  if (result.status === 429) {
    cooldowns.set(section, Date.now() + result.retryAfter * 1000);
    setBusy(section, true);
    tickCooldowns();
  } else if (result.status === 0) {
    show(section, 'error', `${what} failed: ${result.message}.`);
  } else if (result.status === 401 || result.status === 403) {
    show(section, 'error', `${what} refused (${result.status}): ${result.message}`);
  } else {
    show(section, 'error', `${what} failed (${result.code || result.status}): ${result.message}`);
  }
}

async function act(section, work) {
  setBusy(section, true);
  try { await work(); } finally { setBusy(section, false); }
}

const sessionSection = $('#f-session').closest('.action');
$('#f-session').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('#session-id').value.trim();
  act(sessionSection, async () => {
    const r = await api('DELETE', `/admin/sessions/${encodeURIComponent(id)}`);
    if (r.status === 204 || r.status === 200) show(sessionSection, 'ok', `Session ${id} ended; its connection was closed.`);
    else if (r.status === 404) show(sessionSection, 'error', `Not ended: ${r.message}`);
    else explain(sessionSection, r, 'Ending the session');
  });
});

// The user being edited: its id and the ETag it was loaded with (null = not in the database).
const userSection = $('#f-user-load').closest('.action');
let editing = null;

function fillUser(user, etag) {
  editing = { id: user.id, etag: etag || `"${user.version}"` };
  $('#user-limit').value = user.daily_limit;
  $('#user-disabled').checked = Boolean(user.disabled);
  $('#user-version').textContent = `version ${user.version} · used today ${num(user.used_today)}`;
  $('#f-user-edit').hidden = false;
}

/** Loads the user; returns a sentence for the result line, or null after showing an error. */
async function loadUser(id) {
  const r = await api('GET', `/admin/users/${encodeURIComponent(id)}`);
  if (r.status === 200) {
    fillUser(r.data, r.etag);
    return `Loaded ${id} (version ${r.data.version}).`;
  }
  if (r.status === 404) {
    editing = { id, etag: null };
    $('#user-limit').value = '';
    $('#user-disabled').checked = false;
    $('#user-version').textContent = 'new user';
    $('#f-user-edit').hidden = false;
    return `No user ${id} yet: saving creates it.`;
  }
  explain(userSection, r, 'Loading the user');
  return null;
}

$('#user-id').addEventListener('input', () => {
  // The form below belongs to the loaded user; typing another id must not save over it.
  $('#f-user-edit').hidden = true;
  editing = null;
});

$('#f-user-load').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('#user-id').value.trim();
  act(userSection, async () => {
    const said = await loadUser(id);
    if (said) show(userSection, 'ok', said);
  });
});

$('#f-user-edit').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!editing) return;
  const { id, etag } = editing;
  const body = {
    daily_limit: Number($('#user-limit').value),
    disabled: $('#user-disabled').checked,
  };
  act(userSection, async () => {
    const r = await api('PUT', `/admin/users/${encodeURIComponent(id)}`, { body, ifMatch: etag });
    if ((r.status === 200 || r.status === 201) && r.data?.version === undefined) {
      show(userSection, 'ok', `Saved ${id}. ${await loadUser(id) || ''}`);
    } else if (r.status === 200 || r.status === 201) {
      fillUser(r.data, r.etag);
      const state = r.data.disabled ? 'disabled' : 'enabled';
      show(userSection, 'ok', `Saved ${id}: daily limit ${num(r.data.daily_limit)}, ${state} (version ${r.data.version}).`);
    } else if (r.status === 412) {
      const reloaded = await loadUser(id);
      if (reloaded === null) return;
      show(userSection, 'warn', `Conflict: ${id} was changed by someone else after you loaded it, so `
        + `your change was not saved. The current values are shown (version ${editing.etag.replaceAll('"', '')}); `
        + 'check them and save again.');
    } else {
      explain(userSection, r, 'Saving the user');
    }
  });
});

const originsSection = $('#f-origins').closest('.action');
const originList = () => $('#origins').value.split(/[\s,]+/).map((o) => o.trim()).filter(Boolean);

$('#origins-load').addEventListener('click', () => act(originsSection, async () => {
  const r = await api('GET', '/admin/origins');
  if (r.status !== 200) return explain(originsSection, r, 'Loading the origins');
  const origins = r.data?.origins || [];
  $('#origins').value = origins.join('\n');
  show(originsSection, 'ok', `Loaded ${origins.length} allowed origin(s).`);
}));

$('#f-origins').addEventListener('submit', (event) => {
  event.preventDefault();
  act(originsSection, async () => {
    const r = await api('PUT', '/admin/origins', { body: { origins: originList() } });
    if (r.status !== 200) return explain(originsSection, r, 'Saving the origins');
    const origins = r.data?.origins || originList();
    $('#origins').value = origins.join('\n');
    show(originsSection, 'ok', `Saved: ${origins.length} allowed origin(s), in effect for the next handshake.`);
  });
});

// ---------------------------------------------------------------- start

loadToken();
connect();
