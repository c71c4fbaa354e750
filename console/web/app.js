// Berth's web console: a single page over the public /v1 API. Routes live in
// the URL's hash; the token lives in sessionStorage, so it is gone when the
// tab closes.
import { API, Collection, enc, key, sleep } from './api.js';
import { h, add, replace, table, toast, act, bytes, cpu, age, pill, words } from './ui.js';
import { metricsCharts } from './charts.js';
import { openTerminal } from './terminal.js';
import { serviceFromFields } from './forms.js';

const TOKEN_KEY = 'berth-token';

// app is the page's one mutable state: the signed-in client, the live
// collections and the view on screen.
const app = { api: null, cols: {}, view: null, pending: false };

function main() {
  document.getElementById('signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', () => route(true));
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else showSignIn();
}

function showSignIn(error) {
  document.getElementById('top').hidden = true;
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, 'aria-describedby': 'token-help' });
  const err = h('p', { class: 'error-box', role: 'alert', id: 'signin-error' }, error || '');
  const form = h('form', { class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    replace(err);
    const ok = await start(input.value.trim());
    if (!ok) input.focus();
  } },
  h('h1', {}, 'Sign in to Berth'),
  h('label', { for: 'token' }, 'API token'),
  input,
  h('p', { id: 'token-help', class: 'muted small' }, 'A token from `berth token create`, or the admin token file of `berth server`.'),
  err,
  h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  replace(document.getElementById('main'), h('div', { class: 'signin' }, h('section', { class: 'card' }, form)));
  input.focus();
}

