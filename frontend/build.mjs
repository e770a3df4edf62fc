// Build the BN Internals frontend into ../tb_bn_plugin/plugin/static/index.js.
//
// The bundle starts with a banner `/* tb-bn-sources-sha256: <hex> */`: a hash
// of every file the bundle is made from (src/**, package.json,
// package-lock.json, this script). tests/test_frontend_bundle.py recomputes
// it in Python (no Node needed) and fails when the shipped bundle is stale.
//
// Hash: for each path (POSIX, relative to frontend/, sorted by code point),
//   update(path + "\0" + sha256hex(content with CRLF -> LF) + "\n").
//
// Usage: node build.mjs [--print-hash] [--dev]
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, statSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outFile = join(here, "..", "tb_bn_plugin", "plugin", "static", "index.js");

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out;
}

export function sourceFiles() {
  const files = walk(join(here, "src")).map((p) => relative(here, p).split(sep).join("/"));
  files.push("package.json", "package-lock.json", "build.mjs");
  // Sort by code point, like Python's sorted() on str.
  return files.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

export function sourcesHash() {
  const h = createHash("sha256");
  for (const rel of sourceFiles()) {
    const data = readFileSync(join(here, rel)).toString("latin1").replace(/\r\n/g, "\n");
    const fileHash = createHash("sha256").update(Buffer.from(data, "latin1")).digest("hex");
    h.update(`${rel}\0${fileHash}\n`, "utf8");
  }
  return h.digest("hex");
}

async function main() {
  const args = new Set(process.argv.slice(2));
  const digest = sourcesHash();
  if (args.has("--print-hash")) {
    console.log(digest);
    return;
  }
  const esbuild = await import("esbuild");
  mkdirSync(dirname(outFile), { recursive: true });
  const result = await esbuild.build({
    entryPoints: [join(here, "src", "index.js")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["es2020"],
    minify: !args.has("--dev"),
    legalComments: "none",
    charset: "utf8",
    loader: { ".css": "text" },
    banner: { js: `/* tb-bn-sources-sha256: ${digest} */` },
    define: { "process.env.NODE_ENV": '"production"', __DEV__: "false" },
    write: false,
    metafile: true,
    logLevel: "warning",
  });
  const out = result.outputFiles[0].contents;
  writeFileSync(outFile, out);
  const kb = (out.length / 1024).toFixed(1);
  console.log(`wrote ${relative(process.cwd(), outFile)} (${kb} KiB, sources sha256 ${digest.slice(0, 12)}…)`);
  if (args.has("--analyze")) {
    console.log(await esbuild.analyzeMetafile(result.metafile));
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
