// The libraries the page ships (src/turnlog/web/static/vendor/) are the packages pinned in
// web/package.json, byte for byte, licences included (`make web` copies them).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { FILES, differences, versions } from "../../web/vendor.mjs";

test("every shipped library file equals its pinned package's, and nothing else is shipped", () => {
  assert.deepEqual(differences(), []);
});

test("the installed packages are the versions package.json pins, and each ships its licence", () => {
  const pinned = JSON.parse(readFileSync(new URL("../../web/package.json", import.meta.url), "utf8")).dependencies;
  assert.deepEqual(versions(), pinned);
  for (const name of ["marked.LICENSE", "dompurify.LICENSE", "highlight/LICENSE"]) assert.ok(name in FILES, name);
});
