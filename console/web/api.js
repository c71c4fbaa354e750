// The console's only way to the server: the public /v1 API, its NDJSON watch
// streams and the exec websocket, exactly as a script would use them.

export class APIError extends Error {
  constructor(status, message, field) {
    super(field ? `${field}: ${message}` : message);
    this.status = status;
    this.field = field;
  }
}

export class API {
  constructor(token) {
    this.token = token;
    // Secrets read "tenant.name.random": the tenant is the token's scope.
    this.tenant = token.split('.')[0];
    this.admin = false;
  }

  headers(json) {
    const h = { Authorization: `Bearer ${this.token}` };
    if (json) h['Content-Type'] = 'application/json';
    return h;
  }

  async req(method, path, body, signal) {
    let r;
    try {
      r = await fetch(path, {
        method, headers: this.headers(body !== undefined), signal,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new APIError(0, `cannot reach the server: ${e.message}`);
    }
    if (r.status === 204) return null;
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    if (!r.ok) throw new APIError(r.status, (data && data.message) || text.trim() || r.statusText, data && data.field);
    return data;
  }

  get(path, signal) { return this.req('GET', path, undefined, signal); }
  post(path, body) { return this.req('POST', path, body === undefined ? {} : body); }
  put(path, body) { return this.req('PUT', path, body); }
  del(path) { return this.req('DELETE', path); }

  // stream reads an NDJSON response, calling onItem per line, until the
  // response ends or signal aborts.
  async stream(path, onItem, signal) {
    const r = await fetch(path, { headers: this.headers(false), signal });
    if (!r.ok) {
      const text = await r.text();
      let msg = text.trim();
      try { msg = JSON.parse(text).message || msg; } catch { /* plain */ }
      throw new APIError(r.status, msg || r.statusText);
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.trim()) onItem(JSON.parse(line));
      }
    }
  }

  // signIn checks the token and learns its reach: only admins may list
  // tenants; anyone else reads their own tenant.
  async signIn() {
    try {
      await this.get('/v1/tenants');
      this.admin = true;
    } catch (e) {
      if (e.status !== 403) throw e;
      await this.get(`/v1/tenants/${enc(this.tenant)}/services`);
    }
  }

  // base is the collection path this token may list: every tenant for an
  // admin, its own tenant otherwise.
  collection(kind) {
    if (kind === 'nodes' || kind === 'tenants') return `/v1/${kind}`;
    return this.admin ? `/v1/${kind}` : `/v1/tenants/${enc(this.tenant)}/${kind}`;
  }

  objectPath(kind, tenant, name) {
    if (kind === 'nodes' || kind === 'tenants') return `/v1/${kind}/${enc(name)}`;
    return `/v1/tenants/${enc(tenant)}/${kind}/${enc(name)}`;
  }

  // modify reads an object, applies f and writes it back, retrying when
  // someone else wrote in between (409).
  async modify(kind, tenant, name, f) {
    for (let attempt = 0; ; attempt++) {
      const o = await this.get(this.objectPath(kind, tenant, name));
      f(o);
      try {
        return await this.put(this.objectPath(kind, tenant, name), o);
      } catch (e) {
        if (e.status !== 409 || attempt >= 4) throw e;
      }
    }
  }

  // exec opens the exec websocket. Browsers cannot set headers on a
  // websocket, so the token rides as the subprotocol "bearer.TOKEN".
  exec(tenant, name, opts) {
    const q = new URLSearchParams();
    for (const c of opts.cmd) q.append('cmd', c);
    if (opts.tty) q.set('tty', '1');
    if (opts.stdin) q.set('stdin', '1');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${location.host}${this.objectPath('instances', tenant, name)}/exec?${q}`, ['berth.v1', `bearer.${this.token}`]);
    ws.binaryType = 'arraybuffer';
    return ws;
  }
}

export function enc(s) { return encodeURIComponent(s); }

export function key(o) { return o.tenant ? `${o.tenant}/${o.name}` : o.name; }

// Collection mirrors one list from the API: it lists, then follows the
// watch stream from the list's revision, resuming after a dropped
// connection and listing again when the history is gone (410).
export class Collection {
  constructor(api, path) {
    this.api = api;
    this.path = path;
    this.items = new Map();
    this.listeners = new Set();
    this.ctrl = new AbortController();
    this.error = null;
    this.loaded = false;
  }

  onChange(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  emit() { for (const fn of this.listeners) fn(this); }

  values() { return [...this.items.values()]; }

  stop() { this.ctrl.abort(); }

  async run() {
    const signal = this.ctrl.signal;
    let rev = 0;
    let relist = true;
    while (!signal.aborted) {
      try {
        if (relist) {
          const list = await this.api.get(this.path, signal);
          this.items = new Map((list.items || []).map((o) => [key(o), o]));
          rev = list.revision;
          relist = false;
          this.loaded = true;
          this.error = null;
          this.emit();
        }
        const sep = this.path.includes('?') ? '&' : '?';
        await this.api.stream(`${this.path}${sep}watch=1&revision=${rev}`, (ev) => {
          if (ev.revision > rev) rev = ev.revision;
          if (ev.type === 'BOOKMARK') return;
          if (ev.type === 'ERROR') {
            throw new APIError((ev.object && ev.object.code) || 500, (ev.object && ev.object.message) || 'watch failed');
          }
          const k = key(ev.object);
          if (ev.type === 'DELETED') this.items.delete(k);
          else this.items.set(k, ev.object);
          this.emit();
        }, signal);
      } catch (e) {
        if (signal.aborted) return;
        if (e.status === 410) relist = true;
        if (e.status === 401 || e.status === 403) {
          this.error = e;
          this.emit();
          return;
        }
        this.error = e;
        this.emit();
      }
      // A stream that ended or broke resumes from the last revision seen.
      await sleep(1000, signal);
    }
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}
