/**
 * The daemon's small status page (GET /): VMs, jobs with live progress bars over the WebSocket,
 * and snapshot history with consistency labels, downtime and the last verification verdict. One self-contained HTML document (no
 * build step, no external assets). On the TCP listener, open it as http://HOST:PORT/#token=TOKEN:
 * the script sends the token as a bearer header, and as ?access_token= on the WebSocket URL.
 * Everything from the API is inserted with textContent, never as HTML.
 */
export const WEB_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>forksnap</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2330; background: #f6f7f9; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; } h1 small { font-weight: normal; color: #667; font-size: .85rem; }
  h2 { font-size: 1rem; margin: 1.5rem 0 .5rem; }
  table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0001; }
  th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e4e6ea; vertical-align: middle; }
  th { font-weight: 600; color: #556; font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; }
  progress { width: 12rem; height: .9rem; vertical-align: middle; }
  .badge { display: inline-block; padding: 0 .45rem; border-radius: .6rem; font-size: .8rem; background: #e4e6ea; }
  .passed { background: #d3f3dc; color: #135c2a; }
  .clean, .succeeded, .running-vm { background: #d3f3dc; color: #135c2a; }
  .crash-consistent, .cancelled { background: #fdf0c8; color: #6b5200; }
  .failed { background: #fbd9d9; color: #7a1717; }
  .running, .queued { background: #dbe8ff; color: #173c7a; }
  .muted { color: #889; } #conn.ok { color: #135c2a; } #conn.down { color: #7a1717; }
  td.num { font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>forksnap <small id="conn" class="down">connecting…</small></h1>
<h2>Virtual machines</h2>
<table id="vms"><thead><tr><th>Name</th><th>State</th><th>PID</th><th>Origin</th><th>Disks</th></tr></thead><tbody></tbody></table>
<h2>Jobs</h2>
<table id="jobs"><thead><tr><th>Job</th><th>VM</th><th>Status</th><th>Phase</th><th>Progress</th><th>Downtime</th><th>Consistency</th><th>Detail</th></tr></thead><tbody></tbody></table>
<h2>Snapshots</h2>
<table id="snapshots"><thead><tr><th>Snapshot</th><th>VM</th><th>Created</th><th>Consistency</th><th>Parent downtime</th><th>Strategy</th><th>Size</th><th>Verified</th></tr></thead><tbody></tbody></table>
<script>
(function () {
  'use strict';
  var PHASES = ['preflight', 'prepare', 'halt', 'disk-snapshot', 'capture', 'switchover', 'isolate', 'shutdown', 'materialise', 'merge', 'cleanup'];
  var match = /token=([^&]+)/.exec(location.hash);
  if (match) { sessionStorage.setItem('forksnap-token', decodeURIComponent(match[1])); history.replaceState(null, '', location.pathname); }
  var token = sessionStorage.getItem('forksnap-token');
  var jobs = {};
  var overall = {};

  function api(path) {
    return fetch(path, { headers: token ? { Authorization: 'Bearer ' + token } : {} }).then(function (r) {
      if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
      return r.json();
    });
  }
  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function badge(text) { return el('span', text || '-', 'badge ' + (text || '')); }
  function ms(value) { return value === undefined || value === null ? '-' : (Math.round(value * 100) / 100) + ' ms'; }
  function size(bytes) { return bytes > 1048576 ? (bytes / 1048576).toFixed(1) + ' MiB' : Math.round(bytes / 1024) + ' KiB'; }

  function renderVms(vms) {
    var body = document.querySelector('#vms tbody');
    body.replaceChildren();
    vms.forEach(function (vm) {
      var tr = el('tr');
      tr.append(el('td', vm.name), el('td'), el('td', vm.pid || '-'), el('td', vm.origin), el('td', (vm.disks || []).length));
      tr.children[1].append(el('span', vm.running ? 'running' : 'stopped', 'badge ' + (vm.running ? 'running-vm' : '')));
      body.append(tr);
    });
  }
  function renderSnapshots(list) {
    var body = document.querySelector('#snapshots tbody');
    body.replaceChildren();
    list.slice().reverse().forEach(function (s) {
      var tr = el('tr');
      tr.dataset.snapshot = s.id;
      var label = el('td'); label.append(badge(s.consistency));
      // Its own size on disk (an incremental snapshot counts only what differs from the one before).
      var bytes = typeof s.sizeOnDiskBytes === 'number' ? s.sizeOnDiskBytes : (s.disks || []).reduce(function (sum, d) { return sum + d.image.sizeBytes; }, 0);
      var verified = el('td'); verified.className = 'verification';
      if (s.verification) {
        verified.append(badge(s.verification.verdict), el('span', ' ' + new Date(s.verification.at).toLocaleString(), 'muted'));
        verified.dataset.verdict = s.verification.verdict;
      } else verified.append(el('span', 'never', 'muted'));
      tr.append(el('td', s.id), el('td', s.vm), el('td', new Date(s.createdAt).toLocaleString()), label, el('td', ms(s.parentDowntimeMs), 'num'), el('td', s.strategy), el('td', size(bytes), 'num'), verified);
      body.append(tr);
    });
  }
  function jobRow(id) {
    var tr = document.getElementById('job-' + id);
    if (tr) return tr;
    tr = el('tr'); tr.id = 'job-' + id;
    ['id', 'vm', 'status', 'phase', 'progress', 'downtime', 'label', 'detail'].forEach(function (name) {
      var td = el('td'); td.className = name; tr.append(td);
    });
    var bar = el('progress'); bar.max = 100; bar.value = 0;
    tr.querySelector('.progress').append(bar, el('span', '', 'percent muted'));
    document.querySelector('#jobs tbody').prepend(tr);
    return tr;
  }
  function overallPercent(job) {
    var previous = overall[job.id] || 0;
    if (job.status === 'succeeded') return 100;
    if (!job.progress) return previous;
    var index = PHASES.indexOf(job.progress.phase);
    var within = Math.max(0, Math.min(100, job.progress.percent || 0)) / 100;
    var value = index < 0 ? previous : ((index + within) / PHASES.length) * 100;
    return Math.max(previous, value);
  }
  function renderJob(job) {
    jobs[job.id] = job;
    var tr = jobRow(job.id);
    tr.dataset.status = job.status;
    tr.querySelector('.id').textContent = job.id;
    tr.querySelector('.vm').textContent = job.vm;
    tr.querySelector('.status').replaceChildren(badge(job.status));
    tr.querySelector('.phase').textContent = job.status === 'running' ? (job.phase || '') : '';
    var percent = overallPercent(job);
    overall[job.id] = percent;
    tr.querySelector('progress').value = percent;
    tr.querySelector('.percent').textContent = ' ' + Math.round(percent) + '%';
    tr.querySelector('.downtime').textContent = ms(job.downtimeMs);
    var label = tr.querySelector('.label');
    label.replaceChildren(job.consistency ? badge(job.consistency) : el('span', '-', 'muted'));
    label.dataset.consistency = job.consistency || '';
    var detail = job.error ? job.error.code + ': ' + job.error.message : (job.snapshotId ? 'snapshot ' + job.snapshotId : (job.progress && job.progress.message) || '');
    tr.querySelector('.detail').textContent = detail;
  }
  function applyEvent(event) {
    var job = jobs[event.job];
    if (!job) { api('/v1/jobs/' + encodeURIComponent(event.job)).then(renderJob).catch(function () {}); return; }
    job = Object.assign({}, job, { lastSeq: event.seq });
    switch (event.type) {
      case 'phase-start': job.status = 'running'; job.phase = event.phase; job.progress = { phase: event.phase, percent: 0 }; break;
      case 'phase-progress': job.progress = { phase: event.phase, percent: event.percent, message: event.message }; break;
      case 'phase-end': job.progress = { phase: event.phase, percent: 100 }; break;
      case 'parent-resumed': job.downtimeMs = event.downtimeMs; break;
      case 'verdict': job.consistency = event.consistency; break;
      case 'job-done': job.status = 'succeeded'; job.snapshotId = event.snapshotId; job.consistency = event.consistency; job.downtimeMs = event.downtimeMs; job.progress = undefined; refresh(); break;
      case 'job-failed': job.status = event.code === 'CANCELLED' ? 'cancelled' : 'failed'; job.error = { code: event.code, message: event.message }; job.progress = undefined; refresh(); break;
      default: break;
    }
    renderJob(job);
  }
  function refresh() {
    api('/v1/vms').then(renderVms).catch(function () {});
    api('/v1/snapshots').then(renderSnapshots).catch(function () {});
  }
  function connect(delay) {
    var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/events?job=*' + (token ? '&access_token=' + encodeURIComponent(token) : '');
    var ws = new WebSocket(url);
    var conn = document.getElementById('conn');
    ws.onopen = function () { conn.textContent = 'live'; conn.className = 'ok'; delay = 500; };
    ws.onmessage = function (message) {
      var data = JSON.parse(message.data);
      if (data.type === 'state') data.jobs.forEach(renderJob);
      else if (data.type === 'event') applyEvent(data.event);
      else if (data.type === 'dropped') api('/v1/jobs').then(function (list) { list.forEach(renderJob); }).catch(function () {});
    };
    ws.onclose = function () {
      conn.textContent = 'disconnected, retrying…'; conn.className = 'down';
      setTimeout(function () { connect(Math.min(delay * 2, 10000)); }, delay);
    };
  }
  api('/v1/jobs').then(function (list) { list.slice(-50).forEach(renderJob); }).catch(function () {});
  refresh();
  connect(500);
})();
</script>
</body>
</html>
`;
