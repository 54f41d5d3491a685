// The caption view: finals in normal text, the current interim result in a lighter style replaced in
// place, a new paragraph at each speech_final or UtteranceEnd, time stamps on hover or in a side
// column, and scrolling that follows the text until the reader scrolls up.

export class Captions {
  constructor(container, { timestamps = false } = {}) {
    this.container = container;
    this.paragraphs = []; // [{element, words: [{word, start, end, confidence}]}]
    this.interim = null;
    this.offset = 0; // seconds of earlier connections, so times run on across reconnects
    this.timestamps = timestamps;
    this.follow = true;
    container.addEventListener("scroll", () => {
      const atEnd = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
      this.follow = atEnd;
    });
  }

  /** Handle one server message (Results, UtteranceEnd, ...). */
  handle(message) {
    if (message.type === "Results") {
      const alt = message.channel.alternatives[0];
      const words = (alt.words || []).map((w) => ({ ...w, start: w.start + this.offset, end: w.end + this.offset }));
      if (message.is_final) {
        this.setInterim(null);
        if (alt.transcript) this.addFinal(alt.transcript, words, message.start + this.offset);
        if (message.speech_final) this.endParagraph();
      } else {
        this.setInterim(alt.transcript);
      }
    } else if (message.type === "UtteranceEnd") {
      this.endParagraph();
    }
  }

  currentParagraph() {
    let last = this.paragraphs[this.paragraphs.length - 1];
    if (!last || last.closed) {
      const element = document.createElement("p");
      element.className = "paragraph";
      this.container.insertBefore(element, this.interimElement() ?? null);
      last = { element, words: [], closed: false };
      this.paragraphs.push(last);
    }
    return last;
  }

  addFinal(text, words, start) {
    const paragraph = this.currentParagraph();
    const span = document.createElement("span");
    span.className = "final";
    span.textContent = (paragraph.words.length ? " " : "") + text;
    span.title = formatTime(start);
    span.dataset.start = String(start);
    if (this.timestamps && !paragraph.words.length) {
      const stamp = document.createElement("time");
      stamp.textContent = formatTime(start);
      paragraph.element.append(stamp);
    }
    paragraph.element.append(span);
    paragraph.words.push(...(words.length ? words : [{ word: text, start, end: start }]));
    this.scroll();
  }

  endParagraph() {
    const last = this.paragraphs[this.paragraphs.length - 1];
    if (last) last.closed = true;
  }

  interimElement() {
    return this.container.querySelector(".interim");
  }

  setInterim(text) {
    let element = this.interimElement();
    if (!text) {
      element?.remove();
      return;
    }
    if (!element) {
      element = document.createElement("p");
      element.className = "interim";
      this.container.append(element);
    }
    element.textContent = text;
    this.scroll();
  }

  scroll() {
    if (this.follow) this.container.scrollTop = this.container.scrollHeight;
  }

  /** All final words, in order, and per paragraph (for export). */
  words() {
    return this.paragraphs.flatMap((p) => p.words);
  }

  paragraphWords() {
    return this.paragraphs.map((p) => p.words);
  }

  text() {
    return this.paragraphs.map((p) => p.words.map((w) => w.word).join(" ")).join("\n");
  }
}

export function formatTime(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
