// RAG ingestion dashboard: uploads (several files as one batch), a live task table (Server-Sent Events), queue stats, queries,
// and a documents tab (the knowledge base's documents, with delete).
// Plain browser JavaScript, no dependencies. All server data is inserted with textContent or
// attributes, never as HTML.
"use strict";

(function () {
  const MAX_ROWS = 100;
  const STATS_EVERY_MS = 2000;
  const ACTIVE = new Set(["pending", "processing"]);
  const FINAL = new Set(["completed", "failed", "cancelled"]);
  const DOCS_PAGE = 25;

  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "ragsvc_api_key";

  /** The tenant's API key (kept in this browser only), sent with every request when set. */
  function apiKey() {
    return window.localStorage.getItem(KEY_STORAGE) || "";
  }

  function api(url, opts) {
    const options = Object.assign({}, opts || {});
    const key = apiKey();
    if (key) options.headers = Object.assign({}, options.headers || {}, { Authorization: `Bearer ${key}` });
    return fetch(url, options);
  }

  function setupApiKey() {
    const input = $("api-key");
    input.value = apiKey();
    input.addEventListener("change", () => {
      const value = input.value.trim();
      if (value) window.localStorage.setItem(KEY_STORAGE, value);
      else window.localStorage.removeItem(KEY_STORAGE);
      connect();
      refreshStats();
      if (documentsShown()) loadDocuments();
    });
  }

  /** Create an element with optional class, text and attributes. */
  function el(tag, opts) {
    const node = document.createElement(tag);
    if (!opts) return node;
    if (opts.className) node.className = opts.className;
    if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
    if (opts.attrs) {
      for (const [k, v] of Object.entries(opts.attrs)) node.setAttribute(k, String(v));
    }
    return node;
  }

  /** Parse an error response into "message (code)". */
  async function errorText(response) {
    let detail = response.statusText || "request failed";
    let code = "";
    try {
      const body = await response.json();
      if (body && typeof body === "object") {
        if (body.detail !== undefined) {
          detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
        }
        if (body.code) code = String(body.code);
      }
    } catch (_) {
      /* not JSON: keep the status text */
    }
    let text = `HTTP ${response.status}: ${detail}`;
    if (code) text += ` (${code})`;
    const retry = response.headers.get("Retry-After");
    if (retry) text += ` — retry after ${retry} s`;
    return text;
  }

  function formatTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }

  function formatSize(bytes) {
    if (typeof bytes !== "number" || !isFinite(bytes)) return "";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function clampProgress(value) {
    const n = Number(value);
    if (!isFinite(n)) return 0;
    return Math.max(0, Math.min(100, n));
  }

  // ---------------------------------------------------------------- live task table

  const tasks = new Map(); // task_id -> {data, version, row, cells}
  const tbody = $("tasks-body");
  const announcer = $("announcer");

  function announce(text) {
    announcer.textContent = text;
  }

  function buildRow(taskId) {
    const row = el("tr", { attrs: { "data-task-id": taskId } });
    const cells = {};
    cells.file = el("td", { className: "file" });
    cells.fileName = el("span", { className: "filename" });
    cells.kind = el("span", { className: "kind" });
    cells.fileSize = el("span", { className: "sub" });
    cells.file.append(cells.fileName, cells.kind, cells.fileSize);
    cells.doc = el("td", { className: "doc" });
    cells.docId = el("code");
    cells.doc.append(cells.docId);
    cells.status = el("td", { className: "status" });
    cells.badge = el("span", { className: "badge" });
    cells.status.append(cells.badge);
    cells.stage = el("td", { className: "stage" });
    cells.progress = el("td", { className: "progress-cell" });
    cells.bar = el("div", {
      className: "progress",
      attrs: { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0 },
    });
    cells.fill = el("div", { className: "progress-fill" });
    cells.bar.append(cells.fill);
    cells.percent = el("span", { className: "percent" });
    cells.progress.append(cells.bar, cells.percent);
    cells.attempts = el("td", { className: "num attempts" });
    cells.created = el("td", { className: "created" });
    cells.time = el("time");
    cells.created.append(cells.time);
    cells.details = el("td", { className: "details" });
    cells.actions = el("td", { className: "actions" });
    cells.cancel = el("button", { className: "cancel", text: "Cancel", attrs: { type: "button" } });
    cells.cancel.addEventListener("click", () => cancelTask(taskId));
    cells.actions.append(cells.cancel);
    row.append(
      cells.file, cells.doc, cells.status, cells.stage, cells.progress,
      cells.attempts, cells.created, cells.details, cells.actions,
    );
    return { row, cells };
  }

  function renderRow(entry) {
    const t = entry.data;
    const c = entry.cells;
    const status = String(t.status || "unknown");
    const progress = clampProgress(t.progress);
    const label = t.filename || t.task_id;

    entry.row.dataset.status = status;
    c.fileName.textContent = label;
    c.fileName.title = `task ${t.task_id}`;
    // The task's kind (file, text, query...) as a small tag; unknown future kinds show as they are.
    const kind = typeof t.kind === "string" ? t.kind : "";
    c.kind.textContent = kind;
    c.kind.hidden = !kind;
    c.kind.title = kind ? `${kind} task` : "";
    c.fileSize.textContent = formatSize(t.file_size);
    c.docId.textContent = t.doc_id || "";
    c.docId.title = t.doc_id || "";
    c.badge.textContent = status;
    c.badge.className = `badge badge-${status.replace(/[^a-z_-]/gi, "")}`;
    c.stage.textContent = t.stage || "";
    c.bar.setAttribute("aria-valuenow", String(Math.round(progress)));
    c.bar.setAttribute("aria-label", `Progress of ${label}`);
    c.fill.style.width = `${progress}%`;
    c.percent.textContent = `${Math.round(progress)} %`;
    c.attempts.textContent = String(t.attempt ?? 0);
    c.attempts.title = t.failures ? `${t.failures} failed attempt(s)` : "";
    c.time.dateTime = t.created_at || "";
    c.time.textContent = formatTime(t.created_at);

    c.details.textContent = "";
    c.details.classList.toggle("error-text", status === "failed");
    if (status === "failed") {
      c.details.textContent = t.error || "failed";
    } else if (status === "completed" && t.result) {
      const chunks = t.result.chunks_count;
      c.details.textContent = chunks !== undefined && chunks !== null ? `${chunks} chunk(s)` : "";
    } else if (status === "cancelling") {
      c.details.textContent = "stopping and removing partial data…";
    } else if (t.not_before && status === "pending" && t.failures) {
      c.details.textContent = `retry after ${formatTime(t.not_before)}`;
    }

    const cancellable = ACTIVE.has(status);
    c.cancel.hidden = !cancellable;
    if (!cancellable) c.cancel.disabled = false;
    c.cancel.setAttribute("aria-label", `Cancel ${label}`);
  }

  function placeRow(entry) {
    // Newest first by created time; rows are only moved when out of place (keeps focus stable).
    const created = Date.parse(entry.data.created_at) || 0;
    let before = null;
    for (const other of tbody.children) {
      if (other === entry.row) continue;
      const o = tasks.get(other.dataset.taskId);
      if (o && (Date.parse(o.data.created_at) || 0) < created) {
        before = other;
        break;
      }
    }
    if (entry.row.parentNode !== tbody || entry.row.nextSibling !== before) {
      tbody.insertBefore(entry.row, before);
    }
  }

  function trimRows() {
    while (tbody.children.length > MAX_ROWS) {
      const last = tbody.lastElementChild;
      tasks.delete(last.dataset.taskId);
      last.remove();
    }
  }

  /** Insert or update one task view (same JSON as GET /task/{id}); stale versions are ignored. */
  function upsertTask(task) {
    if (!task || typeof task.task_id !== "string") return;
    const version = Date.parse(task.updated_at) || 0;
    let entry = tasks.get(task.task_id);
    if (entry && version < entry.version) return;
    const previous = entry ? entry.data.status : null;
    if (!entry) {
      entry = { ...buildRow(task.task_id), data: task, version };
      tasks.set(task.task_id, entry);
    }
    entry.data = task;
    entry.version = version;
    renderRow(entry);
    placeRow(entry);
    trimRows();
    $("tasks-empty").hidden = tasks.size > 0;
    const batch = batchOfTask.get(task.task_id);
    if (batch) scheduleBatchRefresh(batch);
    if (previous && previous !== task.status) {
      announce(`${task.filename || task.task_id}: ${task.status}`);
      if (FINAL.has(task.status) && documentsShown()) scheduleDocuments();
    }
  }

  async function cancelTask(taskId) {
    const entry = tasks.get(taskId);
    if (!entry) return;
    entry.cells.cancel.disabled = true;
    try {
      const response = await api(`/task/${encodeURIComponent(taskId)}`, { method: "DELETE" });
      if (!response.ok) {
        const text = await errorText(response);
        entry.cells.details.textContent = `cancel failed: ${text}`;
        entry.cells.details.classList.add("error-text");
        announce(`Cancel failed: ${text}`);
        entry.cells.cancel.disabled = false;
        return;
      }
      const body = await response.json();
      announce(`${entry.data.filename || taskId}: ${body.status}`);
      refreshTask(taskId);
    } catch (err) {
      entry.cells.details.textContent = `cancel failed: ${err}`;
      entry.cells.cancel.disabled = false;
    }
  }

  async function refreshTask(taskId) {
    try {
      const response = await api(`/task/${encodeURIComponent(taskId)}`);
      if (response.ok) upsertTask(await response.json());
    } catch (_) {
      /* the event stream will catch up */
    }
  }

  // ---------------------------------------------------------------- tabs

  const tabs = [$("tab-tasks"), $("tab-documents")];

  function selectTab(tab, focus) {
    for (const t of tabs) {
      const selected = t === tab;
      t.setAttribute("aria-selected", String(selected));
      t.tabIndex = selected ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    if (tab.id === "tab-documents") loadDocuments();
  }

  function setupTabs() {
    tabs.forEach((tab, i) => {
      tab.addEventListener("click", () => selectTab(tab, false));
      tab.addEventListener("keydown", (e) => {
        let next = null;
        if (e.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
        else if (e.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
        else if (e.key === "Home") next = tabs[0];
        else if (e.key === "End") next = tabs[tabs.length - 1];
        if (next) {
          e.preventDefault();
          selectTab(next, true);
        }
      });
    });
  }

  // ---------------------------------------------------------------- documents tab

  const docs = { offset: 0, total: 0, loading: 0, timer: null };
  const docsBody = $("docs-body");
  const docsMessage = $("docs-message");

  function documentsShown() {
    return !$("panel-documents").hidden;
  }

  function scheduleDocuments() {
    // Several tasks ending together cause one reload.
    if (docs.timer) return;
    docs.timer = setTimeout(() => {
      docs.timer = null;
      loadDocuments();
    }, 500);
  }

  function setDocsMessage(text, isError) {
    docsMessage.textContent = text;
    docsMessage.classList.toggle("error-text", Boolean(isError));
  }

  async function loadDocuments() {
    const ticket = ++docs.loading; // a slower, older answer must not overwrite a newer one
    const params = new URLSearchParams({ limit: String(DOCS_PAGE), offset: String(docs.offset) });
    const status = $("docs-status").value;
    if (status) params.set("status", status);
    try {
      const response = await api(`/documents?${params}`, { cache: "no-store" });
      if (ticket !== docs.loading) return;
      if (!response.ok) {
        setDocsMessage(`Documents unavailable: ${await errorText(response)}`, true);
        return;
      }
      const body = await response.json();
      if (ticket !== docs.loading) return;
      if (body.documents.length === 0 && body.total > 0 && docs.offset > 0) {
        // The page emptied (deletes): show the last page that has documents.
        docs.offset = Math.max(0, Math.floor((body.total - 1) / DOCS_PAGE) * DOCS_PAGE);
        loadDocuments();
        return;
      }
      renderDocuments(body);
    } catch (err) {
      if (ticket === docs.loading) setDocsMessage(`Documents unavailable: ${err}`, true);
    }
  }

  function renderDocuments(body) {
    docs.total = Number(body.total) || 0;
    const rows = (body.documents || []).map(buildDocumentRow);
    docsBody.replaceChildren(...rows);
    $("docs-empty").hidden = rows.length > 0;
    const first = rows.length ? docs.offset + 1 : 0;
    $("docs-range").textContent = `${first}–${docs.offset + rows.length} of ${docs.total}`;
    $("docs-prev").disabled = docs.offset === 0;
    $("docs-next").disabled = docs.offset + rows.length >= docs.total;
    const counts = body.counts || {};
    $("docs-counts").textContent = Object.entries(counts)
      .filter(([, n]) => n > 0)
      .map(([name, n]) => `${name}: ${n}`)
      .join(" · ");
  }

  function buildDocumentRow(doc) {
    const status = String(doc.status || "unknown");
    const label = doc.file_path || doc.doc_id;
    const row = el("tr", { attrs: { "data-doc-id": doc.doc_id, "data-status": status } });
    const file = el("td", { className: "file" });
    file.append(el("span", { className: "filename", text: label, attrs: { title: doc.content_summary || "" } }));
    const idCell = el("td", { className: "doc" });
    idCell.append(el("code", { text: doc.doc_id, attrs: { title: doc.doc_id } }));
    const statusCell = el("td", { className: "status" });
    statusCell.append(el("span", { className: `badge badge-${status.replace(/[^a-z_-]/gi, "")}`, text: status }));
    const chunks = el("td", { className: "num chunks", text: doc.chunks_count ?? "" });
    const length = el("td", { className: "num", text: doc.content_length ?? "" });
    const created = el("td", { className: "created" });
    created.append(el("time", { text: formatTime(doc.created_at), attrs: { datetime: doc.created_at || "" } }));
    const updated = el("td", { className: "created" });
    updated.append(el("time", { text: formatTime(doc.updated_at), attrs: { datetime: doc.updated_at || "" } }));
    const summary = doc.error_msg || doc.content_summary || "";
    const details = el("td", { className: "details", text: summary, attrs: { title: summary } });
    details.classList.toggle("error-text", Boolean(doc.error_msg));
    const actions = el("td", { className: "actions" });
    const remove = el("button", {
      className: "delete",
      text: "Delete",
      attrs: { type: "button", "aria-label": `Delete ${label}` },
    });
    remove.addEventListener("click", () => deleteDocument(doc, label, remove, details));
    actions.append(remove);
    row.append(file, idCell, statusCell, chunks, length, created, updated, details, actions);
    return row;
  }

  async function deleteDocument(doc, label, button, details) {
    const question = `Delete document "${label}" (${doc.doc_id}) and everything derived from it?`;
    if (!window.confirm(question)) return;
    button.disabled = true;
    try {
      const response = await api(`/documents/${encodeURIComponent(doc.doc_id)}`, { method: "DELETE" });
      if (!response.ok) {
        const text = await errorText(response);
        details.textContent = `delete failed: ${text}`;
        details.classList.add("error-text");
        setDocsMessage(`Delete of ${label} failed: ${text}`, true);
        button.disabled = false;
        return;
      }
      setDocsMessage(`Deleted ${label}`, false);
      loadDocuments();
    } catch (err) {
      details.textContent = `delete failed: ${err}`;
      setDocsMessage(`Delete of ${label} failed: ${err}`, true);
      button.disabled = false;
    }
  }

  function setupDocuments() {
    $("docs-status").addEventListener("change", () => {
      docs.offset = 0;
      loadDocuments();
    });
    $("docs-refresh").addEventListener("click", () => loadDocuments());
    $("docs-prev").addEventListener("click", () => {
      docs.offset = Math.max(0, docs.offset - DOCS_PAGE);
      loadDocuments();
    });
    $("docs-next").addEventListener("click", () => {
      docs.offset += DOCS_PAGE;
      loadDocuments();
    });
  }

  // ---------------------------------------------------------------- event stream

  const connText = $("connection-text");
  const conn = $("connection");
  let source = null;

  function setConnection(state, text) {
    conn.dataset.state = state;
    connText.textContent = text;
  }

  function connect() {
    if (source) source.close();
    setConnection("connecting", "Connecting…");
    // EventSource cannot send headers: the key goes in the query string for this stream only.
    const key = apiKey();
    source = new EventSource(key ? `/events?access_token=${encodeURIComponent(key)}` : "/events");
    source.addEventListener("open", () => setConnection("live", "Live"));
    source.addEventListener("task", (event) => {
      try {
        upsertTask(JSON.parse(event.data));
      } catch (err) {
        console.warn("bad task event", err);
      }
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. an HTTP error): try again ourselves.
        setConnection("down", "Disconnected — retrying…");
        setTimeout(connect, 3000);
      } else {
        setConnection("connecting", "Reconnecting…");
      }
    });
  }

  // ---------------------------------------------------------------- uploads

  const uploadLog = $("upload-log");
  let uploadChain = Promise.resolve();

  function logUpload(file) {
    const item = el("li", { className: "upload-item" });
    const name = el("span", { className: "filename", text: file.name });
    const state = el("span", { className: "upload-state", text: "waiting…" });
    item.append(name, state);
    uploadLog.prepend(item);
    while (uploadLog.children.length > 20) uploadLog.lastElementChild.remove();
    return (text, kind) => {
      state.textContent = text;
      item.dataset.state = kind;
    };
  }

  async function uploadOne(file, report) {
    report("uploading…", "busy");
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const response = await api("/insert", { method: "POST", body: form });
      if (!response.ok) {
        report(await errorText(response), "error");
        return;
      }
      const body = await response.json();
      report(
        body.duplicate ? `already known: task ${body.task_id} (${body.status})` : `queued as task ${body.task_id}`,
        "ok",
      );
      refreshTask(body.task_id);
    } catch (err) {
      report(`network error: ${err}`, "error");
    }
  }

  // ---------------------------------------------------------------- batch uploads

  const MAX_BATCH_FILES = 100; // the service's default MAX_BATCH_FILES; smaller groups on its 413
  const BATCH_POLL_MS = 3000;
  const batchOfTask = new Map(); // task_id -> batch entry, so task events refresh their batch

  /** Read a JSON error body, or null (not JSON). */
  async function jsonOrNull(response) {
    try {
      return await response.clone().json();
    } catch (_) {
      return null;
    }
  }

  /** One line of a batch entry: a file and what became of it. */
  function batchLine(list, filename, text, state) {
    const item = el("li", { className: "batch-file", attrs: { "data-state": state } });
    const stateNode = el("span", { className: "upload-state", text });
    item.append(el("span", { className: "filename", text: filename }), stateNode);
    list.append(item);
    return stateNode;
  }

  function fileErrorText(error) {
    const code = error.error ? ` (${error.error})` : "";
    return `HTTP ${error.status_code}: ${error.detail || "refused"}${code}`;
  }

  /** The upload log entry of one batch: a head with overall progress and a cancel button, then
   * one line per file. Returns the entry the batch functions below update. */
  function logBatch(count) {
    const item = el("li", { className: "upload-item batch-item", attrs: { "data-state": "busy" } });
    const head = el("div", { className: "batch-head" });
    const title = el("span", { className: "filename", text: `Batch of ${count} files` });
    const state = el("span", { className: "upload-state", text: "waiting…" });
    const bar = el("div", {
      className: "progress",
      attrs: {
        role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0,
        "aria-label": `Progress of the batch of ${count} files`,
      },
    });
    const fill = el("div", { className: "progress-fill" });
    bar.append(fill);
    const percent = el("span", { className: "percent", text: "0 %" });
    const cancel = el("button", {
      className: "cancel cancel-batch",
      text: "Cancel batch",
      attrs: { type: "button", "aria-label": `Cancel the batch of ${count} files` },
    });
    // Progress and cancel only mean something once the server accepted the batch.
    bar.hidden = true;
    percent.hidden = true;
    cancel.hidden = true;
    const outcome = el("span", { className: "batch-outcome" });
    head.append(title, state, bar, percent, cancel, outcome);
    const files = el("ul", { className: "batch-files" });
    item.append(head, files);
    uploadLog.prepend(item);
    while (uploadLog.children.length > 20) uploadLog.lastElementChild.remove();
    const batch = { id: null, item, state, bar, fill, percent, cancel, outcome, files, lines: new Map(),
      done: false, timer: null, poll: null, loading: false };
    cancel.addEventListener("click", () => cancelBatch(batch));
    return batch;
  }

  function setBatchState(batch, text, kind) {
    batch.state.textContent = text;
    batch.item.dataset.state = kind;
  }

  function setBatchProgress(batch, value) {
    const progress = clampProgress(value);
    batch.bar.setAttribute("aria-valuenow", String(Math.round(progress)));
    batch.fill.style.width = `${progress}%`;
    batch.percent.textContent = `${Math.round(progress)} %`;
  }

  /** Show each refused file of an answer with the error the server gave it. */
  function showFileErrors(batch, errors) {
    for (const error of errors || []) {
      batchLine(batch.files, error.filename, fileErrorText(error), "error");
    }
  }

  /** Send one group of files as one POST /batch; a 413 too_many_files splits it in two. */
  async function uploadBatch(files) {
    const batch = logBatch(files.length);
    setBatchState(batch, `uploading ${files.length} files…`, "busy");
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    let response;
    try {
      response = await api("/batch", { method: "POST", body: form });
    } catch (err) {
      setBatchState(batch, `network error: ${err}`, "error");
      return;
    }
    if (!response.ok) {
      const body = await jsonOrNull(response);
      if (body && body.code === "too_many_files" && files.length > 1) {
        // The server takes fewer files per request than we assumed: send two smaller groups.
        setBatchState(batch, `${await errorText(response)} — sent again in smaller groups`, "info");
        const half = Math.ceil(files.length / 2);
        await uploadBatch(files.slice(0, half));
        await uploadBatch(files.slice(half));
        return;
      }
      setBatchState(batch, await errorText(response), "error");
      if (body && Array.isArray(body.errors)) showFileErrors(batch, body.errors);
      return;
    }
    const body = await response.json();
    batch.id = body.batch_id;
    batch.item.dataset.batchId = body.batch_id;
    for (const task of body.tasks) {
      const text = task.duplicate
        ? `already known: task ${task.task_id} (${task.status})`
        : `queued as task ${task.task_id}`;
      const line = batchLine(batch.files, task.filename, text, "ok");
      batch.lines.set(task.task_id, { node: line, text });
      batchOfTask.set(task.task_id, batch);
      refreshTask(task.task_id);
    }
    showFileErrors(batch, body.errors);
    setBatchState(batch, `${body.tasks.length} accepted, ${body.errors.length} refused`, "busy");
    batch.bar.hidden = false;
    batch.percent.hidden = false;
    batch.cancel.hidden = false;
    batch.poll = setInterval(() => refreshBatch(batch), BATCH_POLL_MS);
    refreshBatch(batch);
  }

  function scheduleBatchRefresh(batch) {
    // Many task events in a row cause one status read.
    if (batch.done || batch.timer || !batch.id) return;
    batch.timer = setTimeout(() => {
      batch.timer = null;
      refreshBatch(batch);
    }, 300);
  }

  function stopBatch(batch) {
    batch.done = true;
    clearInterval(batch.poll);
    clearTimeout(batch.timer);
    batch.cancel.hidden = true;
    for (const taskId of batch.lines.keys()) batchOfTask.delete(taskId);
  }

  /** Read GET /batch/{id} and show its overall progress, counts and each file's status. */
  async function refreshBatch(batch) {
    if (batch.done || batch.loading) return;
    if (!batch.item.isConnected) {
      stopBatch(batch); // trimmed from the log: nobody sees it any more
      return;
    }
    batch.loading = true;
    try {
      const response = await api(`/batch/${encodeURIComponent(batch.id)}`, { cache: "no-store" });
      if (!response.ok) {
        setBatchState(batch, `status unavailable: ${await errorText(response)}`, "error");
        if (response.status === 404) stopBatch(batch);
        return;
      }
      renderBatch(batch, await response.json());
    } catch (_) {
      /* the next poll tries again */
    } finally {
      batch.loading = false;
    }
  }

  function renderBatch(batch, view) {
    setBatchProgress(batch, view.progress);
    const counts = Object.entries(view.counts || {})
      .filter(([, n]) => n > 0)
      .map(([name, n]) => `${name} ${n}`)
      .join(", ");
    const refused = (view.errors || []).length;
    const prefix = view.done ? "done" : `${view.total} accepted`;
    setBatchState(batch, `${prefix}: ${counts || "no task"}${refused ? ` · ${refused} refused` : ""}`,
      view.done ? "ok" : "busy");
    for (const task of view.tasks || []) {
      const line = batch.lines.get(task.task_id);
      if (!line) continue;
      let text = `${line.text} · ${task.status}`;
      if (task.status === "failed" && task.error) text += `: ${task.error}`;
      line.node.textContent = text;
      line.node.parentNode.dataset.state = task.status === "failed" ? "error" : "ok";
    }
    if (view.done) stopBatch(batch);
  }

  async function cancelBatch(batch) {
    const question = `Cancel every pending or running task of this batch (${batch.lines.size} files)?`;
    if (!window.confirm(question)) return;
    batch.cancel.disabled = true;
    try {
      const response = await api(`/batch/${encodeURIComponent(batch.id)}`, { method: "DELETE" });
      if (!response.ok) {
        const text = `cancel failed: ${await errorText(response)}`;
        batch.outcome.textContent = text;
        batch.outcome.classList.add("error-text");
        batch.cancel.disabled = false;
        return;
      }
      const body = await response.json();
      batch.outcome.textContent = body.message;
      batch.outcome.classList.remove("error-text");
      refreshBatch(batch);
    } catch (err) {
      batch.outcome.textContent = `cancel failed: ${err}`;
      batch.outcome.classList.add("error-text");
      batch.cancel.disabled = false;
    }
  }

  function uploadFiles(fileList) {
    const files = Array.from(fileList || []);
    if (files.length === 1) {
      const report = logUpload(files[0]);
      uploadChain = uploadChain.then(() => uploadOne(files[0], report));
      return;
    }
    // Several files: one POST /batch per group, one after the other, in the order given.
    for (let i = 0; i < files.length; i += MAX_BATCH_FILES) {
      const group = files.slice(i, i + MAX_BATCH_FILES);
      uploadChain = uploadChain.then(() => uploadBatch(group));
    }
  }

  function setupUpload() {
    const input = $("file-input");
    const zone = $("dropzone");
    input.addEventListener("change", () => {
      uploadFiles(input.files);
      input.value = "";
    });
    let depth = 0;
    zone.addEventListener("dragenter", (e) => {
      e.preventDefault();
      depth += 1;
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) zone.classList.remove("dragging");
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      depth = 0;
      zone.classList.remove("dragging");
      if (e.dataTransfer) uploadFiles(e.dataTransfer.files);
    });
    // A file dropped next to the zone must not make the browser navigate away from the dashboard.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
  }

  // ---------------------------------------------------------------- queue stats

  async function refreshStats() {
    const meta = $("stats-meta");
    try {
      const response = await api("/api/queue/stats", { cache: "no-store" });
      if (!response.ok) {
        meta.textContent = `Stats unavailable: ${await errorText(response)}`;
        meta.classList.add("error-text");
        return;
      }
      const s = await response.json();
      const counts = s.counts || {};
      $("stat-pending").textContent = String(s.pending ?? counts.pending ?? 0);
      $("stat-processing").textContent = String((counts.processing ?? 0) + (counts.cancelling ?? 0));
      $("stat-completed").textContent = String(counts.completed ?? 0);
      $("stat-failed").textContent = String(counts.failed ?? 0);
      $("stat-cancelled").textContent = String(counts.cancelled ?? 0);
      $("stat-running").textContent = `${s.running_here ?? 0} / ${s.capacity ?? "?"}`;
      await refreshUsage();
      meta.classList.remove("error-text");
      meta.textContent = `Instance ${s.instance_id || "?"} · updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      meta.textContent = `Stats unavailable: ${err}`;
      meta.classList.add("error-text");
    } finally {
      setTimeout(refreshStats, STATS_EVERY_MS);
    }
  }

  // Tokens the tenant spent (GET /usage), against its budget when it has one.
  async function refreshUsage() {
    const response = await api("/usage", { cache: "no-store" });
    if (!response.ok) return;
    const u = await response.json();
    const budgets = u.budgets || {};
    const show = (spent, budget) =>
      budget == null ? String(spent ?? 0) : `${spent ?? 0} / ${budget}`;
    $("stat-tokens-day").textContent = show(u.day?.total_tokens, budgets.daily_tokens);
    $("stat-tokens-month").textContent = show(u.month?.total_tokens, budgets.monthly_tokens);
  }

  // ---------------------------------------------------------------- query

  function setupQuery() {
    const form = $("query-form");
    const submit = $("query-submit");
    const result = $("query-result");
    const meta = $("query-meta");
    const answer = $("query-answer");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const query = $("query-text").value;
      if (!query.trim()) {
        meta.textContent = "Type a question first.";
        meta.classList.add("error-text");
        return;
      }
      const payload = {
        query,
        mode: $("query-mode").value,
        only_need_context: $("query-context").checked,
      };
      submit.disabled = true;
      submit.textContent = "Asking…";
      result.setAttribute("aria-busy", "true");
      meta.classList.remove("error-text");
      meta.textContent = "Waiting for the answer…";
      const started = performance.now();
      try {
        const response = await api("/query", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(payload),
        });
        if (!response.ok) {
          meta.textContent = await errorText(response);
          meta.classList.add("error-text");
          answer.hidden = true;
          return;
        }
        const body = await response.json();
        const seconds = ((performance.now() - started) / 1000).toFixed(1);
        const kind = body.only_need_context ? "context" : "answer";
        meta.textContent = `${kind} · mode ${body.mode} · ${body.llm} · ${seconds} s`;
        answer.textContent = body.response || "(empty response)";
        answer.hidden = false;
      } catch (err) {
        meta.textContent = `network error: ${err}`;
        meta.classList.add("error-text");
      } finally {
        submit.disabled = false;
        submit.textContent = "Ask";
        result.setAttribute("aria-busy", "false");
      }
    });
    // Ctrl/Cmd+Enter submits from the textarea.
    $("query-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
    });
  }

  // ---------------------------------------------------------------- start

  setupApiKey();
  setupTabs();
  setupDocuments();
  setupUpload();
  setupQuery();
  connect();
  refreshStats();
  window.addEventListener("beforeunload", () => source && source.close());
})();
