// A terminal into an instance: xterm.js over the exec websocket. Binary
// frames carry stdio behind a channel byte; text frames carry JSON control
// messages (resize from us; exit or error from the server).
import { Terminal } from './vendor/xterm/xterm.mjs';
import { FitAddon } from './vendor/xterm/addon-fit.mjs';

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;

export function openTerminal(api, box, tenant, name, cmd, onStatus) {
  const term = new Terminal({ cursorBlink: true, fontSize: 13, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const ws = api.exec(tenant, name, { cmd, tty: true, stdin: true });
  const encoder = new TextEncoder();
  let ended = false;
  const send = (data) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const b = typeof data === 'string' ? encoder.encode(data) : data;
    const frame = new Uint8Array(b.length + 1);
    frame[0] = STDIN;
    frame.set(b, 1);
    ws.send(frame);
  };
  const resize = () => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ resize: { rows: term.rows, cols: term.cols } }));
  };
  onStatus('connecting…');
  ws.onopen = () => { onStatus(`connected: ${cmd.join(' ')}`); resize(); term.focus(); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === 'string') {
      let c = {};
      try { c = JSON.parse(ev.data); } catch { return; }
      if (c.error) { term.write(`\r\n\x1b[31m${c.error}\x1b[0m\r\n`); onStatus(`error: ${c.error}`); ended = true; }
      if (c.exit !== undefined && c.exit !== null) { onStatus(`exited with code ${c.exit}`); ended = true; }
      return;
    }
    const b = new Uint8Array(ev.data);
    if (b.length && (b[0] === STDOUT || b[0] === STDERR)) term.write(b.subarray(1));
  };
  ws.onclose = (ev) => { if (!ended) onStatus(`closed${ev.reason ? `: ${ev.reason}` : ev.code !== 1000 ? ` (code ${ev.code})` : ''}`); };
  ws.onerror = () => onStatus('the connection failed');
  const d1 = term.onData((d) => send(d));
  const d2 = term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 255)));
  const d3 = term.onResize(resize);
  const ro = new ResizeObserver(() => { try { fit.fit(); } catch { /* detached */ } });
  ro.observe(box);
  return () => {
    ro.disconnect();
    d1.dispose(); d2.dispose(); d3.dispose();
    ws.close(1000);
    term.dispose();
  };
}
