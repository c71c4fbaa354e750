// Small DOM helpers: elements are built, never parsed from strings, so no
// value from the API is ever read as HTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

// add appends children, skipping null, undefined and false as h does.
export function add(el, ...children) { append(el, children); }

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// replace swaps el's children. Live views redraw often, so the focused
// control is found again by its data-k and keeps the keyboard focus.
export function replace(el, ...children) {
  const a = document.activeElement;
  const k = a && el.contains(a) && a.dataset ? a.dataset.k : undefined;
  el.replaceChildren();
  append(el, children);
  if (k) {
    const again = [...el.querySelectorAll('[data-k]')].find((x) => x.dataset.k === k);
    if (again) again.focus();
  }
}

export function table(headers, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'muted' }, empty || 'None.');
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows)));
}

export function toast(msg, error) {
  const t = h('div', { class: error ? 'toast error' : 'toast' }, msg);
  document.getElementById('toasts').append(t);
  setTimeout(() => t.remove(), error ? 12000 : 5000);
}

// confirmAction asks in a modal dialog (focus trapped, Esc cancels).
export function confirmAction(text, okLabel) {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = okLabel || 'Confirm';
  d.returnValue = '';
  d.showModal();
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
  });
}

// act runs an action from a button, shows its outcome, and keeps the
// button disabled while it runs.
export async function act(button, what, f, opts) {
  if (opts && opts.confirm && !(await confirmAction(opts.confirm, opts.okLabel))) return;
  if (button) button.disabled = true;
  try {
    const r = await f();
    toast(`${what}: done`);
    return r;
  } catch (e) {
    toast(`${what} failed: ${e.message}`, true);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function bytes(n) {
  if (!n) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${u[i]}`;
}

export function cpu(m) {
  if (!m) return '0';
  return m >= 1000 ? `${(m / 1000).toFixed(m % 1000 ? 1 : 0)} CPU` : `${Math.round(m)}m`;
}

export function age(t, now) {
  if (!t) return '—';
  const s = Math.max(0, Math.round((now - Date.parse(t)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

export function pill(text, cls) { return h('span', { class: `pill ${cls || ''}` }, text); }

export { words } from './words.js';
