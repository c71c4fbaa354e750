// Command lines typed into the console become argument lists here.

// words splits a command line the way a shell would for plain words,
// 'single' and "double" quotes and backslash escapes; nothing is expanded.
export function words(s) {
  const out = [];
  let cur = null;
  let q = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (q) {
      if (c === q) q = null;
      else if (c === '\\' && q === '"' && i + 1 < s.length) cur += s[++i];
      else cur += c;
    } else if (c === "'" || c === '"') {
      q = c; cur = cur ?? '';
    } else if (c === '\\' && i + 1 < s.length) {
      cur = (cur ?? '') + s[++i];
    } else if (/\s/.test(c)) {
      if (cur !== null) { out.push(cur); cur = null; }
    } else {
      cur = (cur ?? '') + c;
    }
  }
  if (q) throw new Error(`unclosed ${q} quote`);
  if (cur !== null) out.push(cur);
  return out;
}
