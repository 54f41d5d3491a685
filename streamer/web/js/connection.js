// The WebSocket to the server, and plain words for everything that can go wrong with it.
// A browser is not told why a WebSocket handshake failed, so after a failure the same URL is asked over
// plain HTTP: the server answers with the refusal it would have given (401, 403, 429, 503 with
// Retry-After) or 426 when the WebSocket would have been accepted.

/** ws(s):// URL of `path` on this server with `params`. */
export function socketUrl(path, params) {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  return url.toString();
}

/** Why the server refused `url` (http(s) form), as {status, message, retryAfter, needsKey}. */
export async function diagnose(url, key) {
  const http = new URL(url);
  http.protocol = http.protocol === "wss:" ? "https:" : "http:";
  let response;
  try {
    response = await fetch(http, { headers: key ? { Authorization: `Token ${key}` } : {} });
  } catch {
    return { status: 0, message: "The server cannot be reached.", retryAfter: 2 };
  }
  let body = {};
  try {
    body = await response.json();
  } catch {
    /* not JSON: the status says enough */
  }
  const detail = body.err_msg ? ` (${body.err_msg})` : "";
  const retryAfter = Number(response.headers.get("Retry-After") || 0);
  switch (response.status) {
    case 401:
      return { status: 401, needsKey: true, message: key ? "The API key was not accepted. Check it and try again." : "This server needs an API key." };
    case 403:
      return { status: 403, message: `This page's address is not allowed to use the server${detail}.` };
    case 429:
      return { status: 429, retryAfter: retryAfter || 2, message: "This API key already has as many streams as it may." };
    case 503:
      return { status: 503, retryAfter: retryAfter || 2, message: `The server is busy${detail}.` };
    case 400:
      return { status: 400, message: `The server refused the settings${detail}.` };
    case 426:
      return { status: 426, retryAfter: 2, message: "The connection was lost." };
    default:
      return { status: response.status, retryAfter: 2, message: `The server answered ${response.status}${detail}.` };
  }
}

/** What a close code means to a user (1000: finished normally). */
export function describeClose(code, reason) {
  const why = reason ? `: ${reason}` : "";
  switch (code) {
    case 1000:
      return null;
    case 1006:
      return "The connection was lost.";
    case 1008:
      return `The server ended the stream${why}.`;
    case 1009:
      return "The server refused an audio frame that was too large.";
    case 1011:
      return `The server ended the stream${why || " after an error"}.`;
    case 1012:
      return "The server is restarting.";
    default:
      return `The connection closed (${code}${why}).`;
  }
}

/** Codes after which reconnecting makes sense (the server restarting, the network). */
export function shouldReconnect(code) {
  return code === 1006 || code === 1012 || code === 1001;
}

/** Open a WebSocket, with the key as the `token` subprotocol pair; resolves once open, rejects with
 * the diagnosis when the handshake fails. */
export function openSocket(url, key) {
  return new Promise((resolve, reject) => {
    const ws = key ? new WebSocket(url, ["token", key]) : new WebSocket(url);
    ws.binaryType = "arraybuffer";
    let opened = false;
    ws.onopen = () => {
      opened = true;
      resolve(ws);
    };
    ws.onclose = async () => {
      if (!opened) reject(await diagnose(url, key));
    };
  });
}
