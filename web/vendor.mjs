// The third-party files the web chat ships, copied from the packages pinned in
// package.json (and package-lock.json) into src/turnlog/web/static/vendor/, licences
// included, so that running the page needs no Node.
//   node web/vendor.mjs copy    (what `make web` runs)
//   node web/vendor.mjs check   (exit 1 unless every shipped file equals its package's)
import { copyFileSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
export const MODULES = join(HERE, "node_modules");
export const VENDOR = resolve(HERE, "../src/turnlog/web/static/vendor");

// A small set of languages: what chat answers mostly hold. Anything else is shown unhighlighted.
export const LANGUAGES = [
  "bash", "cpp", "diff", "go", "java", "javascript", "json", "python", "rust", "shell", "sql",
  "typescript", "xml", "yaml",
];

const HLJS = "@highlightjs/cdn-assets";

/** shipped path (under VENDOR) -> source path (under node_modules) */
export const FILES = {
  "marked.esm.js": "marked/lib/marked.esm.js",
  "marked.LICENSE": "marked/LICENSE",
  "purify.es.mjs": "dompurify/dist/purify.es.mjs",
  "dompurify.LICENSE": "dompurify/LICENSE",
  "highlight/core.min.js": `${HLJS}/es/core.min.js`,
  "highlight/LICENSE": `${HLJS}/LICENSE`,
  "highlight/github.min.css": `${HLJS}/styles/github.min.css`,
  "highlight/github-dark.min.css": `${HLJS}/styles/github-dark.min.css`,
  ...Object.fromEntries(LANGUAGES.map((l) => [`highlight/${l}.min.js`, `${HLJS}/es/languages/${l}.min.js`])),
};

/** The differences between what is shipped and the pinned packages (empty: equal). */
export function differences() {
  const problems = [];
  for (const [shipped, source] of Object.entries(FILES)) {
    let ours;
    try {
      ours = readFileSync(join(VENDOR, shipped));
    } catch {
      problems.push(`${shipped}: missing (run \`make web\`)`);
      continue;
    }
    if (!ours.equals(readFileSync(join(MODULES, source)))) problems.push(`${shipped}: differs from ${source}`);
  }
  const listed = new Set(Object.keys(FILES));
  const walk = (dir, prefix) => readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]);
  for (const file of walk(VENDOR, "")) if (!listed.has(file)) problems.push(`${file}: shipped but not from a pinned package`);
  return problems;
}

/** The pinned version of each package, as installed. */
export function versions() {
  const pinned = JSON.parse(readFileSync(join(HERE, "package.json"), "utf8")).dependencies;
  return Object.fromEntries(Object.keys(pinned).map((name) =>
    [name, JSON.parse(readFileSync(join(MODULES, name, "package.json"), "utf8")).version]));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const command = process.argv[2];
  if (command === "copy") {
    for (const [shipped, source] of Object.entries(FILES)) {
      mkdirSync(dirname(join(VENDOR, shipped)), { recursive: true });
      copyFileSync(join(MODULES, source), join(VENDOR, shipped));
    }
    console.log(`copied ${Object.keys(FILES).length} files into ${VENDOR}`);
  } else if (command === "check") {
    const problems = differences();
    for (const p of problems) console.error(p);
    process.exit(problems.length ? 1 : 0);
  } else {
    console.error("usage: node web/vendor.mjs copy|check");
    process.exit(2);
  }
}
