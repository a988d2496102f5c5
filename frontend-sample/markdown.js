// Markdown for model output, which is untrusted: marked renders it, DOMPurify sanitises the
// HTML before it reaches the page. Both are vendored in vendor/ (versions in package.json).
//
// What model output can never do here: run script (<script>, on* handlers, javascript: and
// data: links are removed), load anything (images become links; no <img>, <video>, <iframe>,
// <style>, <form>), or open a link in this tab's context (links get target=_blank and
// rel=noopener noreferrer). The page's Content-Security-Policy (project/sample.py) is a second
// wall behind this one.

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
/** @param {string} text */
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  async: false,
  renderer: {
    // An image in the output would make the browser fetch a URL the model chose (a tracking
    // pixel, say) as soon as it streams in: show a link the reader can choose to open.
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">🖼 ${escapeHtml(text || href)}</a>`;
    },
  },
});

/** @type {import("./vendor/purify.es.mjs").Config} */
const SANITIZE = {
  USE_PROFILES: { html: true }, // HTML only: no SVG or MathML
  FORBID_TAGS: ["style", "img", "video", "audio", "source", "picture", "iframe", "form", "input",
    "button", "textarea", "select", "option"],
  FORBID_ATTR: ["style", "class", "id"], // no styling or id clashes with the page's own
  ALLOW_DATA_ATTR: false,
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i, // plain http(s), mail and in-page links only
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/**
 * Render `text` (Markdown from the model) into `element`, sanitised.
 * @param {HTMLElement} element
 * @param {string} text
 */
export function renderMarkdown(element, text) {
  const html = /** @type {string} */ (marked.parse(text));
  const fragment = DOMPurify.sanitize(html, { ...SANITIZE, RETURN_DOM_FRAGMENT: true });
  element.replaceChildren(fragment);
}
