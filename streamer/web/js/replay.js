// Resuming a stream after a server restart or a lost connection: keep the audio sent since the last
// final, and reconnect with the server's resume token so that the stream goes on where it was.
// The server puts `resume: {token, from}` on each final and on Metadata; `from` is the stream second up
// to which everything is final. The audio after it is kept here (at most `maxSeconds`) and replayed.

const BYTES_PER_SECOND = 32000; // 16 kHz, 16-bit, mono

export class Replay {
  constructor(maxSeconds = 120) {
    this.maxBytes = maxSeconds * BYTES_PER_SECOND;
    this.reset();
  }

  reset() {
    this.frames = [];
    this.start = 0; // stream byte of frames[0]
    this.end = 0; // stream byte after the last frame
    this.token = null;
    this.finalBytes = 0; // stream byte up to which the server said everything is final
  }

  /** A frame about to be sent (kept before sending: if the connection fails, the replay has it). */
  record(frame) {
    this.frames.push(frame);
    this.end += frame.byteLength;
    while (this.end - this.start > this.maxBytes && this.frames.length) this.start += this.frames.shift().byteLength;
  }

  /** A server message: a `resume` field moves the replay point and frees the audio before it. */
  observe(message) {
    if (!message.resume || typeof message.resume.token !== "string") return;
    this.token = message.resume.token;
    this.finalBytes = Math.max(this.finalBytes, Math.round(Number(message.resume.from) * 16000) * 2);
    this.trim(this.finalBytes);
  }

  trim(position) {
    while (this.frames.length && this.start + this.frames[0].byteLength <= position) this.start += this.frames.shift().byteLength;
    if (this.frames.length && this.start < position) {
      this.frames[0] = this.frames[0].slice(position - this.start);
      this.start = position;
    }
  }

  /** Where the next connection starts: {position (stream byte), params (resume query, or null for a new
   * stream), lostSeconds (audio dropped for room before it was final)}. */
  plan() {
    const position = Math.max(this.finalBytes, this.start);
    const lostSeconds = (position - this.finalBytes) / BYTES_PER_SECOND;
    if (!this.token) return { position, params: null, lostSeconds };
    return { position, params: { resume: this.token, resume_from: (position / BYTES_PER_SECOND).toFixed(6) }, lostSeconds };
  }

  /** The kept frames from stream byte `position` on. */
  from(position) {
    this.trim(position);
    return this.frames.slice();
  }

  /** The server refused the token (expired, another server's): the next connection is a new stream. */
  forget() {
    this.token = null;
    this.finalBytes = this.start;
  }
}
