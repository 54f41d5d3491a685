// Where the audio comes from: the microphone (through the pcm-downsampler worklet) or a file decoded in
// the browser. Both deliver 16 kHz mono 16-bit PCM ArrayBuffers to `onFrame`.

const RATE = 16000;

/** Start capturing the microphone; resolves to a stop() function. Throws a DOMException
 * (NotAllowedError, NotFoundError, ...) that the page turns into plain words. */
export async function startMicrophone({ onFrame, onLevel }) {
  if (!navigator.mediaDevices?.getUserMedia || !window.AudioWorkletNode) {
    throw new Error("unsupported");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  // A 16 kHz context lets the browser resample the microphone itself; some browsers cannot connect a
  // microphone to a context at another rate, and then the worklet downsamples from the default rate.
  let context = new AudioContext({ sampleRate: RATE });
  let source;
  try {
    source = context.createMediaStreamSource(stream);
  } catch {
    await context.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(stream);
  }
  await context.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
  const node = new AudioWorkletNode(context, "pcm-downsampler");
  node.port.onmessage = ({ data }) => {
    onLevel(data.level);
    onFrame(data.pcm);
  };
  source.connect(node);
  // The node must reach a destination to be pulled; a muted gain keeps the microphone off the speakers.
  const mute = context.createGain();
  mute.gain.value = 0;
  node.connect(mute).connect(context.destination);
  await context.resume();
  return async () => {
    stream.getTracks().forEach((t) => t.stop());
    node.port.onmessage = null;
    await context.close();
  };
}

/** Decode a recording and resample it to 16 kHz mono; resolves to an Int16Array. */
export async function decodeFile(file) {
  const bytes = await file.arrayBuffer();
  const probe = new AudioContext();
  let decoded;
  try {
    decoded = await probe.decodeAudioData(bytes);
  } finally {
    await probe.close();
  }
  const length = Math.ceil(decoded.duration * RATE);
  const offline = new OfflineAudioContext(1, Math.max(length, 1), RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  const floats = rendered.getChannelData(0);
  const pcm = new Int16Array(floats.length);
  for (let i = 0; i < floats.length; i++) {
    const v = Math.max(-1, Math.min(1, floats[i]));
    pcm[i] = v < 0 ? v * 32768 : v * 32767;
  }
  return pcm;
}

/** Send `pcm` in 40 ms frames, at real-time pace or as fast as the socket drains; `onProgress(0..1)`.
 * `shouldStop()` ends it early. Resolves when everything was handed to `send`. */
export async function playPcm(pcm, { send, realtime, onProgress, shouldStop, buffered }) {
  const frame = 640;
  const started = performance.now();
  for (let offset = 0; offset < pcm.length; offset += frame) {
    if (shouldStop()) return;
    send(pcm.slice(offset, offset + frame).buffer);
    onProgress(Math.min(1, (offset + frame) / pcm.length));
    if (realtime) {
      const due = started + ((offset + frame) / RATE) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    } else if (buffered() > 1 << 20) {
      while (buffered() > 1 << 18 && !shouldStop()) await new Promise((r) => setTimeout(r, 20));
    }
  }
}
