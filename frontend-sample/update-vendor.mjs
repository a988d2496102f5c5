// Copies the browser builds of the sample page's two libraries from node_modules into
// vendor/, with their licences, so that the page needs no build step and works offline.
// Run `npm install && npm run vendor` here after changing a version in package.json.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";

const files = [
  ["node_modules/marked/lib/marked.esm.js", "vendor/marked.esm.js"],
  ["node_modules/marked/LICENSE", "vendor/marked.LICENSE.txt"],
  ["node_modules/dompurify/dist/purify.es.mjs", "vendor/purify.es.mjs"],
  ["node_modules/dompurify/LICENSE", "vendor/dompurify.LICENSE.txt"],
  ["node_modules/dompurify/LICENSE-MPL", "vendor/dompurify.LICENSE-MPL.txt"],
];
mkdirSync("vendor", { recursive: true });
for (const [from, to] of files) copyFileSync(from, to);
for (const name of ["marked", "dompurify"]) {
  const { version } = JSON.parse(readFileSync(`node_modules/${name}/package.json`, "utf8"));
  console.log(`vendored ${name} ${version}`);
}