async function start(token) {
  if (!token) {
    showSignIn('Enter a token.');
    return false;
  }
  const api = new API(token);
  try {
    await api.signIn();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(e.status === 401 ? `Token refused: ${e.message}` : `Cannot sign in: ${e.message}`);
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  app.api = api;
  document.getElementById('top').hidden = false;
  document.getElementById('who').textContent = api.admin ? 'admin (all tenants)' : `tenant ${api.tenant}`;
  for (const a of document.querySelectorAll('[data-admin]')) a.hidden = !api.admin;
  const kinds = ['services', 'instances', 'events'].concat(api.admin ? ['nodes', 'tenants'] : []);
  for (const k of kinds) {
    const c = new Collection(api, api.collection(k));
    c.onChange(schedule);
    app.cols[k] = c;
    c.run();
  }
  if (!location.hash || location.hash === '#') location.hash = '#/overview';
  route(false);
  return true;
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  for (const c of Object.values(app.cols)) c.stop();
  app.cols = {};
  if (app.view && app.view.dispose) app.view.dispose();
  app.view = null;
  app.api = null;
  showSignIn();
}

// schedule re-renders the live parts of the view once per frame however
// many watch events arrive.
function schedule() {
  if (app.pending) return;
  app.pending = true;
  requestAnimationFrame(() => {
    app.pending = false;
    if (app.view && app.view.update) app.view.update();
  });
}

function items(kind) { return app.cols[kind] ? app.cols[kind].values() : []; }

function route(moved) {
  if (!app.api) return;
  if (app.view && app.view.dispose) app.view.dispose();
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const el = document.getElementById('main');
  el.replaceChildren();
  const views = {
    overview: overviewView, services: parts.length >= 3 ? serviceView : servicesView,
    instances: parts.length >= 3 ? instanceView : instancesView, nodes: parts.length >= 2 ? nodeView : nodesView,
  };
  const v = views[parts[0]] || overviewView;
  app.view = v(el, parts[1], parts[2]) || {};
  if (app.view.update) app.view.update();
  for (const a of document.querySelectorAll('header nav a')) {
    if (a.getAttribute('href') === `#/${parts[0]}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (moved) el.focus();
}

function collectionErrors() {
  const errs = Object.entries(app.cols).filter(([, c]) => c.error).map(([k, c]) => `${k}: ${c.error.message}`);
  return errs.length ? h('p', { class: 'error-box', role: 'alert' }, `Live updates interrupted (retrying) — ${errs.join('; ')}`) : null;
}

// ---- derived facts ---------------------------------------------------------

function instancesOf(svc) {
  return items('instances').filter((i) => i.tenant === svc.tenant && i.spec.service === svc.name);
}

function failing(i) {
  const s = i.status || {};
  return s.phase === 'failed' || s.phase === 'lost' || s.crashLoop || s.health === 'unhealthy' ||
    (s.phase === 'exited' && i.spec.desired !== 'stopped');
}

function phasePill(i) {
  const s = i.status || {};
  const p = s.crashLoop ? 'crash-loop' : (s.phase || 'pending');
  const cls = failing(i) ? 'bad' : p === 'running' ? 'ok' : 'warn';
  return pill(p + (s.health ? ` · ${s.health}` : ''), cls);
}

function allocation(node) {
  const r = { cpu: 0, memory: 0 };
  for (const i of items('instances')) {
    if (i.spec.node !== node) continue;
    const res = i.spec.template.resources || {};
    r.cpu += res.cpu || 0;
    r.memory += res.memory || 0;
  }
  return r;
}

function svcLink(tenant, name) { return h('a', { href: `#/services/${enc(tenant)}/${enc(name)}`, 'data-k': `svc:${tenant}/${name}` }, app.api.admin ? `${tenant}/${name}` : name); }
function instLink(i) { return h('a', { href: `#/instances/${enc(i.tenant)}/${enc(i.name)}`, 'data-k': `inst:${key(i)}` }, app.api.admin ? `${i.tenant}/${i.name}` : i.name); }

// ---- overview --------------------------------------------------------------

function overviewView(el) {
  const errs = h('div');
  const nodesBox = h('div');
  const svcBox = h('div');
  const evBox = h('div');
  add(el, h('h1', {}, 'Overview'), errs,
    app.api.admin ? h('section', { class: 'card', 'aria-labelledby': 'ov-nodes' }, h('h2', { id: 'ov-nodes' }, 'Nodes'), nodesBox) : null,
    h('section', { class: 'card', 'aria-labelledby': 'ov-svcs' }, h('h2', { id: 'ov-svcs' }, 'Services'), svcBox),
    h('section', { class: 'card', 'aria-labelledby': 'ov-events' }, h('h2', { id: 'ov-events' }, 'Recent events'), evBox));
  const update = () => {
    replace(errs, collectionErrors());
    if (app.api.admin) replace(nodesBox, nodesTable(false));
    const svcs = items('services').sort(byKey);
    replace(svcBox, table(['Service', 'Image', 'Desired', 'Ready', 'Failing', 'Rollout'], svcs.map((s) => {
      const bad = instancesOf(s).filter(failing).length;
      return h('tr', {}, h('td', {}, svcLink(s.tenant, s.name)), h('td', { class: 'wrap' }, s.spec.template.image),
        h('td', {}, s.spec.replicas), h('td', {}, (s.status && s.status.ready) || 0),
        h('td', {}, bad ? pill(String(bad), 'bad') : '0'), h('td', {}, (s.status && s.status.rollout) || '—'));
    }), 'No services yet.'));
    const evs = items('events').sort((a, b) => Date.parse(b.time) - Date.parse(a.time)).slice(0, 25);
    const now = Date.now();
    replace(evBox, table(['Age', 'Object', 'Type', 'Reason', 'Message'], evs.map((e) => h('tr', {},
      h('td', {}, age(e.time, now)), h('td', {}, app.api.admin ? `${e.tenant}/${e.object}` : e.object),
      h('td', {}, pill(e.type, e.type === 'Warning' ? 'bad' : 'ok')), h('td', {}, e.reason), h('td', { class: 'wrap' }, e.message))), 'No events.'));
  };
  // Heartbeat ages move with the clock, not only with events.
  const tick = setInterval(() => { if (app.api.admin) replace(nodesBox, nodesTable(false)); }, 1000);
  return { update, dispose: () => clearInterval(tick) };
}

function byKey(a, b) { return key(a).localeCompare(key(b)); }

// heartbeat tells how long ago a node was last heard from. The store
// records a heartbeat's time only at registration (later ones renew the
// node's lease, to spare the store a write per beat), so a live node —
// its lease held — is known to have beaten within the lease's 1.5 TTL.
function heartbeat(n, now) {
  const st = n.status || {};
  const live = st.phase && st.phase !== 'not-ready';
  const since = Date.parse(st.lastHeartbeat || 0);
  if (live && st.leaseTTL && now - since > st.leaseTTL * 1500) return `< ${st.leaseTTL * 1.5}s ago`;
  return `${age(st.lastHeartbeat, now)} ago`;
}

function nodesTable(actions) {
  const now = Date.now();
  const nodes = items('nodes').sort(byKey);
  const headers = ['Node', 'Phase', 'CPU (alloc / capacity)', 'Memory (alloc / capacity)', 'Heartbeat'];
  if (actions) headers.push('Actions');
  return table(headers, nodes.map((n) => {
    const a = allocation(n.name);
    const cap = n.spec.capacity || {};
    const phase = (n.status && n.status.phase) || 'unknown';
    const row = h('tr', {},
      h('td', {}, h('a', { href: `#/nodes/${enc(n.name)}`, 'data-k': `node:${n.name}` }, n.name)),
      h('td', {}, pill(phase + (n.spec.unschedulable ? ' · unschedulable' : ''), phase === 'ready' ? 'ok' : phase === 'not-ready' ? 'bad' : 'warn')),
      h('td', {}, `${cpu(a.cpu)} / ${cpu(cap.cpu)}`), h('td', {}, `${bytes(a.memory)} / ${bytes(cap.memory)}`),
      h('td', {}, heartbeat(n, now)));
    if (actions) {
      const b = h('button', { type: 'button', class: 'danger', disabled: n.spec.drain, 'data-k': `drain:${n.name}`,
        onclick: () => act(b, `Drain ${n.name}`, () => app.api.post(`/v1/nodes/${enc(n.name)}/drain`),
          { confirm: `Drain node ${n.name}? Its instances move to other nodes and it takes no new ones.`, okLabel: 'Drain' }) },
      n.spec.drain ? 'Draining' : 'Drain');
      row.append(h('td', {}, b));
    }
    return row;
  }), 'No nodes have registered.');
}

// ---- services --------------------------------------------------------------

function servicesView(el) {
  const errs = h('div');
  const list = h('div');
  add(el, h('h1', {}, 'Services'), errs,
    h('section', { class: 'card' }, h('details', { open: items('services').length === 0 },
      h('summary', {}, h('strong', {}, 'Create a service')), createForm())),
    h('section', { class: 'card', 'aria-label': 'Services' }, list));
  return { update: () => {
    replace(errs, collectionErrors());
    replace(list, table(['Service', 'Image', 'Replicas', 'Ready', 'Updated', 'Rollout'], items('services').sort(byKey).map((s) => h('tr', {},
      h('td', {}, svcLink(s.tenant, s.name)), h('td', { class: 'wrap' }, s.spec.template.image), h('td', {}, s.spec.replicas),
      h('td', {}, (s.status && s.status.ready) || 0), h('td', {}, (s.status && s.status.updated) || 0),
      h('td', {}, (s.status && s.status.rollout) || '—'))), 'No services yet.'));
  } };
}

function field(label, input, help) {
  const id = `f-${label.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  input.id = id;
  return h('label', { for: id }, label, input, help ? h('span', { class: 'muted small' }, help) : null);
}

function createForm() {
  const f = {
    tenant: app.api.admin
      ? h('select', { required: true }, items('tenants').filter((t) => t.name !== 'system').map((t) => h('option', { value: t.name }, t.name)), h('option', { value: 'system' }, 'system'))
      : h('input', { value: app.api.tenant, disabled: true }),
    name: h('input', { required: true, autocomplete: 'off' }),
    image: h('input', { required: true, placeholder: 'busybox', autocomplete: 'off' }),
    command: h('input', { placeholder: "sh -c 'echo hello; sleep 3600'", autocomplete: 'off' }),
    env: h('textarea', { placeholder: 'KEY=value, one a line' }),
    cpu: h('input', { type: 'number', min: 0, step: 50, placeholder: '250' }),
    memory: h('input', { type: 'number', min: 0, step: 16, placeholder: '128' }),
    replicas: h('input', { type: 'number', min: 0, value: 1, required: true }),
    ports: h('input', { placeholder: '8080, 53/udp, 8443:443', autocomplete: 'off' }),
    hcmd: h('input', { placeholder: 'test -f /tmp/ready', autocomplete: 'off' }),
    hpath: h('input', { placeholder: '/healthz', autocomplete: 'off' }),
    hport: h('input', { type: 'number', min: 1, max: 65535 }),
    hinterval: h('input', { placeholder: '5s' }),
    hretries: h('input', { type: 'number', min: 0 }),
  };
  const err = h('p', { class: 'error-box', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Create service');
  const form = h('form', { onsubmit: async (e) => {
    e.preventDefault();
    replace(err);
    let svc;
    try {
      svc = serviceFromFields(Object.fromEntries(Object.entries(f).map(([k, el]) => [k, el.value])));
    } catch (x) {
      replace(err, x.message);
      return;
    }
    const r = await act(submit, `Create service ${svc.name}`, async () => {
      try {
        return await app.api.post(`/v1/tenants/${enc(svc.tenant)}/services`, svc);
      } catch (x) {
        replace(err, x.message);
        throw x;
      }
    });
    if (r) location.hash = `#/services/${enc(r.tenant)}/${enc(r.name)}`;
  } },
  h('div', { class: 'grid' },
    field('Tenant', f.tenant), field('Name', f.name), field('Image', f.image), field('Command', f.command, 'Words as a shell splits them; empty keeps the image\'s.'),
    field('CPU (millicores)', f.cpu), field('Memory (MiB)', f.memory), field('Replicas', f.replicas), field('Ports', f.ports, 'port, hostPort:port, /udp')),
  field('Environment', f.env),
  h('fieldset', {}, h('legend', {}, 'Health check (optional)'),
    h('div', { class: 'grid' }, field('Check command', f.hcmd), field('HTTP path', f.hpath), field('HTTP port', f.hport),
      field('Interval', f.hinterval), field('Retries', f.hretries))),
  err, submit);
  return form;
}

function serviceView(el, tenant, name) {
  const path = app.api.objectPath('services', tenant, name);
  const info = h('div');
  const insts = h('div');
  const charts = h('div');
  const replicas = h('input', { type: 'number', min: 0, id: 'scale-replicas', style: 'width:7em' });
  const image = h('input', { id: 'update-image', autocomplete: 'off' });
  const scaleBtn = h('button', { type: 'submit' }, 'Scale');
  const updBtn = h('button', { type: 'submit' }, 'Update image');
  const rbBtn = h('button', { type: 'button', onclick: () => act(rbBtn, `Roll back ${name}`, () => app.api.modify('services', tenant, name, (s) => {
    if (!s.status || !s.status.stable) throw new Error('no earlier template to roll back to');
    s.spec.template = s.status.stable;
  }), { confirm: `Roll ${name} back to its last fully rolled-out template?`, okLabel: 'Roll back' }) }, 'Roll back');
  const delBtn = h('button', { type: 'button', class: 'danger', onclick: async () => {
    const r = await act(delBtn, `Delete service ${name}`, () => app.api.del(path),
      { confirm: `Delete service ${name} and all its instances? Their containers are destroyed.`, okLabel: 'Delete' });
    if (r !== undefined) location.hash = '#/services';
  } }, 'Delete service');
  let filled = false;
  add(el, h('p', {}, h('a', { href: '#/services' }, '← Services')), h('h1', {}, `Service ${app.api.admin ? `${tenant}/` : ''}${name}`), info,
    h('section', { class: 'card', 'aria-label': 'Actions' },
      h('div', { class: 'row' },
        h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); act(scaleBtn, `Scale ${name} to ${replicas.value}`, () => app.api.modify('services', tenant, name, (s) => { s.spec.replicas = Number(replicas.value); })); } },
          h('label', { for: 'scale-replicas' }, 'Replicas', replicas), scaleBtn),
        h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); act(updBtn, `Update ${name} to ${image.value}`, () => app.api.modify('services', tenant, name, (s) => { s.spec.template.image = image.value.trim(); })); } },
          h('label', { for: 'update-image' }, 'Image', image), updBtn),
        rbBtn, delBtn)),
    h('section', { class: 'card', 'aria-labelledby': 'svc-insts' }, h('h2', { id: 'svc-insts' }, 'Instances'), insts),
    h('section', { class: 'card', 'aria-labelledby': 'svc-metrics' }, h('h2', { id: 'svc-metrics' }, 'Monitoring (sum over instances)'), charts));
  const stopCharts = pollMetrics(charts, `/v1/tenants/${enc(tenant)}/metrics?service=${enc(name)}`);
  return {
    update: () => {
      const s = app.cols.services.items.get(`${tenant}/${name}`);
      if (!s) {
        replace(info, app.cols.services.loaded ? h('p', { class: 'error-box', role: 'alert' }, 'This service does not exist (any more).') : h('p', {}, 'Loading…'));
        replace(insts);
        return;
      }
      if (!filled) {
        replicas.value = s.spec.replicas;
        image.value = s.spec.template.image;
        filled = true;
      }
      rbBtn.disabled = !(s.status && s.status.stable);
      const st = s.status || {};
      const progress = st.rollout === 'progressing' ? h('progress', { max: s.spec.replicas || 1, value: st.updated || 0, 'aria-label': 'Rollout progress' }) : null;
      replace(info, h('section', { class: 'card' }, h('div', { class: 'grid' },
        h('div', {}, h('div', { class: 'muted small' }, 'Image'), s.spec.template.image),
        h('div', {}, h('div', { class: 'muted small' }, 'Command'), (s.spec.template.command || []).join(' ') || '(image default)'),
        h('div', {}, h('div', { class: 'muted small' }, 'Replicas (desired / ready / updated)'), h('span', { id: 'svc-counts' }, `${s.spec.replicas} / ${st.ready || 0} / ${st.updated || 0}`)),
        h('div', {}, h('div', { class: 'muted small' }, 'Rollout'), h('span', { id: 'svc-rollout' }, st.rollout || '—'), ' ', progress, st.message ? h('div', { class: 'small', id: 'svc-message' }, st.message) : null),
        h('div', {}, h('div', { class: 'muted small' }, 'Last rolled out (what Roll back restores)'), h('span', { id: 'svc-stable' }, st.stable ? st.stable.image : '—')))));
      replace(insts, instancesTable(instancesOf(s).sort(byKey)));
    },
    dispose: stopCharts,
  };
}

