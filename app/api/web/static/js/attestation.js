// A job's attestation (SPEC §3.3): what it attests, whether the server signed it, and
// whether its subject is the very weights this job published (checked here, in the page).
import { api, download } from "./api.js";
import { h } from "./util.js";

function utf8(base64) {
  return new TextDecoder().decode(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)));
}

export async function attestationView(job, artifacts) {
  const stored = artifacts.find((a) => a.name === "attestation");
  if (!stored) {
    return h("p", { id: "attestation", class: "muted" },
      "None: only the weights of a succeeded job are attested.");
  }
  const weights = artifacts.find((a) => a.name === "weights");
  const doc = await api(`/v1/jobs/${job.id}/attestation`);
  const signed = typeof doc.payload === "string";
  const statement = signed ? JSON.parse(utf8(doc.payload)) : doc;
  const subject = statement.subject || [];
  const verified = Boolean(weights) && subject.length === 1 &&
    subject[0].digest.sha256 === weights.sha256;
  const parity = ((statement.predicate || {}).verification || {}).parity;
  const divergence = parity && parity.first_divergence;
  return h("section", { id: "attestation", "data-verified": String(verified) },
    h("dl", { class: "kv" },
      h("dt", {}, "statement"), h("dd", { class: "mono" }, statement.predicateType || "?"),
      h("dt", {}, "signature"), h("dd", { id: "attestation-signature" }, signed
        ? `DSSE envelope, key ${doc.signatures[0].keyid.slice(0, 16)}… (graft verify --public-key checks it)`
        : "unsigned (the server has no GRAFT_SIGNING_KEY)"),
      h("dt", {}, "weights"), h("dd", { id: "attestation-check" }, verified
        ? `the statement attests these weights (sha256 ${weights.sha256.slice(0, 16)}…)`
        : h("strong", { class: "error" }, "MISMATCH: the statement does not attest this job's weights")),
      h("dt", {}, "parity"), h("dd", {}, !parity ? "not run"
        : parity.equal ? `equal (${parity.modules_compared} modules compared)`
          : `diverged at ${divergence ? divergence.target_module : "?"}`)),
    h("p", { class: "row" }, h("button", { class: "secondary", "data-download": "attestation",
      onclick: () => download(job.id, "attestation") }, "Download attestation")));
}
