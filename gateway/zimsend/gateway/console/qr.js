// A pairing QR code drawn on a <canvas> in the page (no image URL, no server endpoint), with
// the vendored qrcode-generator for the encoding. Dark modules on a white quiet zone of four.

import qrcode from "./vendor/qrcode-generator.mjs";

/** A canvas showing `text` as a QR code (error correction M), labelled for screen readers. */
export function qrCanvas(text, label, moduleSize = 6) {
  const code = qrcode(0, "M");
  code.addData(text);
  code.make();
  const modules = code.getModuleCount();
  const quiet = 4;
  const size = (modules + quiet * 2) * moduleSize;
  const canvas = document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  canvas.className = "qr";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", label);
  const ink = canvas.getContext("2d");
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, size, size);
  ink.fillStyle = "#000";
  for (let row = 0; row < modules; row += 1) {
    for (let col = 0; col < modules; col += 1) {
      if (code.isDark(row, col)) {
        ink.fillRect((col + quiet) * moduleSize, (row + quiet) * moduleSize, moduleSize, moduleSize);
      }
    }
  }
  return canvas;
}