// ---- instances ---------------------------------------------------------------

const filters = { text: '', service: '', node: '', phase: '' };

function instancesView(el) {
  const errs = h('div');
  const list = h('div');
  const text = h('input', { type: 'search', value: filters.text, placeholder: 'name contains', oninput: () => { filters.text = text.value; update(); } });
  const service = h('select', { onchange: () => { filters.service = service.value; update(); } });
  const node = h('select', { onchange: () => { filters.node = node.value; update(); } });
  const phase = h('select', { onchange: () => { filters.phase = phase.value; update(); } },
    ['', 'pending', 'placed', 'running', 'exited', 'failed', 'lost', 'failing'].map((p) => h('option', { value: p, selected: filters.phase === p }, p || 'any phase')));
  const options = (sel, values, cur, any) => {
    replace(sel, h('option', { value: '' }, any), values.map((v) => h('option', { value: v, selected: v === cur }, v)));
    sel.value = cur;
  };
  add(el, h('h1', {}, 'Instances'), errs,
    h('section', { class: 'card', 'aria-label': 'Filters' }, h('div', { class: 'grid' },
      field('Name', text), field('Service', service), field('Node', node), field('Phase', phase))),
    h('section', { class: 'card', 'aria-label': 'Instances' }, list));
  const update = () => {
    replace(errs, collectionErrors());
    const all = items('instances');
    if (document.activeElement !== service) options(service, [...new Set(all.map((i) => i.spec.service).filter(Boolean))].sort(), filters.service, 'any service');
    if (document.activeElement !== node) options(node, [...new Set(all.map((i) => i.spec.node).filter(Boolean))].sort(), filters.node, 'any node');
    const shown = all.filter((i) => (!filters.text || key(i).includes(filters.text)) &&
      (!filters.service || i.spec.service === filters.service) && (!filters.node || i.spec.node === filters.node) &&
      (!filters.phase || (filters.phase === 'failing' ? failing(i) : (i.status && i.status.phase) === filters.phase))).sort(byKey);
    replace(list, h('p', { class: 'muted small' }, `${shown.length} of ${all.length}`), instancesTable(shown));
  };
  return { update };
}

