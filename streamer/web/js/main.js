// The live-caption page: pick a language, press Start (or drop a recording), read captions, export them.
import { Captions } from "./captions.js";
import { buildCues, toSrt, toText, toVtt } from "./cues.js";
import { describeClose, diagnose, openSocket, shouldReconnect, socketUrl } from "./connection.js";
import { Replay } from "./replay.js";
import { decodeFile, playPcm, startMicrophone } from "./sources.js";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "streamer.apiKey";
const BYTES_PER_SECOND = 32000; // 16 kHz, 16-bit, mono

const state = {
  ws: null,
  stopSource: null,
  running: false,
  stopping: false,
  retryTimer: null,
  captions: null,
  // Every frame is kept until the server says it is final: frames captured while (re)connecting are sent
  // once the socket is open, and after a server restart the stream resumes with them (nothing is lost).
  replay: new Replay(),
};

function status(text, error = false) {
  $("status").textContent = text || "";
  $("status").classList.toggle("error", Boolean(error));
}

function apiKey() {
  return $("key").value.trim();
}

async function loadModels() {
  const key = apiKey();
  let response;
  try {
    response = await fetch("/v1/models", { headers: key ? { Authorization: `Token ${key}` } : {} });
  } catch {
    status("The server cannot be reached.", true);
    return;
  }
  if (response.status === 401) {
    $("key-field").hidden = false;
    status(key ? "The API key was not accepted." : "This server needs an API key.", true);
    return false;
  }
  if (!response.ok) {
    const problem = await diagnose(socketUrl("/v1/listen", {}), key);
    status(problem.status === 426 ? `The server answered ${response.status}.` : problem.message, true);
    return false;
  }
  const { stt } = await response.json();
  const languages = [...new Set(stt.flatMap((m) => m.languages))];
  $("language").replaceChildren(...languages.map((l) => new Option(l, l)));
  $("model").replaceChildren(new Option("(language default)", ""), ...stt.map((m) => new Option(m.name, m.name)));
  if (!$("key-field").hidden && key) status("");
  return true;
}

function streamParams() {
  return {
    encoding: "linear16",
    sample_rate: 16000,
    interim_results: "true",
    vad_events: "true",
    utterance_end_ms: 1000,
    resumable: "true", // this page replays its audio after a restart (replay.js)
    language: $("language").value,
    model: $("model").value,
    tag: $("tag").value.trim(),
  };
}

function send(frame) {
  state.replay.record(frame);
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(frame);
}

async function connect(attempt = 0) {
  const plan = state.replay.plan();
  const url = socketUrl("/v1/listen", plan.params || streamParams());
  status(attempt ? "Reconnecting…" : "Connecting…");
  let ws;
  try {
    ws = await openSocket(url, apiKey());
  } catch (problem) {
    if (!state.running) return;
    if (problem.needsKey) $("key-field").hidden = false;
    if (problem.status === 400 && plan.params) {
      // The token was refused (expired, or a server with another secret): go on as a new stream.
      state.replay.forget();
      status(`The stream could not be resumed (${problem.message}) Starting a new one…`, true);
      return connect(attempt + 1);
    }
    if (problem.retryAfter) return retry(problem, attempt);
    status(problem.message, true);
    await stop(false);
    return;
  }
  if (!state.running) {
    ws.close(1000);
    return;
  }
  state.ws = ws;
  // A resumed stream keeps the stream's times; a new one starts at 0 where its audio starts.
  if (!plan.params) state.captions.offset = plan.position / BYTES_PER_SECOND;
  status(attempt ? (plan.params ? "Reconnected: the stream goes on." : "Reconnected.") : "Listening…");
  if (plan.lostSeconds > 0) status(`Reconnected, but ${plan.lostSeconds.toFixed(1)} s of audio could not be kept.`, true);
  ws.onmessage = ({ data }) => {
    const message = JSON.parse(data);
    state.replay.observe(message);
    state.captions.handle(message);
  };
  ws.onclose = ({ code, reason }) => onClosed(ws, code, reason);
  for (const frame of state.replay.from(plan.position)) ws.send(frame);
}

function retry(problem, attempt) {
  let left = Math.max(problem.retryAfter, Math.min(30, 2 ** attempt));
  const tick = () => {
    if (!state.running) return;
    if (left <= 0) return connect(attempt + 1);
    status(`${problem.message} Retrying in ${left} s…`, true);
    left -= 1;
    state.retryTimer = setTimeout(tick, 1000);
  };
  tick();
}

