// Line charts drawn as plain SVG: a time axis, one or two series, the last
// value in the heading. No library: a chart here is a polyline.

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// chart draws series [{label, color, values: [[timeMs, value]...]}] and
// returns a figure element; fmt formats a value for labels.
export function chart(title, series, fmt) {
  const W = 300, H = 140, L = 4, R = 4, T = 16, B = 16;
  const fig = document.createElement('figure');
  fig.className = 'chart';
  fig.style.margin = '0';
  const all = series.flatMap((s) => s.values);
  const last = series.map((s) => (s.values.length ? `${s.label} ${fmt(s.values[s.values.length - 1][1])}` : `${s.label} —`));
  const h3 = document.createElement('h3');
  h3.textContent = `${title}: ${last.join(', ')}`;
  fig.append(h3);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', preserveAspectRatio: 'none' });
  const desc = svg('title', {});
  desc.textContent = `${title} over the last ${all.length ? spanText(all) : 'hour'}; ${last.join(', ')}`;
  root.append(desc);
  if (all.length === 0) {
    const t = svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', 'font-size': 11, fill: '#5b6470' });
    t.textContent = 'no samples yet';
    root.append(t);
    fig.append(root);
    return fig;
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
  const vmax = Math.max(...all.map((p) => p[1]), 1e-9);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (v / vmax) * (H - T - B);
  root.append(svg('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: '#d5d9df' }));
  const top = svg('text', { x: L + 2, y: T - 4, 'font-size': 10, fill: '#5b6470' });
  top.textContent = `max ${fmt(vmax)}`;
  root.append(top);
  const span = svg('text', { x: W - R, y: H - 3, 'font-size': 10, fill: '#5b6470', 'text-anchor': 'end' });
  span.textContent = spanText(all);
  root.append(span);
  for (const s of series) {
    if (!s.values.length) continue;
    const pts = s.values.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    root.append(svg('polyline', { points: pts, fill: 'none', stroke: s.color, 'stroke-width': 1.5, 'vector-effect': 'non-scaling-stroke' }));
  }
  fig.append(root);
  return fig;
}

function spanText(all) {
  const s = Math.round((Math.max(...all.map((p) => p[0])) - Math.min(...all.map((p) => p[0]))) / 1000);
  return s < 120 ? `${s}s` : `${Math.round(s / 60)} min`;
}

// metricsCharts turns a metrics series from the API into the CPU, memory
// and network charts.
export function metricsCharts(series, bytes) {
  const pts = series.points || [];
  const at = (p) => Date.parse(p.time);
  const wrap = document.createElement('div');
  wrap.className = 'charts';
  wrap.append(
    chart('CPU', [{ label: 'used', color: '#0b5cad', values: pts.map((p) => [at(p), p.cpu]) }],
      (v) => `${Math.round(v)}m`),
    chart('Memory', [{ label: 'used', color: '#1e7b34', values: pts.map((p) => [at(p), p.memoryBytes]) }], bytes),
    chart('Network', [
      { label: 'rx', color: '#7b3fb3', values: pts.map((p) => [at(p), p.rxBytesPerSecond]) },
      { label: 'tx', color: '#c4561d', values: pts.map((p) => [at(p), p.txBytesPerSecond]) },
    ], (v) => `${bytes(v)}/s`),
  );
  return wrap;
}
