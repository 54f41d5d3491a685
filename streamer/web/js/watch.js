// The watch view: the captions of a stream someone else sends (`tag=` of /v1/listen), full screen.
// Query options: tag (or stream), size (px, default 48), lines (default 3), position (top|bottom),
// color, background, overlay=1 (transparent background, for OBS browser sources and projectors).
import { describeClose, openSocket, socketUrl } from "./connection.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(window.location.search);
const KEY_STORE = "streamer.apiKey";
const lines = [];
let interim = "";

function applyLook() {
  const root = document.documentElement.style;
  if (query.get("size")) root.setProperty("--size", `${Number(query.get("size")) || 48}px`);
  if (query.get("color")) root.setProperty("--fg", query.get("color"));
  if (query.get("background")) root.setProperty("--bg", query.get("background"));
  document.body.classList.toggle("overlay", query.get("overlay") === "1");
  document.body.classList.add(query.get("position") === "top" ? "top" : "bottom");
}

function render() {
  const keep = Math.max(1, Number(query.get("lines")) || 3);
  const shown = lines.slice(-keep);
  const elements = shown.map((text) => {
    const p = document.createElement("p");
    p.textContent = text;
    return p;
  });
  if (interim) {
    const p = document.createElement("p");
    p.className = "interim";
    p.textContent = interim;
    elements.push(p);
    if (elements.length > keep) elements.shift();
  }
  $("lines").replaceChildren(...elements);
}

function handle(message) {
  if (message.type !== "Results") return;
  const text = message.channel.alternatives[0].transcript;
  if (message.is_final) {
    interim = "";
    if (text) lines.push(text);
    if (lines.length > 200) lines.splice(0, lines.length - 200);
  } else {
    interim = text;
  }
  render();
}

function status(text) {
  $("status").textContent = text || "";
}

async function watch(target, key, attempt = 0) {
  const url = socketUrl("/v1/watch", target);
  let ws;
  try {
    ws = await openSocket(url, key);
  } catch (problem) {
    if (problem.needsKey) {
      $("pick").hidden = false;
      $("key-label").hidden = false;
      status(problem.message);
      return;
    }
    status(`${problem.message} Retrying…`);
    setTimeout(() => watch(target, key, attempt + 1), Math.min(30, 2 ** attempt) * 1000);
    return;
  }
  status("");
  ws.onmessage = ({ data }) => handle(JSON.parse(data));
  ws.onclose = ({ code, reason }) => {
    status(`${describeClose(code, reason) || "The watch ended."} Reconnecting…`);
    setTimeout(() => watch(target, key, 0), 1000);
  };
}

function start() {
  applyLook();
  const key = localStorage.getItem(KEY_STORE) || "";
  const tag = query.get("tag");
  const stream = query.get("stream");
  if (tag || stream) {
    watch(tag ? { tag } : { stream }, key);
    return;
  }
  $("pick").hidden = false;
  $("watch").addEventListener("click", () => {
    const chosen = $("tag-input").value.trim();
    const typedKey = $("key-input").value.trim();
    if (!chosen) return;
    if (typedKey) localStorage.setItem(KEY_STORE, typedKey);
    const next = new URL(window.location.href);
    next.searchParams.set("tag", chosen);
    window.location.href = next.toString();
  });
}

start();