function instancesTable(list) {
  return table(['Instance', 'Service', 'Node', 'Phase', 'Desired', 'Restarts', 'IP', 'Actions'], list.map((i) => h('tr', {},
    h('td', {}, instLink(i)), h('td', {}, i.spec.service ? svcLink(i.tenant, i.spec.service) : '—'), h('td', {}, i.spec.node || '—'),
    h('td', {}, phasePill(i)), h('td', {}, i.spec.desired || 'running'), h('td', {}, (i.status && i.status.restarts) || 0),
    h('td', {}, (i.status && i.status.ip) || '—'), h('td', {}, h('div', { class: 'row' }, instanceActions(i))))), 'No instances.');
}

function instanceActions(i) {
  const t = i.tenant;
  const n = i.name;
  const stopped = i.spec.desired === 'stopped';
  const toggle = h('button', { type: 'button', onclick: () => act(toggle, `${stopped ? 'Start' : 'Stop'} ${n}`,
    () => app.api.modify('instances', t, n, (o) => { o.spec.desired = stopped ? 'running' : 'stopped'; }),
    stopped ? undefined : { confirm: `Stop instance ${n}? Its container is stopped until started again.`, okLabel: 'Stop' }) }, stopped ? 'Start' : 'Stop');
  const restart = h('button', { type: 'button', onclick: () => act(restart, `Restart ${n}`, () => restartInstance(t, n),
    { confirm: `Restart instance ${n}? Its processes are stopped and started again.`, okLabel: 'Restart' }) }, 'Restart');
  const move = h('button', { type: 'button', onclick: () => moveInstance(move, i) }, 'Move');
  const destroy = h('button', { type: 'button', class: 'danger', onclick: () => act(destroy, `Destroy ${n}`,
    () => app.api.del(app.api.objectPath('instances', t, n)),
    { confirm: `Destroy instance ${n}? Its container and its data are removed${i.spec.service ? '; the service makes a replacement' : ''}.`, okLabel: 'Destroy' }) }, 'Destroy');
  for (const b of [toggle, restart, move, destroy]) b.dataset.k = `${t}/${n}:${b.textContent}`;
  return [toggle, restart, move, destroy];
}

