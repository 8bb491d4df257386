// The JSON API, with the key (when the server wants one) from sessionStorage.
// No cookie carries authority: every call sends `Authorization: Bearer` itself.

const KEY = "graft.key";
export const server = { mode: "local", capabilities: [] };

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

export function key() { return sessionStorage.getItem(KEY); }
export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (server.mode === "keys" && key()) h["Authorization"] = `Bearer ${key()}`;
  return h;
}

// Learn the auth mode and the optional endpoints once, from a public route (never a 401).
export async function loadServer() {
  const answer = await fetch("/v1/auth");
  Object.assign(server, await answer.json());
  return server;
}

export async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: headers(options.headers) };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
  } else if (options.body !== undefined) {
    init.body = options.body;
  }
  const answer = await fetch(path, init);
  const type = answer.headers.get("content-type") || "";
  const body = type.includes("json") ? await answer.json() : await answer.text();
  if (!answer.ok) {
    if (answer.status === 401) window.dispatchEvent(new CustomEvent("graft:unauthorized"));
    throw new ApiError(answer.status, typeof body === "object" ? body : { detail: body });
  }
  return body;
}

// A signed link (10 minutes, no key needed), so a plain navigation can download the file.
export async function download(job, artifact) {
  const link = await api("/v1/links", { method: "POST", json: { job, artifact } });
  const a = document.createElement("a");
  a.href = link.url;
  a.download = link.filename || "";  // named after the source and target, as the server names it
  document.body.appendChild(a);
  a.click();
  a.remove();
  return link;
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const isTerminal = (status) => TERMINAL.has(status);

// Follow a job until it ends: Server-Sent Events read with fetch (so the key can be sent)
// where the server has them, else polling. `onJob` gets each job document. Returns a stop().
export function followJob(id, onJob, { interval = 1000 } = {}) {
  let stopped = false;
  const controller = new AbortController();
  const stop = () => { stopped = true; controller.abort(); };
  const poll = async () => {
    while (!stopped) {
      const job = await api(`/v1/jobs/${id}`);
      if (stopped) return;
      onJob(job);
      if (isTerminal(job.status)) return;
      await new Promise((r) => setTimeout(r, interval));
    }
  };
  const stream = async () => {
    const answer = await fetch(`/v1/jobs/${id}/events`, {
      headers: headers({ Accept: "text/event-stream" }), signal: controller.signal,
    });
    if (answer.status === 204) return api(`/v1/jobs/${id}`).then(onJob);
    if (!answer.ok || !answer.body) return poll();
    const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    while (!stopped) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = { type: "message", data: "" };
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event.type = line.slice(6).trim();
          else if (line.startsWith("data:")) event.data += line.slice(5).trim();
        }
        if (!event.data) continue;
        const data = JSON.parse(event.data);
        if (event.type === "status") onJob(data);
        else if (event.type === "progress") onJob({ id, _progress: data });
      }
    }
    if (!stopped) onJob(await api(`/v1/jobs/${id}`));
  };
  const run = server.capabilities.includes("job-events") ? stream : poll;
  run().catch((err) => { if (!stopped) onJob({ id, _error: err }); });
  return stop;
}
