// canary live dashboard: keeps the server-rendered panels current from /events (server-sent events).
// The panels arrive as HTML rendered by the same Python code as report.html, so there is no chart code here.
// window.canaryDashboard records what arrived when, so tests and benchmarks can measure the latency.
"use strict";
(function () {
  const log = {
    loadId: Math.random().toString(36).slice(2),
    pageStartMs: Math.round(performance.timeOrigin),
    firstEventAtMs: null,
    events: 0,
    windows: [],   // {window_id, emitted_at_ms, judged_at_ms, received_at_ms (server), browser_at_ms, failed}
    moments: [],   // {command_id, type, appended_at_ms, shown_at_ms, painted_at_ms}
    meta: null,
  };
  window.canaryDashboard = log;
  const seenMoments = new Set();
  let token = sessionStorage.getItem("canary-operator-token") || "";

  function applyPanels(panels) {
    for (const [id, html] of Object.entries(panels)) {
      const el = document.getElementById(id);
      if (el) el.innerHTML = html;
    }
    noteMoment();
  }

  function noteMoment() {
    const el = document.querySelector("#moment [data-command-id]");
    if (!el || seenMoments.has(el.dataset.commandId)) return;
    seenMoments.add(el.dataset.commandId);
    const entry = {
      command_id: el.dataset.commandId,
      type: el.dataset.type,
      deployment_id: el.dataset.deploymentId,
      appended_at_ms: Number(el.dataset.appendedAtMs) || null,
      issued_at_ms: Number(el.dataset.issuedAtMs) || null,
      shown_at_ms: Date.now(),
      painted_at_ms: null,
    };
    log.moments.push(entry);
    requestAnimationFrame(() => { entry.painted_at_ms = Date.now(); });
  }

  function setMeta(meta) {
    log.meta = meta;
    const conn = document.getElementById("connection");
    if (meta.feed_error) {
      conn.className = "connection stale";
      conn.textContent = "Kafka feed interrupted — showing the last view";
    } else if (!meta.caught_up) {
      conn.className = "connection connecting";
      conn.textContent = "reading history…";
    } else {
      conn.className = "connection live";
      conn.textContent = "live";
    }
    const dep = document.querySelector("#replay-form input[name=deployment_id]");
    if (dep && !dep.value && meta.deployment_id) dep.placeholder = meta.deployment_id;
    refreshButtons();
  }

  function connect() {
    const source = new EventSource("/events");
    source.addEventListener("panels", (ev) => {
      if (log.firstEventAtMs === null) log.firstEventAtMs = Date.now();
      log.events += 1;
      const data = JSON.parse(ev.data);
      applyPanels(data.panels);
      setMeta(data.meta);
    });
    source.addEventListener("windows", (ev) => {
      const now = Date.now();
      for (const w of JSON.parse(ev.data).windows) log.windows.push({ ...w, browser_at_ms: now });
    });
    source.addEventListener("moment", () => noteMoment());
    source.onerror = () => {
      const conn = document.getElementById("connection");
      conn.className = "connection stale";
      conn.textContent = "disconnected — reconnecting…";
    };
  }

  // -- operator actions ------------------------------------------------------------------------------
  function refreshButtons() {
    const unlocked = Boolean(token);
    const live = Boolean(log.meta && log.meta.live);
    document.querySelectorAll("#action-buttons button, #action-buttons input").forEach((el) => {
      el.disabled = !(unlocked && live);
    });
    document.getElementById("action-buttons").setAttribute("aria-disabled", String(!(unlocked && live)));
    document.getElementById("lock").hidden = !unlocked;
    const result = document.getElementById("action-result");
    if (!unlocked) result.textContent = "read-only: enter the token to act";
    else if (!live && !result.dataset.sticky) result.textContent = "no running canary to act on";
  }

  async function act(action) {
    const result = document.getElementById("action-result");
    const deployment = log.meta && log.meta.deployment_id;
    const body = { deployment_id: deployment };
    if (action === "weight") body.weight = Number(document.getElementById("weight-input").value);
    if ((action === "rollback" || action === "promote") && !window.confirm(`${action} ${deployment}?`)) return;
    result.dataset.sticky = "1";
    result.textContent = `${action}: sending…`;
    const response = await fetch(`/api/actions/${action}`, {
      method: "POST",
      headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (response.status === 401 || response.status === 403) {
      token = "";
      sessionStorage.removeItem("canary-operator-token");
      refreshButtons();
    }
    result.textContent = response.ok
      ? `${action}: ${data.command_id} signed and sent; acknowledged by ${data.acked_by.length}/${data.waited_for.length} routers`
      : `${action} refused (${response.status}): ${data.error || response.statusText}`;
  }

  // -- replay ----------------------------------------------------------------------------------------
  async function replay(form) {
    const status = document.getElementById("replay-status");
    const frame = document.getElementById("replay-result");
    const body = Object.fromEntries(new FormData(form).entries());
    status.textContent = "replaying…";
    const response = await fetch("/api/replay", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) { status.textContent = `refused (${response.status}): ${data.error || ""}`; return; }
    status.textContent = (data.summary || []).slice(0, 2).join(" · ") + ` (${data.seconds} s)`;
    frame.srcdoc = data.html;
    frame.hidden = false;
  }

  function fillSpan() {
    const form = document.getElementById("replay-form");
    const meta = log.meta;
    if (!meta || !meta.deployment_id) return;
    form.elements.deployment_id.value = meta.deployment_id;
    form.elements.from.value = new Date(meta.started_at_ms - 5000).toISOString();
    form.elements.to.value = new Date(meta.ended_at_ms ? meta.ended_at_ms + 15000 : Date.now()).toISOString();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const initial = document.getElementById("initial-meta");
    if (initial) setMeta(JSON.parse(initial.textContent));
    noteMoment();
    document.getElementById("unlock-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      token = document.getElementById("token").value.trim();
      document.getElementById("token").value = "";
      if (token) sessionStorage.setItem("canary-operator-token", token);
      refreshButtons();
    });
    document.getElementById("lock").addEventListener("click", () => {
      token = "";
      sessionStorage.removeItem("canary-operator-token");
      refreshButtons();
    });
    document.querySelectorAll("#action-buttons button").forEach((b) => {
      b.addEventListener("click", () => act(b.dataset.action));
    });
    document.getElementById("replay-form").addEventListener("submit", (ev) => { ev.preventDefault(); replay(ev.target); });
    document.getElementById("replay-fill").addEventListener("click", fillSpan);
    connect();
  });
})();