// restartInstance asks the agent to start the container again by raising
// its restart generation. A server that keeps the generation to itself
// (returned unchanged) gets a stop followed by a start instead.
async function restartInstance(t, n) {
  let before = 0;
  const out = await app.api.modify('instances', t, n, (o) => { before = o.spec.restartGeneration || 0; o.spec.restartGeneration = before + 1; });
  if ((out.spec.restartGeneration || 0) > before) return;
  await app.api.modify('instances', t, n, (o) => { o.spec.desired = 'stopped'; });
  for (let i = 0; i < 60; i++) {
    const o = await app.api.get(app.api.objectPath('instances', t, n));
    if (o.status.phase !== 'running') break;
    await sleep(500);
  }
  await app.api.modify('instances', t, n, (o) => { o.spec.desired = 'running'; });
}

async function moveInstance(button, i) {
  const nodes = items('nodes').map((x) => x.name).filter((x) => x !== i.spec.node);
  const d = h('dialog', { 'aria-label': `Move ${i.name}` });
  const input = nodes.length
    ? h('select', { id: 'move-node' }, nodes.map((x) => h('option', { value: x }, x)))
    : h('input', { id: 'move-node', required: true, autocomplete: 'off' });
  d.append(h('form', { method: 'dialog' }, h('h2', {}, `Move ${i.name}`),
    h('p', {}, `It is stopped on ${i.spec.node || 'no node'} and started on the chosen node.`),
    h('label', { for: 'move-node' }, 'Node', input),
    h('div', { class: 'row' }, h('button', { value: 'cancel' }, 'Cancel'), h('button', { value: 'ok', class: 'danger' }, 'Move'))));
  document.body.append(d);
  d.showModal();
  await new Promise((r) => d.addEventListener('close', r, { once: true }));
  d.remove();
  if (d.returnValue !== 'ok' || !input.value) return;
  await act(button, `Move ${i.name} to ${input.value}`, () => app.api.post(`${app.api.objectPath('instances', i.tenant, i.name)}/move`, { node: input.value }));
}

