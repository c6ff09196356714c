// The rnnkit playground: one panel per served run, built from GET /api/runs. Plain DOM, no libraries, nothing from the network.
"use strict";

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function field(label, input) {
  return el("label", {}, label + " ", input);
}

// The server's error, in one line: a 422's message names the field.
async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.message || (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

async function postJSON(url, body) {
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// POST, then read server-sent events as they arrive: onEvent(kind, data) for each.
async function postStream(url, body, onEvent) {
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) throw new Error(await errorText(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const parsed = JSON.parse(data);
      if (kind === "error") throw new Error(parsed.detail);
      onEvent(kind, parsed);
    }
  }
}

// A button that runs an async action, disabled meanwhile, showing its error in the panel.
function action(panel, text, run) {
  const error = el("div", { class: "error" });
  const button = el("button", { class: "run", textContent: text });
  button.addEventListener("click", async () => {
    button.disabled = true;
    error.textContent = "";
    panel.dataset.state = "busy";
    try {
      await run();
      panel.dataset.state = "done";
    } catch (e) {
      error.textContent = e.message;
      panel.dataset.state = "error";
    } finally {
      button.disabled = false;
    }
  });
  return [button, error];
}

// -- the panels, one per task ------------------------------------------------------------------

function sentimentPanel(run, panel) {
  const input = el("input", { type: "text", class: "wide input-text", value: run.example.text });
  const label = el("span", { class: "label" }), probability = el("span", { class: "probability" });
  const words = el("div", { class: "words" });
  const [button, error] = action(panel, "Classify", async () => {
    const result = await postJSON(run.endpoint, { text: input.value });
    label.textContent = result.label;
    label.className = "label " + result.label;
    probability.textContent = ` probability ${result.probability.toFixed(3)} (P(positive) = ${result.p_positive.toFixed(3)})`;
    const scale = Math.max(1e-6, ...result.words.map((w) => Math.abs(w.contribution)));
    words.replaceChildren(...result.words.map((w) => {
      const alpha = (0.15 + 0.75 * Math.abs(w.contribution) / scale).toFixed(3);
      const span = el("span", { class: "word" + (w.known ? "" : " unknown"), textContent: w.word, title: `${w.contribution >= 0 ? "+" : ""}${w.contribution.toFixed(3)}`, "data-contribution": w.contribution });
      span.style.backgroundColor = w.contribution >= 0 ? `rgba(30, 160, 60, ${alpha})` : `rgba(210, 40, 40, ${alpha})`;
      return span;
    }));
  });
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") button.click(); });
  panel.append(el("div", { class: "row" }, input), el("div", { class: "row" }, button), error,
    el("div", { class: "result" }, label, probability), words,
    el("p", { class: "legend", textContent: "Each word: the change in P(positive) when it is removed. Green pushes towards positive, red towards negative; italic: not in the vocabulary." }));
}

function generatePanel(run, panel, onDone) {
  const ex = run.example;
  const prime = el("input", { type: "text", class: "wide input-prime", value: ex.prime });
  const length = el("input", { type: "number", class: "num input-length", value: ex.length, min: 1 });
  const temperature = el("input", { type: "number", class: "num input-temperature", value: ex.temperature, step: 0.1, min: 0.05 });
  const topK = el("input", { type: "number", class: "num input-top-k", placeholder: "off", min: 1 });
  const topP = el("input", { type: "number", class: "num input-top-p", placeholder: "off", step: 0.05, min: 0.05, max: 1 });
  const output = el("pre", { class: "generated" });
  const [button, error] = action(panel, "Generate", async () => {
    const body = { prime: prime.value, length: Number(length.value), temperature: Number(temperature.value) };
    if (topK.value) body.top_k = Number(topK.value);
    if (topP.value) body.top_p = Number(topP.value);
    output.textContent = run.task === "music" ? "" : prime.value;
    await postStream(run.endpoint, body, (kind, data) => {
      if (kind === "token") output.textContent += run.task === "music" ? data.token + " " : data.token;
      else if (kind === "done" && onDone) onDone(data);
    });
  });
  panel.append(field("prime", prime),
    el("div", { class: "row" }, field("length", length), field("temperature", temperature), field("top-k", topK), field("top-p", topP)),
    el("div", { class: "row" }, button), error, output);
}

function musicPanel(run, panel) {
  const audio = el("audio", { controls: true, class: "melody" });
  const roll = el("canvas", { class: "piano-roll", width: 520, height: 160 });
  generatePanel(run, panel, (data) => {
    audio.src = "data:audio/wav;base64," + data.wav_base64;
    drawPianoRoll(roll, data.notes, data.grid);
  });
  panel.append(el("div", { class: "row" }, audio), roll);
}

function drawPianoRoll(canvas, notes, grid) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!notes.length) return;
  const low = Math.min(...notes.map((n) => n[0])) - 1, high = Math.max(...notes.map((n) => n[0])) + 1;
  const end = Math.max(...notes.map((n) => n[1] + n[2]));
  const x = (t) => 30 + (canvas.width - 34) * t / end, h = (canvas.height - 4) / (high - low + 1);
  const y = (p) => canvas.height - 2 - (p - low + 1) * h;
  ctx.fillStyle = "#999";
  ctx.font = "10px sans-serif";
  for (let p = low; p <= high; p++) if (p % 12 === 0) ctx.fillText("C" + (p / 12 - 1), 2, y(p) + h);
  for (let q = 0; q <= end; q += grid) ctx.fillRect(x(q), 0, 1, canvas.height);
  ctx.fillStyle = "#37474f";
  for (const [pitch, start, steps] of notes) ctx.fillRect(x(start), y(pitch), Math.max(1, x(start + steps) - x(start) - 1), Math.max(1, h - 1));
}

