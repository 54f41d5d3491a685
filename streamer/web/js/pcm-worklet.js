// AudioWorklet processor: microphone audio at the context's rate -> 16 kHz mono 16-bit PCM, posted to
// the page in frames of 40 ms with the frame's RMS level. The page asks for a 16 kHz context, so the
// browser's own resampler usually did the work and this only converts; where the context runs faster
// (a browser that cannot resample a microphone), a windowed-sinc low-pass at 7.2 kHz evaluated at each
// output instant does the downsampling, so that noise above 8 kHz does not fold into speech.

const OUT_RATE = 16000;
const FRAME_SAMPLES = 640; // 40 ms at 16 kHz
const HALF_TAPS = 24; // taps on each side of an output instant, in output-rate periods' worth of input

class PcmDownsampler extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample (1 when nothing to do)
    this.cutoff = (0.45 * OUT_RATE) / sampleRate; // cycles per input sample
    this.reach = this.step > 1 ? Math.ceil(HALF_TAPS * this.step) : 0;
    this.history = new Float32Array(0); // input samples not yet fully used
    this.position = this.reach; // next output instant, in input samples from history[0]
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.energy = 0;
  }

  kernel(x) {
    // Hann-windowed sinc of the low-pass, x in input samples from the output instant.
    if (Math.abs(x) >= this.reach) return 0;
    const window = 0.5 + 0.5 * Math.cos((Math.PI * x) / this.reach);
    const arg = 2 * Math.PI * this.cutoff * x;
    const sinc = x === 0 ? 1 : Math.sin(arg) / arg;
    return 2 * this.cutoff * sinc * window;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = v < 0 ? v * 32768 : v * 32767;
    this.energy += v * v;
    if (this.filled === FRAME_SAMPLES) {
      const level = Math.sqrt(this.energy / FRAME_SAMPLES);
      this.port.postMessage({ pcm: this.frame.buffer, level }, [this.frame.buffer]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
      this.energy = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const count = input[0].length;
    const data = new Float32Array(this.history.length + count);
    data.set(this.history);
    for (const channel of input) {
      for (let i = 0; i < count; i++) data[this.history.length + i] += channel[i] / input.length;
    }
    if (this.step <= 1) {
      for (const v of data) this.emit(v);
      this.history = new Float32Array(0);
      return true;
    }
    while (this.position + this.reach < data.length) {
      const t = this.position;
      let sum = 0;
      for (let k = Math.ceil(t - this.reach); k <= Math.floor(t + this.reach); k++) sum += data[k] * this.kernel(t - k);
      this.emit(sum);
      this.position += this.step;
    }
    const keep = Math.max(0, Math.floor(this.position - this.reach));
    this.history = data.slice(keep);
    this.position -= keep;
    return true;
  }
}

registerProcessor("pcm-downsampler", PcmDownsampler);
