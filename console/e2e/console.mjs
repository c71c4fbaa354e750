// Drives the console in headless Chromium through playwright-core. Run by
// browser_test.go, which starts `berth up` and passes, in the environment:
// BERTH_URL, BERTH_TOKEN (a tenant-admin), BERTH_ADMIN_TOKEN, BERTH_NODE,
// CHROMIUM and SCREENSHOTS (a folder). Exits non-zero at the first failed
// step, naming it.
import { chromium } from 'playwright-core';

const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const base = env('BERTH_URL');
const shots = env('SCREENSHOTS');
const T = 30000;

let step = 'start';
const log = (s) => { step = s; console.log(`-- ${s}`); };

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  // Root runs Chromium without its sandbox; the rest keep it off the
  // (closed) network.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const problems = [];
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
try {
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`   console: ${m.text()}`); });
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  const toast = async (text) => page.locator('.toast', { hasText: text }).first().waitFor();
  // Every control a keyboard or a screen reader reaches has a name.
  const labelled = async (where) => {
    const bare = await page.evaluate(() => [...document.querySelectorAll('main input, main select, main textarea, main button')]
      .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
      .map((el) => el.outerHTML.slice(0, 80)));
    if (bare.length) throw new Error(`${where}: controls without a name: ${bare.join(', ')}`);
  };

  log('a wrong token is refused');
  await page.goto(base);
  await page.locator('#token').fill('shop.console.wrong-secret');
  await page.keyboard.press('Enter');
  await page.locator('#signin-error', { hasText: 'Token refused' }).waitFor();
  await shot('01-signin-refused');

  log('sign in (keyboard only)');
  await page.locator('#token').fill(env('BERTH_TOKEN'));
  await page.keyboard.press('Enter');
  await page.locator('header#top').waitFor({ state: 'visible' });
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  await page.locator('#who', { hasText: 'tenant shop' }).waitFor();
  await shot('02-overview-empty');

  log('create a service');
  await page.getByRole('link', { name: 'Services', exact: true }).click();
  await page.getByRole('heading', { name: 'Services' }).waitFor();
  await page.locator('#f-name').fill('web');
  await page.locator('#f-image').fill('busybox');
  await page.locator('#f-command').fill(`sh -c 'i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done'`);
  await page.locator('#f-environment').fill('GREETING=hello from the console');
  await page.locator('#f-memory-mib-').fill('64');
  await page.locator('#f-replicas').fill('1');
  await labelled('the service form');
  await shot('03-service-create-form');
  await page.getByRole('button', { name: 'Create service' }).click();
  await toast('Create service web: done');
  await page.getByRole('heading', { name: 'Service web' }).waitFor();

  log('its instance appears and runs');
  await page.locator('#svc-counts', { hasText: /^1 \/ 1 \// }).waitFor();
  await page.locator('table .pill', { hasText: 'running' }).first().waitFor();
  await shot('04-service');

  log('scale it to 2');
  await page.locator('#scale-replicas').fill('2');
  await page.getByRole('button', { name: 'Scale' }).click();
  await toast('Scale web to 2: done');
  await page.locator('#svc-counts', { hasText: /^2 \/ 2 \// }).waitFor();
  await page.locator('table .pill', { hasText: 'running' }).nth(1).waitFor();

  log('update the image: a rolling update');
  await page.locator('#update-image').fill('busybox:latest');
  await page.getByRole('button', { name: 'Update image' }).click();
  await toast('Update web to busybox:latest: done');
  await page.locator('#svc-stable', { hasText: 'busybox:latest' }).waitFor();
  await page.locator('#svc-rollout', { hasText: 'complete' }).waitFor();

  log('a bad image stops the rollout; roll back');
  // A registry on a loopback port nobody serves: the pull fails at once,
  // and nothing leaves the machine.
  await page.locator('#update-image').fill('127.0.0.1:9/no-such-image:1');
  await page.getByRole('button', { name: 'Update image' }).click();
  await page.locator('#svc-rollout', { hasText: 'failed' }).waitFor();
  await page.locator('#svc-message', { hasText: 'rollout stopped' }).waitFor();
  await shot('05-rollout-failed');
  await page.getByRole('button', { name: 'Roll back' }).click();
  await page.locator('#confirm-ok').click();
  await toast('Roll back web: done');
  await page.locator('#svc-rollout', { hasText: 'complete' }).waitFor();
  await page.locator('#svc-counts', { hasText: /^2 \/ 2 \/ 2$/ }).waitFor();

  log('the overview is live');
  await page.getByRole('link', { name: 'Overview' }).click();
  const row = page.locator('section', { has: page.getByRole('heading', { name: 'Services' }) }).locator('tr', { hasText: 'web' });
  await row.locator('td').nth(3).filter({ hasText: /^2$/ }).waitFor();
  await shot('05-overview');

  log('instances list and filters');
  await page.getByRole('link', { name: 'Instances' }).click();
  await page.getByText('2 of 2').waitFor();
  await page.locator('#f-phase').selectOption('failing');
  await page.getByText('0 of 2').waitFor();
  await page.locator('#f-phase').selectOption('running');
  await page.getByText('2 of 2').waitFor();
  await shot('06-instances');

  log('follow the logs of an instance');
  await page.locator('table a[href^="#/instances/"]').first().click();
  await page.getByRole('heading', { name: /^Instance / }).waitFor();
  await page.locator('#logs', { hasText: 'tick-2' }).waitFor();
  const before = (await page.locator('#logs').textContent()).length;
  await page.waitForFunction((n) => document.getElementById('logs').textContent.length > n, before);
  log('search the logs');
  await page.locator('#log-search').fill('tick-1');
  await page.getByText(/lines match$/).waitFor();
  await page.locator('#logs mark').first().waitFor();
  await shot('07-logs');
  await page.locator('#log-search').fill('');

  log('run a command in its terminal');
  await page.getByRole('tab', { name: 'Terminal' }).click();
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.getByText(/^connected/).waitFor();
  await page.locator('#terminal .xterm').click();
  await page.keyboard.type('echo "$GREETING" $((6*7)); echo "size=$(stty size)"\n');
  await page.locator('#terminal .xterm-rows', { hasText: 'hello from the console 42' }).waitFor();
  // The terminal told the server its size, fitted to the page rather than
  // xterm's 80x24: stty in the container sees it.
  const rows = await page.locator('#terminal .xterm-rows > div').count();
  await page.locator('#terminal .xterm-rows', { hasText: new RegExp(`size=${rows} \\d+`) }).waitFor();
  const cols = Number(/size=\d+ (\d+)/.exec(await page.locator('#terminal .xterm-rows').textContent())[1]);
  if (!(cols > 80)) throw new Error(`the container's terminal is ${cols} columns wide, not fitted to the page`);
  await shot('08-terminal');
  await page.keyboard.type('exit\n');
  await page.getByText('exited with code 0').waitFor();

  log('list its processes');
  await page.getByRole('tab', { name: 'Processes' }).click();
  await page.locator('#top td', { hasText: /sleep 1|while true/ }).first().waitFor();
  await shot('09-processes');

  log('chart it');
  await page.getByRole('tab', { name: 'Monitoring' }).click();
  await page.locator('figure.chart').nth(2).waitFor();
  // The control plane samples every 10 s; a rate needs two samples.
  await page.locator('figure.chart polyline').first().waitFor({ state: 'attached', timeout: 45000 });
  await shot('10-monitoring');

  log('stop, start and restart it');
  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await page.locator('#confirm-ok').click();
  await page.locator('#inst-phase', { hasText: 'exited' }).waitFor();
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await page.locator('#inst-phase', { hasText: 'running' }).waitFor();
  await page.getByRole('button', { name: 'Restart', exact: true }).click();
  await page.locator('#confirm-ok').click();
  await toast(/^Restart .*: done$/);
  await page.locator('#inst-phase', { hasText: 'running' }).waitFor();

  log('move it (to the one node there is: it is placed again)');
  await page.getByRole('button', { name: 'Move', exact: true }).click();
  await page.locator('#move-node').fill(env('BERTH_NODE'));
  await page.locator('dialog[open]').getByRole('button', { name: 'Move' }).click();
  await toast(/^Move .* to .*: done$/);
  await page.locator('#inst-pin', { hasText: env('BERTH_NODE') }).waitFor();
  await page.locator('#inst-phase', { hasText: 'running' }).waitFor();

  log('Escape cancels a destructive action');
  await labelled('the instance page');
  await page.getByRole('button', { name: 'Destroy' }).click();
  await page.locator('dialog#confirm[open]').waitFor();
  await page.keyboard.press('Escape');
  await page.locator('dialog#confirm[open]').waitFor({ state: 'detached' });
  await page.getByRole('button', { name: 'Destroy' }).waitFor();
  if (await page.locator('.toast', { hasText: 'Destroy' }).count()) throw new Error('a cancelled destroy went ahead');

  log('destroy one instance; the service replaces it');
  const name = (await page.getByRole('heading', { name: /^Instance / }).textContent()).replace('Instance ', '');
  await page.getByRole('button', { name: 'Destroy' }).click();
  await page.locator('#confirm-text', { hasText: `Destroy instance ${name}?` }).waitFor();
  await shot('11-confirm-destroy');
  await page.locator('#confirm-ok').click();
  await toast(`Destroy ${name}: done`);
  await page.getByText('This instance does not exist').waitFor();

  log('delete the service');
  await page.goto(`${base}/#/services/shop/web`);
  await page.getByRole('heading', { name: 'Service web' }).waitFor();
  await page.getByRole('button', { name: 'Delete service' }).click();
  await page.locator('#confirm-ok').click();
  await toast('Delete service web: done');
  await page.getByRole('heading', { name: 'Services', exact: true }).waitFor();
  await page.getByText('No services yet.').waitFor();
  await page.getByRole('link', { name: 'Instances' }).click();
  await page.getByText('0 of 0').waitFor({ timeout: 45000 });

  log('an admin sees the nodes');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('#token').fill(env('BERTH_ADMIN_TOKEN'));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#who', { hasText: 'admin' }).waitFor();
  await page.getByRole('link', { name: 'Nodes' }).click();
  await page.locator('tr', { hasText: env('BERTH_NODE') }).locator('.pill', { hasText: 'ready' }).waitFor();
  await shot('12-nodes');
  await page.getByRole('link', { name: env('BERTH_NODE') }).click();
  await page.getByRole('heading', { name: `Node ${env('BERTH_NODE')}` }).waitFor();
  // A flat line (a node with nothing running) has no height, which
  // Playwright counts as hidden: the chart is drawn when its figure shows
  // and holds a line.
  await page.locator('figure.chart').first().waitFor();
  await page.locator('figure.chart polyline').first().waitFor({ state: 'attached' });
  await shot('13-node');
  await page.getByRole('link', { name: '← Nodes' }).click();
  log('drain the node');
  await page.getByRole('button', { name: 'Drain', exact: true }).click();
  await page.locator('#confirm-text', { hasText: `Drain node ${env('BERTH_NODE')}?` }).waitFor();
  await page.locator('#confirm-ok').click();
  await toast(`Drain ${env('BERTH_NODE')}: done`);
  await page.locator('tr', { hasText: env('BERTH_NODE') }).locator('.pill', { hasText: /drain/ }).waitFor();

  log('on a phone');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole('link', { name: 'Overview' }).click();
  await page.getByRole('heading', { name: 'Recent events' }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) throw new Error('the overview is wider than a phone screen');
  await shot('14-overview-phone');

  if (problems.length) throw new Error(problems.join('; '));
  console.log('-- all steps passed');
} catch (e) {
  console.error(`FAILED at "${step}": ${e.message}`);
  process.exitCode = 1;
  await page.screenshot({ path: `${shots}/failed.png`, fullPage: true }).catch(() => {});
  const term = await page.locator('#terminal .xterm-rows').textContent({ timeout: 1000 }).catch(() => null);
  if (term) console.error(`terminal shows: ${term}`);
} finally {
  await browser.close();
}
