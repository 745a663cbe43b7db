// A neuron on the reader's own text, computed in the page (reports/try_a_neuron).
//
//   approx_j(n) = sum_{i<=n} pos[n, i] contribution[j, t_i] + offset[n, j],   t_0 = BOS
//
// The files beside this script (data/, written by ctxneurons.book.live.export at build time):
// manifest.json, the model's tokenizer.json, the shared kernel's lower triangle in row
// blocks and one file per neuron (its contribution column, then its offsets), all float16.
// A neuron's file and the kernel blocks are fetched when first needed. The reader's text is
// data: it reaches the page only through textContent, never as markup.
//
// For tests and curious readers:
//   window.ctxneuronsNeurons             the neurons the page offers (numbers)
//   window.ctxneuronsApprox(j, text)     Promise of {tokens, values, ids, pieces, truncated}:
//                                        the decoded tokens after BOS and the values shaded
import { Tokenizer } from "./tokenizers.mjs";

const DATA = new URL("data/", import.meta.url);
const POSITIVE = [214, 39, 40];
const NEGATIVE = [31, 119, 180];
const TOP_K = 6;

// float16 -> float32 for every bit pattern: float32 holds each float16 exactly.
const F16 = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    t[h] = e === 0 ? sign * m * 2 ** -24 : e === 31 ? (m ? NaN : sign * Infinity) : sign * (1 + m / 1024) * 2 ** (e - 15);
  }
  return t;
})();

async function fetchOk(name) {
  const resp = await fetch(new URL(name, DATA));
  if (!resp.ok) throw new Error(`${name}: HTTP ${resp.status}`);
  return resp;
}

const DAMAGED = "this page's data is damaged (rebuild the book to export it again)";