function instanceView(el, tenant, name) {
  const path = app.api.objectPath('instances', tenant, name);
  const info = h('div');
  const actions = h('div', { class: 'row' });
  const panel = h('div');
  let closePanel = null;
  const tabs = ['Logs', 'Terminal', 'Processes', 'Monitoring'].map((label) => {
    const b = h('button', { type: 'button', role: 'tab', 'aria-selected': 'false', onclick: () => show(label) }, label);
    return b;
  });
  const show = (label) => {
    if (closePanel) closePanel();
    for (const b of tabs) b.setAttribute('aria-selected', String(b.textContent === label));
    panel.replaceChildren();
    closePanel = label === 'Logs' ? logsPanel(panel, path) : label === 'Terminal' ? terminalPanel(panel, tenant, name)
      : label === 'Processes' ? topPanel(panel, path)
        : pollMetrics(panel, `/v1/tenants/${enc(tenant)}/metrics?instance=${enc(name)}`);
  };
  add(el, h('p', {}, h('a', { href: '#/instances' }, '← Instances')), h('h1', {}, `Instance ${app.api.admin ? `${tenant}/` : ''}${name}`),
    info, h('section', { class: 'card', 'aria-label': 'Actions' }, actions),
    h('section', { class: 'card' }, h('div', { class: 'tabs', role: 'tablist' }, tabs), panel));
  show('Logs');
  return {
    update: () => {
      const i = app.cols.instances.items.get(`${tenant}/${name}`);
      if (!i) {
        replace(info, app.cols.instances.loaded ? h('p', { class: 'error-box', role: 'alert' }, 'This instance does not exist (any more).') : h('p', {}, 'Loading…'));
        replace(actions);
        return;
      }
      const s = i.status || {};
      const t = i.spec.template;
      replace(info, h('section', { class: 'card' }, h('div', { class: 'grid' },
        h('div', {}, h('div', { class: 'muted small' }, 'Phase'), h('span', { id: 'inst-phase' }, phasePill(i)), s.reason ? h('div', { class: 'small' }, s.reason) : null),
        h('div', {}, h('div', { class: 'muted small' }, 'Service'), i.spec.service ? svcLink(tenant, i.spec.service) : '—'),
        h('div', {}, h('div', { class: 'muted small' }, 'Node'), i.spec.node || '—'),
        h('div', {}, h('div', { class: 'muted small' }, 'Pinned to (moved)'), h('span', { id: 'inst-pin' }, i.spec.pin || '—')),
        h('div', {}, h('div', { class: 'muted small' }, 'Image'), t.image),
        h('div', {}, h('div', { class: 'muted small' }, 'IP'), s.ip || '—'),
        h('div', {}, h('div', { class: 'muted small' }, 'Restarts / exit code'), `${s.restarts || 0} / ${s.exitCode || 0}`))));
      replace(actions, instanceActions(i));
    },
    dispose: () => { if (closePanel) closePanel(); },
  };
}

