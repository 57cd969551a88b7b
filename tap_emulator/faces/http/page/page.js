// The live page of tap-emulator: reads the control API (/emulator/v1) and its event stream. No library,
// no CDN: it must work on a bench with no network. The stream is read with fetch (not EventSource) so
// the bearer token of a non-loopback bind can be sent.
'use strict';
const API = '/emulator/v1';
const MAX_TRACE_ROWS = 200;
const $ = (id) => document.getElementById(id);

function headers() {
  const token = $('token').value || sessionStorage.getItem('tap-emulator-token') || '';
  const h = { 'Content-Type': 'application/json' };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function call(method, path, body) {
  const response = await fetch(API + path, {
    method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body),
  });
  const document_ = await response.json().catch(() => null);
  if (!response.ok) throw new Error((document_ && document_.message) || `HTTP ${response.status}`);
  return document_;
}

function text(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'object') return value.hex !== undefined ? value.hex : JSON.stringify(value);
  return String(value);
}

function row(cells, className) {
  const tr = document.createElement('tr');
  if (className) tr.className = className;
  for (const cell of cells) {
    const td = document.createElement('td');
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = text(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector('tbody');
  body.replaceChildren(...rows);
}

function showDevice(device) {
  $('serial').textContent = device.serial;
  const entries = [
    ['profile', device.profile], ['security', device.security_mode], ['version', device.emulator_version],
    ...Object.entries(device.identity || {}),
    ...Object.entries(device.endpoints || {}).filter(([, v]) => v).map(([k, v]) => [k, v]),
    ['faults', device.faults_active ? 'active' : 'none'],
  ];
  const dl = $('identity');
  dl.replaceChildren();
  for (const [key, value] of entries) {
    const dt = document.createElement('dt'); dt.textContent = key;
    const dd = document.createElement('dd'); dd.textContent = text(value);
    dl.append(dt, dd);
  }
  const b = device.backlog || {};
  $('backlog').textContent = `${b.pending} pending, ${b.rejected} rejected${b.last_error ? `, last error: ${b.last_error}` : ''}`;
}

function showSessions(sessions) {
  fill('sessions', sessions.map((s) => {
    const close = document.createElement('button');
    close.textContent = 'close';
    close.onclick = () => act(() => call('DELETE', `/sessions/${s.id}`), `session ${s.id} closed`);
    return row([s.id, s.face, s.peer, s.group, s.encrypted ? 'yes' : 'no', s.frames, close]);
  }));
}

function showFaults(faults) {
  $('faults').textContent = JSON.stringify(faults, null, 1);
}

async function showGroups() {
  const state = await call('GET', '/state');
  const groups = Object.values(state.objects).find((o) => o.alias === 'group');
  if (!groups) return;
  fill('groups', Object.entries(groups.instances).map(([id, g]) => row([id, g.name, g.alias, g['session-lifetime']])));
}

function addTrace(event) {
  const body = $('trace').querySelector('tbody');
  const when = new Date(event.time * 1000).toISOString().slice(11, 23);
  body.prepend(row([
    when, event.face, event.peer, event.session, event.method, event.path, event.status,
    `${event.request_bytes}/${event.response_bytes}`, event.latency_ms, event.fault,
  ], event.fault ? 'fault' : ''));
  while (body.rows.length > MAX_TRACE_ROWS) body.deleteRow(-1);
}

async function act(action, done) {
  try {
    await action();
    $('action-result').textContent = done;
    await refresh();
  } catch (error) {
    $('action-result').textContent = `failed: ${error.message}`;
  }
}

async function refresh() {
  const [device, sessions, faults] = await Promise.all([
    call('GET', '/device'), call('GET', '/sessions'), call('GET', '/faults'),
  ]);
  showDevice(device); showSessions(sessions); showFaults(faults);
  await showGroups();
}

async function stream() {
  // Server-sent events over fetch; reconnects after a second when the stream ends.
  for (;;) {
    try {
      const response = await fetch(`${API}/events`, { headers: headers() });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      $('connection').textContent = 'live'; $('connection').className = 'badge live';
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
          const kind = (block.match(/^event: (.*)$/m) || [])[1];
          const data = (block.match(/^data: (.*)$/m) || [])[1];
          if (!data) continue;
          const payload = JSON.parse(data);
          if (kind === 'trace') addTrace(payload);
          else if (kind === 'status') { showDevice(payload.device); showSessions(payload.sessions); showFaults(payload.faults); }
        }
      }
    } catch (error) {
      $('connection').textContent = `down: ${error.message}`;
    }
    $('connection').className = 'badge down';
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function faultPlan() {
  const rule = { face: $('fault-face').value };
  if ($('fault-path').value) rule.path = $('fault-path').value;
  if (Number($('fault-drop').value)) rule.drop = Number($('fault-drop').value);
  if (Number($('fault-delay').value)) rule.delay_ms = Number($('fault-delay').value);
  if ($('fault-status').value) rule.status = $('fault-status').value;
  return { seed: Number($('fault-seed').value) || 0, rules: [rule] };
}

$('token').value = sessionStorage.getItem('tap-emulator-token') || '';
$('token').onchange = () => { sessionStorage.setItem('tap-emulator-token', $('token').value); refresh(); };
$('reboot').onclick = () => act(() => call('POST', '/reboot'), 'rebooted');
$('reset').onclick = () => {
  if (window.confirm('Factory reset: back to the profile?')) act(() => call('POST', '/reset'), 'reset to the profile');
};
$('fault-form').onsubmit = (event) => { event.preventDefault(); act(() => call('PUT', '/faults', faultPlan()), 'fault plan applied'); };
$('fault-clear').onclick = () => act(() => call('DELETE', '/faults'), 'faults cleared');
$('fault-offline').onclick = () => act(() => call('POST', '/faults/offline', { seconds: 10 }), 'offline for 10 s');
call('GET', '/trace?limit=50').then((events) => events.forEach(addTrace)).catch(() => {});
refresh().catch((error) => { $('action-result').textContent = `failed: ${error.message}`; });
stream();
