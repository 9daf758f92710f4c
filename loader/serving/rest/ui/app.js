// modelwatch operator page: renders /modelwatch/ui's snapshots, live.
//
// Every value from the server (model names, base paths, labels, error texts) reaches the
// page as a text node (`append` of a string, or `textContent`): nothing is parsed as HTML.
"use strict";

(function () {
  const EVENTS = "/modelwatch/ui/events";
  const SNAPSHOT = "/modelwatch/ui/snapshot";
  const POLL_MS = 2000; // where EventSource is missing, or the stream was refused
  const STREAM_RETRY_MS = 30000; // the server's Retry-After for a refused stream

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? "—" : value.toFixed(digits);
  }

  function milliseconds(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const ms = seconds * 1000;
    return (ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0)) + " ms";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 1) return (seconds * 1000).toFixed(0) + " ms";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.floor(seconds % 60) + " s";
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return hours + " h " + (minutes % 60) + " min";
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  function ago(now, then) {
    return then === null || then === undefined ? "—" : duration(Math.max(0, now - then)) + " ago";
  }

  function clock(epochSeconds) {
    const d = new Date(epochSeconds * 1000);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
      "." + pad(d.getMilliseconds(), 3);
  }

  function stat(label, value, tone, note) {
    return el("div", "stat" + (tone ? " " + tone : "") + (note ? " wide" : ""),
      el("span", "label", label), el("span", "value", value),
      note ? el("span", "note", note) : null);
  }

  function stateBadge(state, failed) {
    const badge = el("span", "state " + state + (failed ? " failed" : ""), state);
    return badge;
  }

  function errorCell(code, message) {
    if (!message && (!code || code === "OK")) return el("td", null);
    return el("td", null, el("div", "error", code && code !== "OK" ? el("span", "code", code) : null,
      message || ""));
  }

  function sourceStat(now, source) {
    if (!source) return stat("Storage", "not listed yet", null, "waiting for the first listing");
    const note = "listing took " + milliseconds(source.seconds) + " · " +
      source.failures_total + " of " + source.polls_total + " failed";
    if (source.failures_in_row > 0) {
      return stat("Storage", "failing ×" + source.failures_in_row, "bad",
        "last ok " + ago(now, source.last_ok) + " · " + note);
    }
    return stat("Storage", "ok, " + ago(now, source.last_poll), "good", note);
  }

  function modelCard(now, model) {
    const failing = model.versions.some((v) => v.error_code !== "OK") ||
      (model.source && model.source.failures_in_row > 0);
    const card = el("article", "card" + (failing ? " failing" : ""));
    card.dataset.model = model.name;

    const chips = el("span", "chips");
    for (const [label, version] of Object.entries(model.labels)) {
      chips.append(el("span", "chip", label + " → " + version));
    }
    card.append(el("div", "card-head", el("h3", null, model.name),
      model.base_path ? el("span", "path", model.base_path) : null, chips));

    const requests = model.requests;
    const errors = requests ? requests.errors_per_second : null;
    const available = model.versions.filter((v) => v.state === "AVAILABLE").length;
    card.append(el("div", "stats",
      stat("Serving", available ? String(available) : "none", available ? "good" : "bad"),
      stat("Requests/s", fixed(requests ? requests.requests_per_second : null, 1)),
      stat("Errors/s", fixed(errors, 1), errors ? "bad" : null),
      stat("p99", milliseconds(requests ? requests.p99_seconds : null)),
      stat("Queue", model.queued === null ? "off" : String(model.queued)),
      sourceStat(now, model.source)));

    const body = el("tbody", null);
    for (const v of model.versions) {
      const failed = v.error_code !== "OK";
      const row = el("tr", v.state === "END" && !failed ? "ended" : null,
        el("td", "num", String(v.version)),
        el("td", "nowrap", stateBadge(v.state, failed)),
        el("td", null, el("span", "chips", ...v.labels.map((l) => el("span", "chip", l)))),
        el("td", "nowrap", ago(now, v.since)),
        errorCell(v.error_code, v.error_message));
      row.dataset.version = String(v.version);
      row.dataset.state = v.state;
      body.append(row);
    }
    if (!model.versions.length) {
      body.append(el("tr", null, el("td", "empty", "no versions found yet")));
      body.lastChild.firstChild.colSpan = 5;
    }
    const head = el("thead", null, el("tr", null, el("th", "num", "Version"), el("th", null, "State"),
      el("th", null, "Labels"), el("th", null, "Since"), el("th", null, "Error")));
    card.append(el("table", "grid versions", head, body));
    return card;
  }

  function transitionRow(t) {
    const failed = Boolean(t.error);
    const row = el("tr", null,
      el("td", "mono nowrap", clock(t.time)),
      el("td", "mono", t.model),
      el("td", "num", String(t.version)),
      el("td", "nowrap", stateBadge(t.previous, false), el("span", "arrow", "→"),
        stateBadge(t.state, failed)),
      el("td", "num", duration(t.seconds)),
      errorCell(null, t.error));
    row.dataset.model = t.model;
    row.dataset.version = String(t.version);
    row.dataset.state = t.state;
    return row;
  }

  function mebibytes(bytes) {
    return (bytes / 1048576).toFixed(0) + " MiB";
  }

  function memory(usage) {
    const resident = mebibytes(usage.resident_bytes);
    return usage.limit_bytes === null ? resident : resident + " of " + mebibytes(usage.limit_bytes);
  }

  function overLimit(usage) {  // within 5% of the limit: loads are about to be refused
    return usage.limit_bytes !== null && usage.resident_bytes > 0.95 * usage.limit_bytes;
  }

  function summary(snapshot) {
    const versions = snapshot.models.flatMap((m) => m.versions);
    const count = (test) => versions.filter(test).length;
    const failed = count((v) => v.error_code !== "OK");
    const failingSources = snapshot.models.filter((m) => m.source && m.source.failures_in_row > 0);
    const items = [
      ["models", snapshot.models.length],
      ["available", count((v) => v.state === "AVAILABLE")],
      ["loading", count((v) => v.state === "LOADING" || v.state === "START")],
      ["failed", failed, failed > 0],
      ["storage failing", failingSources.length, failingSources.length > 0],
      ["in flight", snapshot.in_flight],
      ["memory", memory(snapshot.memory), overLimit(snapshot.memory)],
      ["up", duration(snapshot.time - snapshot.started)],
      ["updated", clock(snapshot.time).slice(0, 8)],
    ];
    return items.map(([name, value, alert]) =>
      el("div", alert ? "alert" : null, el("dt", null, name), el("dd", null, String(value))));
  }

  function render(snapshot) {
    const now = snapshot.time;
    const models = document.getElementById("models");
    const cards = snapshot.models.map((m) => modelCard(now, m));
    models.replaceChildren(...(cards.length ? cards : [el("p", "empty", "No models configured.")]));
    const transitions = snapshot.transitions.map(transitionRow);
    if (!transitions.length) {
      const row = el("tr", null, el("td", "empty", "No transitions yet."));
      row.firstChild.colSpan = 6;
      transitions.push(row);
    }
    document.getElementById("transitions").replaceChildren(...transitions);
    document.getElementById("summary").replaceChildren(...summary(snapshot));
    document.getElementById("footer").textContent = "Read-only. Updates itself every second " +
      "(server-sent events). Request rates and p99 over the last " +
      snapshot.rate_window_seconds + " s; the last " + snapshot.kept_transitions +
      " transitions are kept.";
  }

  function connection(state) {
    const node = document.getElementById("connection");
    node.dataset.state = state;
    node.textContent = state;
  }

  // Poll the snapshot until `until` (a time in ms; forever without EventSource).
  function poll(until) {
    fetch(SNAPSHOT, { cache: "no-store" })
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((snapshot) => { connection("live"); render(snapshot); })
      .catch(() => connection("reconnecting"))
      .finally(() => {
        if (Date.now() + POLL_MS < until) setTimeout(() => poll(until), POLL_MS);
        else setTimeout(start, Math.max(0, until - Date.now()));
      });
  }

  function start() {
    if (!window.EventSource) {
      poll(Infinity);
      return;
    }
    const events = new EventSource(EVENTS);
    events.addEventListener("snapshot", (event) => {
      connection("live");
      render(JSON.parse(event.data));
    });
    events.addEventListener("error", () => {
      if (events.readyState !== EventSource.CLOSED) {
        connection("reconnecting"); // the browser tries again by itself
        return;
      }
      // Refused (the server's cap on streams answers 503) or failed for good: the
      // browser will not retry, so poll meanwhile and ask for a stream again later,
      // spread out so that refused pages do not all come back at once.
      events.close();
      poll(Date.now() + STREAM_RETRY_MS * (1 + Math.random() / 2));
    });
  }

  start();
})();