function logsPanel(panel, path) {
  const lines = [];
  const out = h('pre', { class: 'logs', tabindex: '0', 'aria-label': 'Log output', id: 'logs' });
  const search = h('input', { type: 'search', id: 'log-search', placeholder: 'search', autocomplete: 'off', oninput: () => draw() });
  const follow = h('input', { type: 'checkbox', id: 'log-follow', checked: true, onchange: () => restart() });
  const count = h('span', { class: 'muted small', 'aria-live': 'polite' });
  const status = h('span', { class: 'muted small' });
  let ctrl = null;
  let queued = false;
  const draw = () => {
    const q = search.value.toLowerCase();
    const shown = q ? lines.filter((l) => l.log.toLowerCase().includes(q)) : lines;
    const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 20;
    out.replaceChildren(...shown.slice(-2000).map((l) => {
      const span = h('span', { class: l.stream === 'stderr' ? 'stderr' : '', title: `${l.time} ${l.stream}` });
      if (q) {
        const low = l.log.toLowerCase();
        let at = 0;
        for (let j = low.indexOf(q); j >= 0; j = low.indexOf(q, at)) {
          span.append(l.log.slice(at, j), h('mark', {}, l.log.slice(j, j + q.length)));
          at = j + q.length;
        }
        span.append(l.log.slice(at));
      } else span.append(l.log);
      span.append('\n');
      return span;
    }));
    count.textContent = q ? `${shown.length} of ${lines.length} lines match` : `${lines.length} lines`;
    if (atEnd) out.scrollTop = out.scrollHeight;
  };
  const restart = async () => {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    const signal = ctrl.signal;
    lines.length = 0;
    draw();
    status.textContent = follow.checked ? 'following…' : 'loading…';
    try {
      await app.api.stream(`${path}/logs?tail=1000${follow.checked ? '&follow=1' : ''}`, (l) => {
        lines.push(l);
        if (lines.length > 10000) lines.splice(0, lines.length - 10000);
        if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; draw(); }); }
      }, signal);
      status.textContent = 'end of log';
    } catch (e) {
      if (!signal.aborted) status.textContent = `logs: ${e.message}`;
    }
  };
  add(panel, h('div', { class: 'row' }, h('label', { for: 'log-search' }, 'Search', search),
    h('label', { for: 'log-follow', style: 'flex-direction:row;align-items:center' }, follow, 'Follow'), count, status), out);
  restart();
  return () => { if (ctrl) ctrl.abort(); };
}