function onClosed(ws, code, reason) {
  if (state.ws !== ws) return;
  state.ws = null;
  const message = describeClose(code, reason);
  if (state.running && !state.stopping && shouldReconnect(code)) {
    retry({ message: message || "The connection was lost.", retryAfter: 1 }, 0);
    return;
  }
  if (message && !state.stopping) status(message, true);
  else if (state.stopping) status("Stopped.");
  finishStop();
}

function finishStop() {
  state.running = false;
  state.stopping = false;
  $("start").disabled = false;
  $("file").disabled = false;
  $("stop").disabled = true;
  $("level").value = 0;
}

/** Stop capturing; with `closeStream`, ask the server for the last finals and keep them. */
async function stop(closeStream = true) {
  clearTimeout(state.retryTimer);
  if (state.stopSource) {
    const stopSource = state.stopSource;
    state.stopSource = null;
    await stopSource();
  }
  if (closeStream && state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.stopping = true;
    status("Finishing…");
    state.ws.send(JSON.stringify({ type: "CloseStream" }));
    return; // onClosed finishes once the last finals and Metadata have come
  }
  state.ws?.close(1000);
  finishStop();
}

function beginSession() {
  state.running = true;
  state.stopping = false;
  state.replay.reset();
  state.captions.offset = 0;
  $("start").disabled = true;
  $("file").disabled = true;
  $("stop").disabled = false;
}

async function startMic() {
  beginSession();
  try {
    state.stopSource = await startMicrophone({ onFrame: send, onLevel: (v) => ($("level").value = Math.min(1, v * 4)) });
  } catch (error) {
    finishStop();
    const words = {
      NotAllowedError: "Microphone permission was denied. Allow it in the browser's site settings and try again.",
      NotFoundError: "No microphone was found.",
      NotReadableError: "The microphone is in use by another program.",
    };
    status(error.message === "unsupported" ? "This browser cannot capture audio here (it needs a secure page, https or localhost)." : words[error.name] || `The microphone could not start: ${error.message}`, true);
    return;
  }
  await connect();
}

async function startFile(file) {
  if (!file) return;
  beginSession();
  status(`Decoding ${file.name}…`);
  let pcm;
  try {
    pcm = await decodeFile(file);
  } catch {
    finishStop();
    status(`${file.name} could not be decoded as audio.`, true);
    return;
  }
  let stopped = false;
  state.stopSource = async () => {
    stopped = true;
  };
  await connect();
  $("progress").hidden = false;
  await playPcm(pcm, {
    send,
    realtime: $("realtime").checked,
    onProgress: (p) => ($("progress").value = p),
    shouldStop: () => stopped || !state.running,
    buffered: () => state.ws?.bufferedAmount ?? 0,
  });
  if (state.running && !stopped) await stop(true);
}

function download(name, text, type) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function init() {
  state.captions = new Captions($("captions"));
  const remembered = localStorage.getItem(KEY_STORE);
  if (remembered) {
    $("key").value = remembered;
    $("remember").checked = true;
    $("key-field").hidden = false;
  }
  $("key").addEventListener("change", () => {
    if ($("remember").checked) localStorage.setItem(KEY_STORE, apiKey());
    loadModels();
  });
  $("remember").addEventListener("change", () => {
    if ($("remember").checked) localStorage.setItem(KEY_STORE, apiKey());
    else localStorage.removeItem(KEY_STORE);
  });
  $("large").addEventListener("change", () => document.body.classList.toggle("large", $("large").checked));
  $("stamps").addEventListener("change", () => (state.captions.timestamps = $("stamps").checked));
  $("start").addEventListener("click", startMic);
  $("stop").addEventListener("click", () => stop(true));
  $("file").addEventListener("change", () => startFile($("file").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (!state.running) startFile(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file").click();
  });
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(state.captions.text());
      status("Copied.");
    } catch {
      status("The browser did not allow copying; select the text instead.", true);
    }
  });
  $("save-txt").addEventListener("click", () => download("captions.txt", toText(state.captions.paragraphWords()), "text/plain"));
  $("save-srt").addEventListener("click", () => download("captions.srt", toSrt(buildCues(state.captions.words())), "application/x-subrip"));
  $("save-vtt").addEventListener("click", () => download("captions.vtt", toVtt(buildCues(state.captions.words())), "text/vtt"));
  $("tag").addEventListener("input", () => {
    const tag = $("tag").value.trim();
    $("watch-link").href = tag ? `/watch?tag=${encodeURIComponent(tag)}` : "/watch";
  });
  loadModels();
}

init();
// Tests and scripts can see the page's state.
window.streamerPage = { state, diagnose };