async function sha256Hex(buf) {
  if (!globalThis.crypto || !crypto.subtle) return null; // not a secure context: sizes and values still checked
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A data file, checked against the manifest (its size and SHA-256) and for values that are
// not finite: a truncated or altered file is an error the status line shows, never numbers.
async function fetchF16(m, name) {
  const buf = await (await fetchOk(name)).arrayBuffer();
  const want = m.bytes ? m.bytes[name] : undefined;
  if (want !== undefined && buf.byteLength !== want) {
    throw new Error(`${DAMAGED}: ${name} has ${buf.byteLength} bytes, the manifest says ${want}`);
  }
  const hash = m.sha256 ? m.sha256[name] : undefined;
  if (hash !== undefined) {
    const got = await sha256Hex(buf);
    if (got !== null && got !== hash) throw new Error(`${DAMAGED}: ${name} fails its SHA-256 check`);
  }
  const view = new DataView(buf);
  const out = new Float32Array(view.byteLength / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = F16[view.getUint16(2 * i, true)];
    if (!Number.isFinite(out[i])) throw new Error(`${DAMAGED}: ${name} holds a value that is not a number`);
  }
  return out;
}

const manifest = fetchOk("manifest.json").then((r) => r.json());
const tokenizer = manifest.then(async (m) => {
  const [json, config] = await Promise.all(m.tokenizer.map((f) => fetchOk(f).then((r) => r.json())));
  return new Tokenizer(json, config);
});
const neuronFiles = new Map();
const kernelBlocks = new Map();

function cached(map, key, load) {
  if (!map.has(key)) {
    const p = load();
    p.catch(() => map.delete(key)); // a failed fetch is tried again next time
    map.set(key, p);
  }
  return map.get(key);
}

async function neuronRecord(m, neuron) {
  const entry = m.neurons.find((e) => e.neuron === neuron);
  if (!entry) throw new Error(`neuron ${neuron} is not on this page; it offers ${m.neurons.map((e) => e.neuron).join(", ")}`);
  const rec = await cached(neuronFiles, neuron, () => fetchF16(m, entry.file));
  return { col: rec.subarray(0, m.vocab_size), offset: rec.subarray(m.vocab_size) };
}

// Row n of the kernel, pos[n, 0..n], from block floor(n / B), which starts at row b*B.
function kernelRow(m, blocks, n) {
  const b = Math.floor(n / m.kernel_block);
  const first = b * m.kernel_block;
  const start = (n * (n + 1)) / 2 - (first * (first + 1)) / 2;
  return blocks.get(b).subarray(start, start + n + 1);
}

async function compute(neuron, text) {
  const [m, tok] = await Promise.all([manifest, tokenizer]);
  const enc = tok.encode(String(text), { add_special_tokens: false });
  const keep = m.n_positions - 1;
  const truncated = enc.ids.length > keep;
  const ids = enc.ids.slice(0, keep);
  const seq = [m.bos_id, ...ids];
  const L = seq.length;
  const nBlocks = Math.floor((L - 1) / m.kernel_block) + 1;
  const [rec, ...blockList] = await Promise.all([
    neuronRecord(m, neuron),
    ...Array.from({ length: nBlocks }, (_, b) => cached(kernelBlocks, b, () => fetchF16(m, m.kernel_files[b]))),
  ]);
  const blocks = new Map(blockList.map((blk, b) => [b, blk]));
  const per = seq.map((t) => rec.col[t]);
  const values = [];
  for (let n = 1; n < L; n++) {
    const row = kernelRow(m, blocks, n);
    let s = rec.offset[n];
    for (let i = 0; i <= n; i++) s += row[i] * per[i];
    values.push(s);
  }
  const decoder = tok.decoder;
  return {
    tokens: ids.map((i) => tok.decode([i])),
    pieces: enc.tokens.slice(0, keep).map((t) => (decoder ? decoder.decode([t]) : t)),
    ids,
    values,
    truncated,
    // Token i's share of approx at position n (n >= 1), for the window table.
    terms: (n) => Array.from(kernelRow(m, blocks, n), (p, i) => p * per[i]),
    offset: (n) => rec.offset[n],
  };
}

window.ctxneuronsApprox = async (neuron, text) => {
  const r = await compute(Number(neuron), text);
  return { tokens: r.tokens, values: r.values, ids: r.ids, pieces: r.pieces, truncated: r.truncated };
};

function shade(v, vmax) {
  if (!Number.isFinite(v) || vmax <= 0) return "transparent";
  const [r, g, b] = v >= 0 ? POSITIVE : NEGATIVE;
  return `rgba(${r},${g},${b},${Math.min(Math.abs(v) / vmax, 1).toFixed(3)})`;
}

function el(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function fmt(v) {
  return Number(v).toPrecision(3);
}

// The tokens of the window ending at position n that move approx_j(n) most, each token's
// occurrences summed: sum over i <= n with t_i = t of pos[n, i] contribution[j, t].
function windowTable(m, r, n) {
  const terms = r.terms(n);
  const byToken = new Map();
  terms.forEach((v, i) => {
    // Keyed and labelled by what the model reads: words a word-level vocabulary lacks all
    // read as its unknown token. BOS is unquoted, every token quoted.
    const key = i === 0 ? "BOS" : r.ids[i - 1];
    const label = i === 0 ? "BOS" : JSON.stringify(r.tokens[i - 1]);
    const cur = byToken.get(key) || { label, sum: 0, count: 0 };
    cur.sum += v;
    cur.count += 1;
    byToken.set(key, cur);
  });
  const rows = [...byToken.values()];
  const pos = rows.filter((x) => x.sum > 0).sort((a, b) => b.sum - a.sum).slice(0, TOP_K);
  const neg = rows.filter((x) => x.sum < 0).sort((a, b) => a.sum - b.sum).slice(0, TOP_K);
  const table = el("table", undefined, { class: "ctxn-live-window" });
  const head = el("tr");
  for (const h of ["raise it", "", "lower it", ""]) head.append(el("th", h));
  const thead = el("thead");
  thead.append(head);
  table.append(thead);
  const body = el("tbody");
  for (let k = 0; k < Math.max(pos.length, neg.length); k++) {
    const tr = el("tr");
    for (const x of [pos[k], neg[k]]) {
      tr.append(el("td", x ? x.label + (x.count > 1 ? ` ×${x.count}` : "") : ""));
      tr.append(el("td", x ? (x.sum > 0 ? "+" : "") + fmt(x.sum) : ""));
    }
    body.append(tr);
  }
  table.append(body);
  const caption = el(
    "p",
    `approx at token ${n} (${JSON.stringify(r.pieces[n - 1])}) = ${fmt(r.values[n - 1])}: ` +
      `the tokens of the window ending there (BOS included) add ${fmt(terms.reduce((a, b) => a + b, 0))}, ` +
      `the position's offset ${fmt(r.offset(n))}. Tokens that move it most (occurrences summed; click a token to choose the position):`,
  );
  return [caption, table];
}

function setUp(widget, m) {
  const select = widget.querySelector(".ctxn-live-neuron");
  const box = widget.querySelector(".ctxn-live-text");
  const status = widget.querySelector(".ctxn-live-status");
  const out = widget.querySelector(".ctxn-live-tokens");
  const top = widget.querySelector(".ctxn-live-top");
  // Where a text is partly outside the model's vocabulary (a word-level tokenizer such as the
  // toy's reads every unknown word as one placeholder token), say how much and what to do.
  let warning = widget.querySelector(".ctxn-live-warning");
  if (!warning) {
    warning = el("div", undefined, { class: "ctxn-live-warning", role: "alert" });
    warning.style.cssText = "display:none;border-left:4px solid #e0a800;background:#fff8e1;padding:.4em .6em;margin:.4em 0";
    out.before(warning);
  }
  if (widget.dataset.exportId !== m.id) {
    status.textContent =
      `This page was built with circuit data ${widget.dataset.exportId}, but the site holds ${m.id}: ` +
      "rebuild the book so that the page and its data come from the same run.";
    return;
  }
  for (const e of m.neurons) select.append(el("option", e.label ? `${e.neuron} — ${e.label}` : String(e.neuron), { value: String(e.neuron) }));
  // A link from the neuron browser (try_a_neuron.html#neuron-<j>) opens on that neuron.
  const wanted = /^#neuron-(\d+)$/.exec(window.location.hash);
  if (wanted && m.neurons.some((e) => e.neuron === Number(wanted[1]))) select.value = wanted[1];
  let latest = 0;
  let chosen = null; // the position the window table explains; null: the last token
  let result = null;
  widget.dataset.renders = "0";

  function showWindow() {
    top.replaceChildren();
    if (!result || result.values.length === 0) return;
    const n = chosen !== null && chosen <= result.values.length ? chosen : result.values.length;
    top.append(...windowTable(m, result, n));
  }

  async function update() {
    const ticket = ++latest;
    const neuron = Number(select.value);
    try {
      const r = await compute(neuron, box.value);
      if (ticket !== latest) return; // the reader typed on
      result = r;
      const vmax = Math.max(0, ...r.values.filter(Number.isFinite).map(Math.abs));
      out.replaceChildren(
        ...r.values.map((v, k) => {
          const unknown = m.unk_id !== null && r.ids[k] === m.unk_id && r.pieces[k] !== r.tokens[k];
          const span = el("span", r.pieces[k], {
            title: `${JSON.stringify(r.tokens[k])}${unknown ? " (not in the vocabulary)" : ""}: ${fmt(v)}`,
            "data-position": String(k + 1),
          });
          span.style.background = shade(v, vmax);
          if (unknown) span.style.textDecoration = "underline dotted";
          span.addEventListener("click", () => {
            chosen = k + 1;
            showWindow();
          });
          return span;
        }),
      );
      const unknownAt = r.ids.map((id, k) => m.unk_id !== null && id === m.unk_id && r.pieces[k] !== r.tokens[k]);
      const nUnknown = unknownAt.filter(Boolean).length;
      widget.dataset.unknownTokens = String(nUnknown);
      if (nUnknown > 0) {
        const share = nUnknown / r.ids.length;
        const placeholder = JSON.stringify(r.tokens[unknownAt.indexOf(true)]);
        warning.textContent =
          `${nUnknown} of ${r.ids.length} tokens (${Math.round(100 * share)}%) are not in this model's vocabulary ` +
          `(underlined): each reads as ${placeholder}, so the shading there shows what that placeholder does, ` +
          `not your words${share >= 0.5 ? ", and for most of this text that is all the neuron sees" : ""}. ` +
          (widget.dataset.unknownHint || "Use text in the model's own vocabulary.");
        warning.style.display = "";
      } else {
        warning.textContent = "";
        warning.style.display = "none";
      }
      status.textContent =
        `neuron ${neuron} · ${r.ids.length} tokens after BOS` +
        (r.truncated ? ` (only the first ${m.n_positions - 1} are shown: the circuit covers ${m.n_positions} positions)` : "") +
        ` · red raises the neuron's input, blue lowers it; largest |value| ${fmt(vmax)}`;
      if (chosen !== null && chosen > r.values.length) chosen = null;
      showWindow();
      if (widget.dataset.renders === "0") widget.dataset.firstRenderMs = String(Math.round(performance.now()));
      widget.dataset.renders = String(Number(widget.dataset.renders) + 1);
    } catch (err) {
      if (ticket === latest) status.textContent = `Could not compute: ${err.message}`;
    }
  }

  let pending = 0;
  const schedule = () => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(update);
  };
  box.addEventListener("input", () => {
    chosen = null; // typing: explain the newest token
    schedule();
  });
  select.addEventListener("change", () => {
    chosen = null;
    schedule();
  });
  update();
}

manifest.then(
  (m) => {
    window.ctxneuronsNeurons = m.neurons.map((e) => e.neuron);
    document.querySelectorAll(".ctxn-live").forEach((w) => setUp(w, m));
  },
  (err) => {
    document.querySelectorAll(".ctxn-live .ctxn-live-status").forEach((s) => {
      s.textContent = `Could not load this page's data: ${err.message}`;
    });
  },
);
