// One job's webhook deliveries: each message, its attempts, and a button to send it again.
import { api } from "./api.js";
import { badge, errorBox, h, mount, when } from "./util.js";

export function deliveriesPage(id) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  mount(h("h1", {}, "Webhook deliveries of job ", h("a", { class: "mono", href: `#/jobs/${id}` }, id.slice(0, 12))), body);
  let timer = null;
  let alive = true;
  const load = async () => {
    try {
      const list = await api(`/v1/jobs/${id}/deliveries`);
      if (!alive) return;
      body.replaceChildren(render(id, list.data, load));
      if (list.data.some((d) => d.state === "pending")) timer = setTimeout(load, 1000);
    } catch (err) { body.replaceChildren(errorBox(err)); }
  };
  load();
  return () => { alive = false; clearTimeout(timer); };
}

function render(id, list, reload) {
  if (!list.length) return h("p", { class: "muted" }, "This job sent no webhooks (none subscribed, or not finished yet).");
  return h("div", { class: "scroll" }, h("table", { id: "deliveries", "aria-label": "Webhook deliveries" },
    h("thead", {}, h("tr", {}, ["Webhook id", "Event", "URL", "State", "Attempts", "Next try", ""]
      .map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, list.map((d) => h("tr", { "data-delivery": d.id, "data-state": d.state },
      h("td", { class: "mono" }, d.id), h("td", {}, d.event), h("td", { class: "mono" }, d.url),
      h("td", {}, badge(d.state)),
      h("td", {}, h("ol", { class: "attempts" }, d.attempts.map((a) => h("li", {},
        `${when(a.at)}: ${a.status_code ?? "no answer"}${a.error ? ` (${a.error})` : ""}, ${a.duration_ms} ms`)))),
      h("td", {}, d.next_attempt_at ? when(d.next_attempt_at) : "–"),
      h("td", {}, d.state === "delivered" ? "" : h("button", { type: "button", class: "secondary", "data-retry": d.id,
        onclick: async (e) => {
          e.currentTarget.disabled = true;
          try { await api(`/v1/jobs/${id}/deliveries/${d.id}/retry`, { method: "POST" }); }
          catch (err) { e.target.after(errorBox(err)); }
          reload();
        } }, "Retry now")))))));
}
