import { startFakeCluster } from './fake_node.mjs';
import { openBrowser, closeBrowser, waitFor } from './lib.mjs';
const fake = await startFakeCluster();
let fails = 0;
for (let round = 0; round < 6; round++) {
  fake.received.length = 0;
  const room = 'r' + round;
  const a = await openBrowser('a', fake.urls[0] + '/#' + room);
  await a.page.fill('#name', 'alice'); await a.page.click('#join'); await a.page.waitForSelector('body[data-state="joined"]');
  const b = await openBrowser('b', fake.urls[1] + '/#' + room);
  await b.page.fill('#name', 'bob'); await b.page.click('#join'); await b.page.waitForSelector('body[data-state="joined"]');

  let ok = true;
  try { await a.page.waitForSelector('#peers li[data-conn="connected"]', { timeout: 5000 }); await b.page.waitForSelector('#peers li[data-conn="connected"]', { timeout: 5000 }); } catch { ok = false; }
  if (!ok) {
    fails++;
    for (const x of [a, b]) console.log(x.label, await x.page.evaluate(() => document.body.dataset.id), JSON.stringify(await x.page.evaluate(() => [...document.querySelectorAll('#peers li')].map(li => ({ ...li.dataset })))));
    for (const r of fake.received) console.log(r.from.slice(0, 4), r.msg.type, r.msg.to ? '-> ' + r.msg.to.slice(0, 4) : '', r.msg.data ? (r.msg.data.description ? 'desc ' + r.msg.data.description.type : 'cand ' + r.msg.data.candidate.candidate) : '');
  }
  await closeBrowser(a); await closeBrowser(b);
}
console.log('fails', fails);
fake.close();
