// The JSDoc types check under `tsc --strict`, and the committed reducer.d.ts is what they
// generate (`npm run types` rewrites it).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

test("tsc checks reducer.js and generates the committed reducer.d.ts", () => {
  const out = mkdtempSync(join(tmpdir(), "turnlog-reducer-types-"));
  const tsc = spawnSync(process.execPath, [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json", "--outDir", out], {
    cwd: ROOT,
    encoding: "utf8",
  });
  assert.equal(tsc.status, 0, tsc.stdout + tsc.stderr);
  assert.equal(
    readFileSync(join(out, "reducer.d.ts"), "utf8"),
    readFileSync(join(ROOT, "reducer.d.ts"), "utf8"),
    "reducer.d.ts is stale: run `npm run types`",
  );
});
