// The console's few behaviours: log out, operator buttons, and live updates. Lists
// (data-live) are drawn from the API's JSON, first from the copy the page carries, then every
// two seconds; parts of a page (data-refresh) are fetched again from the server, at once when
// the JSON they watch (data-watch) changes, else every data-interval milliseconds.
"use strict";
(() => {
  const API = document.body.dataset.api;
  const POLL = 2000;

  function csrf() {
    const found = document.cookie.split("; ").find((c) => c.startsWith("dicomnode_csrf="));
    return found ? found.slice("dicomnode_csrf=".length) : "";
  }

  function flash(text, bad) {
    const box = document.getElementById("flash");
    box.textContent = text;
    box.className = bad ? "bad" : "good";
    box.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  async function call(method, url) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf();
    const response = await fetch(url, { method, headers, credentials: "same-origin" });
    if (response.status === 401) {
      location.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
      throw new Error("not logged in");
    }
    return response;
  }

  async function detail(response) {
    try { return (await response.json()).detail; } catch (e) { return response.statusText; }
  }

  // --- formatting: the same as the templates' filters (dicomnode/web/pages) ---------------
  const when = (iso) => (iso ? iso.slice(0, 19).replace("T", " ") : "–");

  function td(content, cls) {
    const cell = document.createElement("td");
    if (cls) cell.className = cls;
    if (content instanceof Node) cell.append(content); else cell.textContent = content ?? "";
    return cell;
  }
  function link(href, text, cls) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (cls) a.className = cls;
    return a;
  }
  function badge(state) {
    const span = document.createElement("span");
    span.className = `state state-${state}`;
    span.textContent = state;
    return span;
  }
  const code = (text) => { const c = document.createElement("code"); c.textContent = text; return c; };

  const ROWS = {
    jobs(j) {
      const tr = document.createElement("tr");
      tr.dataset.job = j.id;
      tr.dataset.series = j.series_instance_uid;
      tr.append(td(link(`/jobs/${j.id}`, String(j.id)), "num"),
        td(link(`/series/${encodeURIComponent(j.series_instance_uid)}`, j.series_instance_uid)),
        td(j.pipeline || "–"), td(j.rule || ""), td(badge(j.state)), td(String(j.attempts), "num"),
        td(String(j.instances), "num"), td(when(j.created_at)), td(when(j.updated_at)),
        td(j.error_kind || "", "wrap"));
      return tr;
    },
    series(s) {
      const tr = document.createElement("tr");
      tr.dataset.series = s.series_instance_uid;
      tr.append(td(link(`/series/${encodeURIComponent(s.series_instance_uid)}`, s.series_instance_uid)),
        td(s.modality || "–"), td(s.series_description || "", "wrap"), td(String(s.instances), "num"),
        td(badge(s.state)), td(String(s.revision), "num"), td(when(s.first_received_at)),
        td(when(s.last_received_at)));
      return tr;
    },
  };

  function draw(table, listing) {
    const text = JSON.stringify(listing);
    if (table.drawn === text) return;
    table.drawn = text;
    const rows = listing.items.map(ROWS[table.dataset.live]);
    if (!rows.length) {
      const empty = td("none", "note");
      empty.colSpan = table.tHead.rows[0].cells.length;
      const tr = document.createElement("tr");
      tr.append(empty);
      rows.push(tr);
    }
    table.tBodies[0].replaceChildren(...rows);
    document.querySelectorAll("[data-total]").forEach((t) => { t.textContent = listing.total; });
  }

  async function pollList(table) {
    const response = await call("GET", table.dataset.source);
    if (response.ok) draw(table, await response.json());
  }

  // --- parts of a page fetched again ---------------------------------------------------------
  const VERSIONS = {
    // dicomnode.web.pages.job_version
    job: (j) => [j.state, j.updated_at, j.results.files.length,
      j.deliveries.map((d) => `${d.state}${d.attempts}`).join(",")].join("|"),
  };

  async function refresh(part, force) {
    if (part.dataset.watch && !force) {
      const response = await call("GET", part.dataset.watch);
      if (!response.ok) return;
      const shown = part.querySelector("[data-version]");
      if (shown && shown.dataset.version === VERSIONS.job(await response.json())) return;
    }
    const response = await call("GET", part.dataset.refresh);
    if (response.ok) part.innerHTML = await response.text();
  }

  function every(milliseconds, task) {
    let busy = false;
    const run = async (force) => {
      if (busy || (document.hidden && !force)) return;
      busy = true;
      try { await task(force); } catch (e) { /* the next round tries again */ } finally { busy = false; }
    };
    setInterval(run, milliseconds);
    return run;
  }

  const updaters = [];

  function start() {
    document.querySelectorAll("table[data-live]").forEach((table) => {
      draw(table, JSON.parse(document.getElementById(table.dataset.initial).textContent));
      updaters.push(every(POLL, () => pollList(table)));
    });
    document.querySelectorAll("[data-refresh]").forEach((part) => {
      updaters.push(every(Number(part.dataset.interval) || POLL, (force) => refresh(part, force)));
    });
  }

  // --- actions -------------------------------------------------------------------------------
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-post]");
    if (!button || button.disabled) return;
    if (button.dataset.confirm && !confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      const response = await call("POST", button.dataset.post);
      if (response.ok) flash(button.dataset.done || "done");
      else flash(`refused (${response.status}): ${await detail(response)}`, true);
    } catch (e) {
      flash(String(e), true);
    } finally {
      button.disabled = false;
      updaters.forEach((update) => update(true));
    }
  });

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      await call("POST", `${API}/logout`);
      location.href = "/login";
    });
  }

  start();
})();
