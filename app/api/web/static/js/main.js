// The router: the URL's fragment names the page. Pages return an optional stop() for timers.
import { loadServer, server, setKey, key } from "./api.js";
import { checkpointPage, checkpointsPage } from "./checkpoints.js";
import { deliveriesPage } from "./deliveries.js";
import { formPage } from "./form.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { pipelinePage, pipelinesPage } from "./pipelines.js";
import { h, mount } from "./util.js";

let stopPage = null;

function keyPrompt(reason) {
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", size: 60 });
  mount(h("h1", {}, "API key"),
    h("form", { id: "key-form", onsubmit: (e) => { e.preventDefault(); setKey(input.value.trim()); route(); } },
      h("p", {}, reason || "This service needs an API key. It is kept for this browser tab only (sessionStorage)."),
      h("label", { for: "api-key" }, "Key (graft_…)"), input, " ", h("button", { type: "submit" }, "Use this key")));
  input.focus();
}

function route() {
  if (stopPage) { stopPage(); stopPage = null; }
  document.getElementById("auth-state").textContent =
    server.mode === "keys" ? (key() ? "using an API key · " : "API key needed") : "local mode (no keys)";
  if (server.mode === "keys" && key()) {
    const out = h("button", { class: "secondary", onclick: () => { setKey(null); route(); } }, "forget key");
    document.getElementById("auth-state").append(out);
  }
  if (server.mode === "keys" && !key()) { keyPrompt(); return; }
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  let stop;
  if (parts[0] === "jobs" && parts[1] && parts[2] === "deliveries") stop = deliveriesPage(parts[1]);
  else if (parts[0] === "jobs" && parts[1]) stop = jobPage(parts[1]);
  else if (parts[0] === "pipelines" && parts[1]) stop = pipelinePage(decodeURIComponent(parts[1]));
  else if (parts[0] === "pipelines") stop = pipelinesPage();
  else if (parts[0] === "checkpoints" && parts[1]) stop = checkpointPage(parts[1]);
  else if (parts[0] === "checkpoints") stop = checkpointsPage();
  else if (parts[0] === "new") stop = formPage(params);
  else stop = jobsPage(params);
  stopPage = typeof stop === "function" ? stop : null;
  document.title = `Graft — ${parts[0] || "jobs"}`;
}

window.addEventListener("hashchange", route);
window.addEventListener("graft:unauthorized", () => {
  setKey(null);
  keyPrompt("That key was refused (unknown or revoked). Enter another.");
});
loadServer().then(route);
