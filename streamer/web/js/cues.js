// Caption cues (SRT, WebVTT, plain text) from the words of final results. The same rules as the terminal
// client's client/captions.py: a cue lasts at most 7 s and holds at most 2 lines of 42 characters, a
// pause over 1.5 s starts a new one, short cues stay 0.5 s on screen but never overlap the next.
// Pure functions: buildCues(words) with words [{word, start, end}] in seconds, then toSrt, toVtt, toText.

export const MAX_DURATION_S = 7.0;
export const MAX_CHARS = 42;
export const MAX_LINES = 2;
export const MAX_GAP_S = 1.5;
export const MIN_DURATION_S = 0.5;

/** Greedy line filling; a word longer than `width` gets a line of its own. */
export function wrap(words, width = MAX_CHARS) {
  const lines = [];
  let current = "";
  for (const word of words) {
    if (!current) current = word;
    else if (current.length + 1 + word.length <= width) current += " " + word;
    else {
      lines.push(current);
      current = word;
    }
  }
  if (current) lines.push(current);
  return lines;
}

/** Group words into cues [{start, end, lines}]; times never go backwards, cues never overlap. */
export function buildCues(words) {
  const groups = [];
  let current = [];
  for (const word of words) {
    if (current.length) {
      const tooLong = word.end - current[0].start > MAX_DURATION_S;
      const paused = word.start - current[current.length - 1].end > MAX_GAP_S;
      const noRoom = wrap([...current, word].map((w) => w.word)).length > MAX_LINES;
      if (tooLong || paused || noRoom) {
        groups.push(current);
        current = [];
      }
    }
    current.push(word);
  }
  if (current.length) groups.push(current);

  const cues = [];
  groups.forEach((group, i) => {
    let start = group[0].start;
    if (cues.length) start = Math.max(start, cues[cues.length - 1].end);
    const last = group[group.length - 1].end;
    let end = Math.max(last, start + MIN_DURATION_S);
    if (i + 1 < groups.length) end = Math.min(end, Math.max(last, groups[i + 1][0].start));
    end = Math.max(end, start + 0.001);
    cues.push({ start, end, lines: wrap(group.map((w) => w.word)) });
  });
  return cues;
}

/** `HH:MM:SS,mmm` (SRT) or, with separator ".", `HH:MM:SS.mmm` (WebVTT). */
export function timestamp(seconds, separator = ",") {
  const totalMs = Math.max(0, Math.round(seconds * 1000));
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  const hours = Math.floor(totalMs / 3600000);
  const minutes = Math.floor((totalMs % 3600000) / 60000);
  const secs = Math.floor((totalMs % 60000) / 1000);
  return `${pad(hours)}:${pad(minutes)}:${pad(secs)}${separator}${pad(totalMs % 1000, 3)}`;
}

export function toSrt(cues) {
  return cues
    .map((c, n) => `${n + 1}\n${timestamp(c.start)} --> ${timestamp(c.end)}\n${c.lines.join("\n")}\n`)
    .join("\n");
}

export function toVtt(cues) {
  const blocks = cues.map((c) => `${timestamp(c.start, ".")} --> ${timestamp(c.end, ".")}\n${c.lines.join("\n")}\n`);
  return "WEBVTT\n\n" + blocks.join("\n");
}

/** Plain text: one paragraph per line. `paragraphs` is a list of lists of words. */
export function toText(paragraphs) {
  return paragraphs.map((words) => words.map((w) => w.word).join(" ")).filter(Boolean).join("\n") + "\n";
}