function terminalPanel(panel, tenant, name) {
  const cmd = h('input', { id: 'term-cmd', value: 'sh', autocomplete: 'off' });
  const status = h('span', { class: 'muted small', role: 'status' });
  const box = h('div', { class: 'term', id: 'terminal' });
  let close = null;
  const connect = h('button', { type: 'submit', class: 'primary' }, 'Connect');
  const disconnect = h('button', { type: 'button', onclick: () => { if (close) close(); close = null; status.textContent = 'disconnected'; } }, 'Disconnect');
  add(panel, h('form', { class: 'row', onsubmit: (e) => {
    e.preventDefault();
    if (close) close();
    box.replaceChildren();
    let argv;
    try { argv = words(cmd.value); } catch (x) { status.textContent = x.message; return; }
    if (!argv.length) { status.textContent = 'enter a command'; return; }
    close = openTerminal(app.api, box, tenant, name, argv, (s) => { status.textContent = s; });
  } }, h('label', { for: 'term-cmd' }, 'Command', cmd), connect, disconnect, status),
  h('p', { class: 'muted small' }, 'The terminal keeps Tab for the shell: use Disconnect (before it in the page) to leave it.'), box);
  return () => { if (close) close(); };
}

// topPanel lists the container's processes, as ps sees them, every 5 s.
function topPanel(panel, path) {
  const ctrl = new AbortController();
  const box = h('div', { id: 'top' });
  const draw = async () => {
    try {
      const t = await app.api.get(`${path}/top`, ctrl.signal);
      replace(box, table(t.titles || [], (t.processes || []).map((p) => h('tr', {}, p.map((c) => h('td', { class: 'wrap' }, c)))), 'No processes.'));
    } catch (e) {
      if (!ctrl.signal.aborted) replace(box, h('p', { class: 'error-box' }, `processes: ${e.message}`));
    }
  };
  add(panel, box);
  draw();
  const t = setInterval(draw, 5000);
  return () => { clearInterval(t); ctrl.abort(); };
}

// pollMetrics draws the control plane's stats history into el every 10 s.
function pollMetrics(el, path) {
  const ctrl = new AbortController();
  const draw = async () => {
    try {
      const s = await app.api.get(path, ctrl.signal);
      replace(el, metricsCharts(s, bytes));
    } catch (e) {
      if (!ctrl.signal.aborted) replace(el, h('p', { class: 'error-box' }, `monitoring: ${e.message}`));
    }
  };
  draw();
  const t = setInterval(draw, 10000);
  return () => { clearInterval(t); ctrl.abort(); };
}

// ---- nodes -------------------------------------------------------------------

function nodesView(el) {
  const errs = h('div');
  const list = h('div');
  add(el, h('h1', {}, 'Nodes'), errs, h('section', { class: 'card' }, list));
  const update = () => { replace(errs, collectionErrors()); replace(list, nodesTable(true)); };
  const tick = setInterval(update, 1000);
  return { update, dispose: () => clearInterval(tick) };
}

function nodeView(el, name) {
  const info = h('div');
  const insts = h('div');
  const charts = h('div');
  add(el, h('p', {}, h('a', { href: '#/nodes' }, '← Nodes')), h('h1', {}, `Node ${name}`), info,
    h('section', { class: 'card', 'aria-labelledby': 'node-insts' }, h('h2', { id: 'node-insts' }, 'Instances'), insts),
    h('section', { class: 'card', 'aria-labelledby': 'node-metrics' }, h('h2', { id: 'node-metrics' }, 'Monitoring (sum over its instances)'), charts));
  const stop = pollMetrics(charts, `/v1/metrics?node=${enc(name)}`);
  const update = () => {
    const n = app.cols.nodes && app.cols.nodes.items.get(name);
    replace(info, n ? h('section', { class: 'card' }, h('div', { class: 'grid' },
      h('div', {}, h('div', { class: 'muted small' }, 'Phase'), (n.status && n.status.phase) || '—'),
      h('div', {}, h('div', { class: 'muted small' }, 'Address'), n.spec.address || '—'),
      h('div', {}, h('div', { class: 'muted small' }, 'Capacity'), `${cpu(n.spec.capacity.cpu)}, ${bytes(n.spec.capacity.memory)}`),
      h('div', {}, h('div', { class: 'muted small' }, 'Heartbeat'), heartbeat(n, Date.now())))) : h('p', {}, 'No such node.'));
    replace(insts, instancesTable(items('instances').filter((i) => i.spec.node === name).sort(byKey)));
  };
  return { update, dispose: stop };
}

main();