function translationPanel(run, panel) {
  const input = el("input", { type: "text", class: "wide input-text", value: run.example.text });
  const output = el("div", { class: "translation label" });
  const table = el("table", { class: "attention" });
  const [button, error] = action(panel, "Translate", async () => {
    const result = await postJSON(run.endpoint, { text: input.value });
    output.textContent = result.translation;
    const head = el("tr", {}, el("th"), ...result.source_words.map((w) => el("th", { class: "source", textContent: w })));
    const rows = result.output_words.map((w, i) => el("tr", {}, el("th", { class: "output", textContent: w }),
      ...result.attention[i].map((a) => {
        const cell = el("td", { title: a.toFixed(3) });
        cell.style.backgroundColor = `rgba(38, 50, 56, ${a.toFixed(3)})`;
        return cell;
      })));
    table.replaceChildren(head, ...rows);
  });
  panel.append(el("div", { class: "row" }, input), el("div", { class: "row" }, button), error, output, table,
    el("p", { class: "legend", textContent: "Attention: each output word's row, darker where that step looked." }));
}

function forecastPanel(run, panel) {
  const values = el("textarea", { rows: 3, class: "input-values", value: run.example.values.map((v) => +v.toPrecision(6)).join(", ") });
  const chart = el("canvas", { class: "chart", width: 520, height: 200 });
  const summary = el("div", { class: "result" });
  const [button, error] = action(panel, "Forecast", async () => {
    const numbers = values.value.split(/[\s,;]+/).filter((v) => v).map(Number);
    const result = await postJSON(run.endpoint, { values: numbers });
    summary.textContent = `next ${result.horizon}: ` + result.forecast.map((v) => +v.toPrecision(5)).join(", ");
    drawForecast(chart, result.history, result.forecast);
  });
  panel.append(field("recent values", values), el("div", { class: "row" }, button), error, summary, chart);
}

function drawForecast(canvas, history, forecast) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const all = history.concat(forecast), n = all.length;
  const low = Math.min(...all), high = Math.max(...all), span = high - low || 1;
  const x = (i) => 40 + (canvas.width - 50) * i / Math.max(1, n - 1), y = (v) => canvas.height - 20 - (canvas.height - 30) * (v - low) / span;
  ctx.fillStyle = "#666";
  ctx.font = "10px sans-serif";
  ctx.fillText(+high.toPrecision(4), 2, 14);
  ctx.fillText(+low.toPrecision(4), 2, canvas.height - 20);
  const line = (points, colour) => {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach(([i, v], k) => (k ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
  };
  line(history.map((v, i) => [i, v]), "#37474f");
  line([[history.length - 1, history[history.length - 1]], ...forecast.map((v, i) => [history.length + i, v])], "#e65100");
  ctx.fillStyle = "#37474f";
  ctx.fillText("recent values", 50, canvas.height - 4);
  ctx.fillStyle = "#e65100";
  ctx.fillText("forecast", 140, canvas.height - 4);
}

function captioningPanel(run, panel) {
  const digits = el("input", { type: "text", class: "input-digits", value: run.example.digits });
  const strip = el("canvas", { class: "strip", width: 0, height: 0 });
  const caption = el("div", { class: "caption label" });
  const [button, error] = action(panel, "Caption", async () => {
    const result = await postJSON(run.endpoint, { digits: digits.value });
    const pixels = result.strip, scale = 12;
    strip.width = pixels[0].length * scale;
    strip.height = pixels.length * scale;
    const ctx = strip.getContext("2d");
    pixels.forEach((row, r) => row.forEach((v, c) => {
      const shade = Math.round(255 * (1 - Math.min(1, Math.max(0, v))));
      ctx.fillStyle = `rgb(${shade}, ${shade}, ${shade})`;
      ctx.fillRect(c * scale, r * scale, scale, scale);
    }));
    caption.textContent = result.caption;
  });
  panel.append(el("div", { class: "row" }, field("digits (held-out test images)", digits), button), error, strip, caption);
}

function speechPanel(run, panel) {
  const file = el("input", { type: "file", accept: ".wav,audio/wav", class: "input-wav" });
  const transcript = el("div", { class: "transcript label" });
  const [button, error] = action(panel, "Transcribe", async () => {
    if (!file.files.length) throw new Error("choose a 16-bit PCM mono WAV file first");
    const bytes = new Uint8Array(await file.files[0].arrayBuffer());
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    const result = await postJSON(run.endpoint, { wav_base64: btoa(binary) });
    transcript.textContent = result.transcript || "(nothing recognised)";
  });
  panel.append(el("div", { class: "row" }, file, button), error, transcript,
    el("p", { class: "legend", textContent: "Spoken digits (zero to nine, oh), 16-bit PCM mono WAV." }));
}

const PANELS = { sentiment: sentimentPanel, charlm: generatePanel, music: musicPanel, translation: translationPanel,
  co2: forecastPanel, stocks: forecastPanel, captioning: captioningPanel, speech: speechPanel };

async function main() {
  const main = document.getElementById("panels");
  try {
    const response = await fetch("/api/runs");
    if (!response.ok) throw new Error(await errorText(response));
    const runs = await response.json();
    main.replaceChildren(...runs.map((run) => {
      const panel = el("section", { class: "panel", id: "panel-" + run.name, "data-task": run.task },
        el("h2", { textContent: `${run.name} (${run.task})` }), el("p", { class: "summary", textContent: run.summary }));
      PANELS[run.task](run, panel);
      return panel;
    }));
  } catch (e) {
    main.replaceChildren(el("p", { class: "error", textContent: "could not list the runs: " + e.message }));
  }
}

main();
