// What the forms turn into API objects: pure functions of the fields'
// strings, so they are tested without a browser (e2e/unit.test.mjs).
import { words } from './words.js';

// serviceFromFields builds a service. What the server validates is left to
// it, so its message, naming the field, is what the user reads; only what
// cannot be expressed in the object at all is refused here.
export function serviceFromFields(f) {
  const tmpl = { image: f.image.trim() };
  if (f.command.trim()) tmpl.command = words(f.command);
  const env = {};
  for (const line of f.env.split('\n')) {
    if (!line.trim()) continue;
    const i = line.indexOf('=');
    if (i <= 0) throw new Error(`environment: "${line}" is not KEY=value`);
    env[line.slice(0, i).trim()] = line.slice(i + 1);
  }
  if (Object.keys(env).length) tmpl.env = env;
  const res = {};
  if (f.cpu) res.cpu = number('CPU', f.cpu);
  if (f.memory) res.memory = Math.round(number('memory', f.memory) * 1024 * 1024);
  if (Object.keys(res).length) tmpl.resources = res;
  const ports = f.ports.split(',').map((s) => s.trim()).filter(Boolean).map((p) => {
    const m = /^(?:(\d+):)?(\d+)(?:\/(tcp|udp))?$/.exec(p);
    if (!m) throw new Error(`ports: "${p}" is not port, hostPort:port or port/udp`);
    const port = { port: Number(m[2]) };
    if (m[1]) port.hostPort = Number(m[1]);
    if (m[3]) port.protocol = m[3];
    return port;
  });
  if (ports.length) tmpl.ports = ports;
  const hc = {};
  if (f.hcmd.trim()) hc.command = words(f.hcmd);
  if (f.hpath.trim()) hc.httpPath = f.hpath.trim();
  if (f.hport) hc.port = number('health check port', f.hport);
  if (f.hinterval.trim()) hc.interval = f.hinterval.trim();
  if (f.hretries) hc.retries = number('health check retries', f.hretries);
  if (Object.keys(hc).length) tmpl.health = hc;
  return { name: f.name.trim(), tenant: f.tenant, spec: { replicas: number('replicas', f.replicas), template: tmpl } };
}

function number(what, s) {
  const n = Number(s);
  if (s.trim() === '' || !Number.isFinite(n)) throw new Error(`${what}: "${s}" is not a number`);
  return n;
}
