// Fulcrum's dashboard: polls GET /api/v1/dashboard every second and renders it; drain,
// undrain and weight changes call the admin API with the bearer token the operator
// enters (kept in this tab's sessionStorage only, never in a cookie).
'use strict';
(() => {
  const KEY = 'fulcrum-admin-token';
  const PERIOD = 1000;
  let token = sessionStorage.getItem(KEY) || '';
  let prev = null; // {t, values: Map(key -> counter)}
  let rates = new Map();
  let lastOk = 0;
  const rows = new Map(); // pool \0 address -> row parts
  const pools = new Map(); // pool name -> {box, meta, tbody}
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  async function api(method, path, body) {
    const h = {};
    if (token) h.Authorization = 'Bearer ' + token;
    if (body !== undefined) h['Content-Type'] = 'application/json';
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 5000);
    try {
      const r = await fetch(path, {
        method, headers: h, cache: 'no-store', credentials: 'omit', signal: ctl.signal,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      let j = null;
      try { j = await r.json(); } catch (_) { j = null; }
      return { status: r.status, body: j };
    } finally {
      clearTimeout(timer);
    }
  }

  function message(text, ok) {
    const m = $('message');
    m.textContent = text;
    m.className = ok ? 'ok' : '';
    m.hidden = false;
  }

  const fmt = (x) => (x === undefined ? '–' : x.toFixed(1));
  const pct = (x) => (x === null || x === undefined ? '–' : (x * 100).toFixed(1) + '%');

  // Per-second rates of every counter, from the previous sample at least 0.5 s older.
  function updateRates(values, t) {
    if (prev && t - prev.t < 500) return;
    const next = new Map();
    if (prev) {
      const dt = (t - prev.t) / 1000;
      for (const [k, v] of values) {
        const p = prev.values.get(k);
        if (p !== undefined && v >= p) next.set(k, (v - p) / dt);
      }
    }
    rates = next;
    prev = { t, values };
  }

  function renderServices(services) {
    const tbody = $('services').tBodies[0];
    tbody.replaceChildren();
    for (const s of services) {
      const k = 's\0' + s.name + '\0';
      const tr = el('tr');
      tr.dataset.service = s.name;
      for (const v of [s.name, s.protocol, s.forward, s.listen, s.pool, String(s.active_connections),
        fmt(rates.get(k + 'conn')), fmt(rates.get(k + 'in')), fmt(rates.get(k + 'out')),
        fmt(rates.get(k + 'refused'))]) {
        tr.append(el('td', v));
      }
      tbody.append(tr);
    }
  }

  function poolBox(p) {
    let box = pools.get(p.name);
    if (box) return box;
    const section = el('div', undefined, 'pool');
    section.dataset.pool = p.name;
    const h = el('h3', p.name);
    const meta = el('span', '', 'meta');
    h.append(meta);
    const table = el('table');
    const head = el('tr');
    for (const c of ['backend', 'state', 'weight', 'active', 'req/s', 'err/s', 'table share', 'actions']) {
      head.append(el('th', c));
    }
    table.append(el('thead'), el('tbody'));
    table.tHead.append(head);
    section.append(h, table);
    $('pools').append(section);
    box = { section, meta, tbody: table.tBodies[0] };
    pools.set(p.name, box);
    return box;
  }

  function backendRow(box, pool, b) {
    const key = pool + '\0' + b.address;
    let r = rows.get(key);
    if (r) return r;
    const tr = el('tr');
    tr.dataset.pool = pool;
    tr.dataset.backend = b.address;
    const cells = {};
    for (const c of ['address', 'state', 'weight', 'active', 'req', 'err', 'share']) {
      cells[c] = el('td', '', c);
      tr.append(cells[c]);
    }
    cells.address.textContent = b.address;
    const actions = el('td', undefined, 'actions');
    const drain = el('button', 'Drain');
    drain.type = 'button';
    drain.dataset.action = 'drain';
    const undrain = el('button', 'Undrain');
    undrain.type = 'button';
    undrain.dataset.action = 'undrain';
    const weight = el('input');
    weight.type = 'number';
    weight.min = '0';
    weight.max = '65535';
    weight.setAttribute('aria-label', 'new weight of ' + b.address);
    const set = el('button', 'Set weight');
    set.type = 'button';
    set.dataset.action = 'weight';
    actions.append(drain, ' ', undrain, ' ', weight, ' ', set);
    tr.append(actions);
    for (const btn of [drain, undrain, set]) {
      btn.addEventListener('click', () => act(pool, b.address, btn.dataset.action, weight));
    }
    box.tbody.append(tr);
    r = { tr, cells, key };
    rows.set(key, r);
    return r;
  }

  function renderPools(list) {
    const seen = new Set();
    const seenPools = new Set();
    for (const p of list) {
      seenPools.add(p.name);
      const box = poolBox(p);
      let meta = p.scheduler + ' · ' + p.changes + ' change' + (p.changes === 1 ? '' : 's');
      if (p.moved_ratio !== null) meta += ' · last change moved ' + pct(p.moved_ratio) + ' of the table';
      box.meta.textContent = meta;
      for (const b of p.backends) {
        const r = backendRow(box, p.name, b);
        seen.add(r.key);
        const k = 'b\0' + r.key + '\0';
        r.tr.className = 'state-' + b.state;
        r.tr.dataset.state = b.state;
        r.cells.state.textContent = b.state;
        r.cells.weight.textContent = String(b.weight);
        r.cells.active.textContent = String(b.active_connections);
        r.cells.req.textContent = fmt(rates.get(k + 'req'));
        r.cells.err.textContent = fmt(rates.get(k + 'err'));
        r.cells.share.textContent = pct(b.table_share);
      }
    }
    for (const [key, r] of rows) {
      if (!seen.has(key)) { r.tr.remove(); rows.delete(key); }
    }
    for (const [name, box] of pools) {
      if (!seenPools.has(name)) { box.section.remove(); pools.delete(name); }
    }
  }

  function renderXdp(list) {
    const table = $('xdp');
    table.hidden = list.length === 0;
    $('xdp-off').hidden = list.length !== 0;
    const tbody = table.tBodies[0];
    tbody.replaceChildren();
    for (const x of list) {
      const tr = el('tr');
      for (const v of [x.service, x.action, String(x.packets), fmt(rates.get('x\0' + x.service + '\0' + x.action))]) {
        tr.append(el('td', v));
      }
      tbody.append(tr);
    }
  }

  function render(d, t) {
    const values = new Map();
    for (const s of d.services) {
      const k = 's\0' + s.name + '\0';
      values.set(k + 'conn', s.total_connections);
      values.set(k + 'in', s.bytes_in);
      values.set(k + 'out', s.bytes_out);
      values.set(k + 'refused', s.refused);
    }
    for (const p of d.pools) {
      for (const b of p.backends) {
        const k = 'b\0' + p.name + '\0' + b.address + '\0';
        values.set(k + 'req', b.requests);
        values.set(k + 'err', b.errors);
      }
    }
    for (const x of d.xdp) values.set('x\0' + x.service + '\0' + x.action, x.packets);
    updateRates(values, t);
    renderServices(d.services);
    renderPools(d.pools);
    renderXdp(d.xdp);
  }

  // A stale page (the API cannot be read) greys out what it last showed.
  function status(text, stale) {
    const s = $('status');
    s.textContent = text;
    s.className = stale ? 'stale' : '';
    document.body.classList.toggle('stale', stale);
  }

  async function refresh() {
    const t = performance.now();
    try {
      const r = await api('GET', '/api/v1/dashboard');
      if (r.status === 200 && r.body) {
        render(r.body, t);
        lastOk = Date.now();
        status('live · updated ' + new Date(lastOk).toLocaleTimeString(), false);
        document.body.dataset.updated = String(lastOk);
      } else if (r.status === 401) {
        status('this instance protects reads: enter the admin token', true);
      } else {
        status('the API answered ' + r.status + ': ' + ((r.body && r.body.error) || ''), true);
      }
    } catch (e) {
      const age = lastOk ? ' (last update ' + Math.round((Date.now() - lastOk) / 1000) + ' s ago)' : '';
      status('the admin API cannot be reached' + age, true);
    }
  }

  async function loop() {
    const t = performance.now();
    await refresh();
    setTimeout(loop, Math.max(0, PERIOD - (performance.now() - t)));
  }

  async function act(pool, address, action, weightInput) {
    const base = '/api/v1/pools/' + encodeURIComponent(pool) + '/backends/' + encodeURIComponent(address);
    let r;
    try {
      if (action === 'drain') {
        r = await api('POST', base + '/drain');
      } else if (action === 'undrain') {
        r = await api('PUT', base, {});
      } else {
        const w = Number(weightInput.value);
        if (weightInput.value === '' || !Number.isInteger(w) || w < 0 || w > 65535) {
          message('weight must be an integer 0..65535', false);
          return;
        }
        r = await api('PUT', base, { weight: w });
      }
    } catch (e) {
      message(action + ' ' + address + ': the admin API cannot be reached', false);
      return;
    }
    if (r.status === 200) {
      message(action + ' ' + address + ' (pool ' + pool + '): done', true);
    } else {
      message(action + ' ' + address + ' (pool ' + pool + '): ' + r.status + ' ' +
        ((r.body && r.body.error) || ''), false);
    }
    await refresh();
  }

  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('token').value.trim();
    $('token').value = '';
    if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
    message(token ? 'token set for this tab' : 'token cleared', true);
    refresh();
  });
  $('token-forget').addEventListener('click', () => {
    token = '';
    sessionStorage.removeItem(KEY);
    message('token cleared', true);
  });
  loop();
})();
