// Resumable uploads (tus 1.0, /v1/uploads) with the vendored tus-js-client: a file chosen
// again after a reload (or a dropped connection) resumes where the server got to. The
// client keeps each upload's URL in localStorage under the file's fingerprint (name, type,
// size, date, endpoint) and forgets it once the upload is done.
import { api, ApiError, key, server } from "./api.js";

const CHUNK = 8 * 1024 * 1024;  // bytes per PATCH: a reload loses at most one part

function authHeaders() {
  return server.mode === "keys" && key() ? { Authorization: `Bearer ${key()}` } : {};
}

function problemOf(err) {
  const res = err && err.originalResponse;
  if (!res) return new Error(err && err.message ? err.message : String(err));
  let problem = {};
  try { problem = JSON.parse(res.getBody() || "{}"); } catch { problem = { detail: res.getBody() }; }
  return new ApiError(res.getStatus(), problem);
}

// Upload `file`; `onProgress(sent, total, resumedAt)` as parts arrive. Resolves to the
// checkpoint record (the JSON POST /v1/checkpoints answers), with `resumedAt` (bytes the
// server already held, 0 for a fresh upload).
export function uploadResumable(file, onProgress) {
  const tus = window.tus;
  if (!tus || !tus.isSupported) return Promise.reject(new Error("resumable uploads need tus-js-client"));
  return new Promise((resolve, reject) => {
    let resumedAt = 0;
    const upload = new tus.Upload(file, {
      endpoint: "/v1/uploads",
      chunkSize: CHUNK,
      retryDelays: [0, 1000, 3000, 5000],
      metadata: { filename: file.name },
      headers: authHeaders(),
      removeFingerprintOnSuccess: true,
      onProgress: (sent, total) => onProgress(sent, total, resumedAt),
      // A resumed upload starts with HEAD: its Upload-Offset is what the server kept.
      onAfterResponse: (req, res) => {
        if (req.getMethod() === "HEAD" && res.getStatus() === 200) {
          resumedAt = parseInt(res.getHeader("Upload-Offset") || "0", 10);
        }
      },
      onError: (err) => reject(problemOf(err)),
      onSuccess: async () => {
        try {
          const status = await api(new URL(upload.url, location.href).pathname);
          resolve(Object.assign({}, status.checkpoint, { resumedAt }));
        } catch (err) { reject(err); }
      },
    });
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    }).catch((err) => reject(problemOf(err)));
  });
}
