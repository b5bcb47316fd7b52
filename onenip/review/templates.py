"""The review page's Jinja2 templates (autoescaped), kept in code so they travel with the package."""

from __future__ import annotations

import jinja2

BASE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{% block title %}onenip review{% endblock %}</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#1f2937;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:center}
header a{color:#fff}header form{margin-left:auto}main{padding:1em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{background:#fff;border:1px solid #ddd;padding:.5em;width:230px}
.card img{width:100%}.anomalous{color:#b91c1c;font-weight:600}.normal{color:#15803d;font-weight:600}
.draw{position:relative;display:inline-block;max-width:48%}.draw img{max-width:100%}.draw canvas{position:absolute;left:0;top:0;cursor:crosshair}
.fired{background:#fee2e2}.error{color:#b91c1c}.pair>img{max-width:48%;vertical-align:top}
form.inline{display:inline}label{margin-right:.8em}
</style></head><body>
<header><strong>onenip review</strong>{% if user %}<a href="/">queue</a><span>{{ user.name }} ({{ user.role }})</span>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{{ csrf }}"><button>log out</button></form>{% endif %}</header>
<main>{% block main %}{% endblock %}</main></body></html>"""

LOGIN = """{% extends "base.html" %}{% block title %}log in{% endblock %}{% block main %}
<h1>Log in</h1>{% if error %}<p class="error">{{ error }}</p>{% endif %}
<form method="post" action="/login"><p><label>user <input name="username" autocomplete="username"></label></p>
<p><label>password <input name="password" type="password" autocomplete="current-password"></label></p><button>log in</button></form>
{% endblock %}"""

QUEUE = """{% extends "base.html" %}{% block main %}
<h2>Per category</h2><table id="summary"><tr><th>category</th><th>period</th><th>predictions</th><th>alarm rate</th>
<th>false alarms among reviewed alarms</th><th>misses found</th><th>reviewed</th>{% if user.is_lead %}<th></th>{% endif %}</tr>
{% for c, periods in summaries.items() %}{% for period, s in periods %}<tr><td>{{ c }}</td><td>{{ period }}</td><td>{{ s.predictions }}</td>
<td>{{ pct(s.alarm_rate) }}</td><td>{{ pct(s.false_alarm_rate) }} of {{ s.reviewed_alarms }}</td><td>{{ s.misses_found }}</td><td>{{ s.reviewed }}</td>
{% if user.is_lead %}<td>{% if loop.first %}<form method="post" action="/apply/{{ c }}"><input type="hidden" name="csrf" value="{{ csrf }}">
<button>apply verdicts to data</button></form>{% if versions.get(c) %}<form method="post" action="/threshold/{{ c }}" class="threshold"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="model" value="{{ versions[c] }}">{{ versions[c] }}: threshold <input name="value" size="7" placeholder="value"> or false-alarm rate
<input name="fpr" size="5" placeholder="0.01"> <button>set</button></form>{% endif %}{% endif %}</td>{% endif %}</tr>{% endfor %}{% endfor %}</table>
{% if drift %}<h2>Drift checks (latest)</h2><table id="drift"><tr><th>time</th><th>category</th><th>station</th><th>check</th><th>value</th><th>limit</th><th>fired</th></tr>
{% for d in drift %}<tr class="{{ 'fired' if d.fired }}"><td>{{ d.created_at.strftime('%Y-%m-%d %H:%M') }}</td><td>{{ d.category }}</td><td>{{ d.station or '-' }}</td>
<td>{{ d.check }}</td><td>{{ '%.4g' % d.value if d.value is not none }}</td><td>{{ '%.4g' % d.limit if d.limit is not none }}</td><td>{{ 'FIRED' if d.fired else 'ok' }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Queue</h2><form method="get" action="/">
<label>category <select name="category"><option value="">all</option>{% for c in categories %}<option {{ 'selected' if c == f.category }}>{{ c }}</option>{% endfor %}</select></label>
<label>station <input name="station" value="{{ f.station or '' }}" size="8"></label>
<label>decision <select name="decision">{% for d in ['', 'anomalous', 'normal'] %}<option value="{{ d }}" {{ 'selected' if d == f.decision }}>{{ d or 'all' }}</option>{% endfor %}</select></label>
<label>review <select name="review">{% for r in ['unreviewed', 'defect', 'normal', 'unsure', 'all'] %}<option {{ 'selected' if r == f.review }}>{{ r }}</option>{% endfor %}</select></label>
<label>from <input type="date" name="since" value="{{ f.since or '' }}"></label><label>to <input type="date" name="until" value="{{ f.until or '' }}"></label>
<button>filter</button></form><p id="count">{{ items|length }} shown, nearest the threshold first</p>
<div class="cards">{% for p in items %}<div class="card" data-id="{{ p.id }}"><a href="/item/{{ p.id }}">{% if p.image_path %}<img src="/overlay/{{ p.id }}" alt="overlay">{% else %}(no stored copy){% endif %}</a>
<div class="{{ 'anomalous' if p.is_anomaly else 'normal' }}">{{ 'anomalous' if p.is_anomaly else 'normal' }}</div>
<div>score {{ '%.4f' % p.score }} / threshold {{ '%.4f' % p.threshold }}</div><div>{{ p.category }} · {{ p.station or '-' }} · {{ p.created_at.strftime('%Y-%m-%d %H:%M:%S') }}</div>
<div>review: {{ p.label or 'none' }}{% if p.defect_type %} ({{ p.defect_type }}){% endif %}</div></div>{% endfor %}</div>
{% endblock %}"""

ITEM = """{% extends "base.html" %}{% block main %}
<p><a href="/">back to the queue</a></p><h1 class="{{ 'anomalous' if p.is_anomaly else 'normal' }}">{{ 'anomalous' if p.is_anomaly else 'normal' }}: score {{ '%.4f' % p.score }}, threshold {{ '%.4f' % p.threshold }}</h1>
<p>{{ p.category }} · station {{ p.station or '-' }} · {{ p.created_at.strftime('%Y-%m-%d %H:%M:%S') }} · model {{ p.model_version or '-' }} · image sha256 {{ p.image_sha256[:12] }}</p>
{% if p.image_path %}<div class="pair"><span class="draw"><img id="image" src="/image/{{ p.id }}" alt="image"><canvas id="mask-canvas" title="draw the defect's region"></canvas></span>
<img id="overlay" src="/overlay/{{ p.id }}" alt="heatmap overlay and outline"></div>
<p>Draw the defect's region on the image (optional; a category with pixel masks needs it to take the defect into its data). <button type="button" id="clear-mask">clear drawing</button></p>{% else %}<p>No stored copy (the store was full).</p>{% endif %}
<h2>Verdict</h2><form method="post" action="/item/{{ p.id }}/verdict" id="verdict"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="mask" id="mask-field">
<label><input type="radio" name="label" value="defect"> defect</label> <label>type <input name="defect_type" placeholder="e.g. crack" size="12"></label>
<label><input type="radio" name="label" value="normal"> normal (false alarm)</label><label><input type="radio" name="label" value="unsure"> unsure</label>
<p><label>comment <input name="comment" size="50"></label></p><button>save verdict</button></form>
<h2>History</h2><table id="history"><tr><th>time</th><th>user</th><th>verdict</th><th>type</th><th>comment</th><th>model</th><th>threshold</th></tr>
{% for v in verdicts %}<tr><td>{{ v.created_at.strftime('%Y-%m-%d %H:%M:%S') }}</td><td>{{ v.user }} ({{ v.role }})</td><td>{{ v.label }}</td><td>{{ v.defect_type or '' }}</td>
<td>{{ v.comment or '' }}{% if v.mask_path %} (region drawn){% endif %}</td><td>{{ v.model_version or '-' }}</td><td>{{ '%.4f' % v.threshold if v.threshold is not none }}</td></tr>{% endfor %}</table>
<script>
(function () {
  const image = document.getElementById("image"), canvas = document.getElementById("mask-canvas");
  if (!image || !canvas) return;
  let drawing = false, drawn = false;
  const ctx = canvas.getContext("2d");
  function fit() { canvas.width = image.naturalWidth; canvas.height = image.naturalHeight; canvas.style.width = image.clientWidth + "px"; canvas.style.height = image.clientHeight + "px"; }
  if (image.complete) fit(); else image.addEventListener("load", fit);
  function paint(e) {
    if (!drawing) return;
    const box = canvas.getBoundingClientRect(), sx = canvas.width / box.width, sy = canvas.height / box.height;
    ctx.fillStyle = "rgba(255, 0, 0, 0.6)"; ctx.beginPath();
    ctx.arc((e.clientX - box.left) * sx, (e.clientY - box.top) * sy, Math.max(2, canvas.width / 40), 0, 2 * Math.PI); ctx.fill(); drawn = true;
  }
  canvas.addEventListener("mousedown", e => { drawing = true; paint(e); });
  canvas.addEventListener("mousemove", paint);
  window.addEventListener("mouseup", () => { drawing = false; });
  document.getElementById("clear-mask").addEventListener("click", () => { ctx.clearRect(0, 0, canvas.width, canvas.height); drawn = false; });
  document.getElementById("verdict").addEventListener("submit", () => { document.getElementById("mask-field").value = drawn ? canvas.toDataURL("image/png") : ""; });
})();
</script>
{% endblock %}"""

MESSAGE = """{% extends "base.html" %}{% block main %}<h1>{{ heading }}</h1><p id="message">{{ message }}</p><p><a href="/">back to the queue</a></p>{% endblock %}"""

ENVIRONMENT = jinja2.Environment(
    loader=jinja2.DictLoader({"base.html": BASE, "login.html": LOGIN, "queue.html": QUEUE, "item.html": ITEM, "message.html": MESSAGE}),
    autoescape=True,
)
ENVIRONMENT.globals["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f} %"
