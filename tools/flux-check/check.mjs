// Type-checks Flux scripts with the Flux language server (@influxdata/flux-lsp-browser, a
// WebAssembly build of flux-lsp): syntax, the standard library's function signatures and types.
// No Flux engine runs here, so nothing is executed against data.
//
// stdin: JSON [{"name": ..., "flux": ...}]; stdout: JSON [{"name", "diagnostics": [{"message",
// "line", "character"}]}] (lines and characters 1-based). Exit 0 when it could check every
// script (whatever the diagnostics), 2 when it could not.
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, "node_modules", "@influxdata", "flux-lsp-browser");

// The package is built for bundlers (it imports its .wasm as an ES module, which Node cannot):
// load its glue code with the wasm import replaced and instantiate the module by hand.
async function loadLsp() {
  let glue = readFileSync(join(pkg, "flux-lsp-browser_bg.js"), "utf8");
  const importLine = "import * as wasm from './flux-lsp-browser_bg.wasm';";
  const initLines = /\ncachedInt32Memory0 = new Int32Array\(wasm\.memory\.buffer\);\ncachedUint8Memory0 = new Uint8Array\(wasm\.memory\.buffer\);\s*$/;
  if (!glue.includes(importLine) || !initLines.test(glue)) {
    throw new Error("unexpected layout of flux-lsp-browser_bg.js (package version changed?)");
  }
  glue = glue.replace(importLine, "let wasm;").replace(initLines,
    "\nexport function __init(w) { wasm = w; cachedInt32Memory0 = new Int32Array(wasm.memory.buffer);" +
    " cachedUint8Memory0 = new Uint8Array(wasm.memory.buffer); }\n");
  const dir = mkdtempSync(join(tmpdir(), "flux-check-"));
  try {
    writeFileSync(join(dir, "glue.mjs"), glue);
    const bindings = await import(join(dir, "glue.mjs"));
    const bytes = readFileSync(join(pkg, "flux-lsp-browser_bg.wasm"));
    const { instance } = await WebAssembly.instantiate(bytes, { "./flux-lsp-browser_bg.js": bindings });
    bindings.__init(instance.exports);
    return bindings;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  const scripts = JSON.parse(readFileSync(0, "utf8"));
  const { Lsp } = await loadLsp();
  const lsp = new Lsp();
  const published = new Map();
  lsp.onMessage((raw) => {
    const msg = JSON.parse(raw);
    if (msg.method === "textDocument/publishDiagnostics") published.set(msg.params.uri, msg.params.diagnostics);
  });
  lsp.run().catch((err) => { console.error("flux language server stopped:", err); process.exit(2); });
  let id = 0;
  const send = (method, params, notify = false) =>
    lsp.send(JSON.stringify(notify ? { jsonrpc: "2.0", method, params } : { jsonrpc: "2.0", id: ++id, method, params }));
  await send("initialize", { capabilities: {} });
  await send("initialized", {}, true);
  const out = [];
  for (const [i, s] of scripts.entries()) {
    const uri = `file:///query-${i}.flux`;
    await send("textDocument/didOpen", { textDocument: { uri, languageId: "flux", version: 1, text: s.flux } }, true);
    const deadline = Date.now() + 10000;
    while (!published.has(uri) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    if (!published.has(uri)) { console.error(`no diagnostics published for ${s.name}`); process.exit(2); }
    const diagnostics = published.get(uri).map((d) => ({
      message: d.message, line: d.range.start.line + 1, character: d.range.start.character + 1,
    }));
    out.push({ name: s.name, diagnostics });
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exit(0);
}

main().catch((err) => { console.error(String(err && err.stack || err)); process.exit(2); });
