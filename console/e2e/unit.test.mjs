// The console's pure parts, under Node's test runner (run by unit_test.go).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { words } from '../web/words.js';
import { serviceFromFields } from '../web/forms.js';

test('words splits as a shell would, without expanding', () => {
  const cases = [
    ['', []],
    ['  sh  ', ['sh']],
    [`sh -c 'echo $HOME; sleep 1'`, ['sh', '-c', 'echo $HOME; sleep 1']],
    [`echo "a \\"b\\"" c\\ d`, ['echo', 'a "b"', 'c d']],
    [`printf ''`, ['printf', '']],
    [`a"b"'c'`, ['abc']],
  ];
  for (const [in_, want] of cases) assert.deepEqual(words(in_), want, in_);
  assert.throws(() => words(`echo 'open`), /unclosed ' quote/);
});

const blank = { tenant: 'shop', name: 'web', image: 'busybox', command: '', env: '', cpu: '', memory: '', replicas: '1',
  ports: '', hcmd: '', hpath: '', hport: '', hinterval: '', hretries: '' };

test('a minimal form is a minimal service', () => {
  assert.deepEqual(serviceFromFields(blank), { name: 'web', tenant: 'shop', spec: { replicas: 1, template: { image: 'busybox' } } });
});

test('every field lands where the API wants it', () => {
  const s = serviceFromFields({ ...blank, command: `sh -c 'sleep 9'`, env: 'A=1\n\nB = two=2\n', cpu: '250', memory: '64',
    replicas: '3', ports: '8080, 53/udp, 8443:443', hcmd: 'test -f /ok', hinterval: '5s', hretries: '2' });
  assert.deepEqual(s.spec, { replicas: 3, template: {
    image: 'busybox', command: ['sh', '-c', 'sleep 9'], env: { A: '1', B: ' two=2' },
    resources: { cpu: 250, memory: 64 << 20 },
    ports: [{ port: 8080 }, { port: 53, protocol: 'udp' }, { port: 443, hostPort: 8443 }],
    health: { command: ['test', '-f', '/ok'], interval: '5s', retries: 2 },
  } });
});

test('what cannot be expressed is refused, naming the field', () => {
  assert.throws(() => serviceFromFields({ ...blank, env: 'NOEQUALS' }), /environment: "NOEQUALS"/);
  assert.throws(() => serviceFromFields({ ...blank, ports: '80/sctp' }), /ports: "80\/sctp"/);
  assert.throws(() => serviceFromFields({ ...blank, replicas: 'many' }), /replicas: "many"/);
  assert.throws(() => serviceFromFields({ ...blank, command: `sh -c "x` }), /unclosed " quote/);
});
