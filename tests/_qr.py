"""Reading back the QR codes ZimSend draws in a terminal, as a phone's scanner would.

The text is segno's compact drawing: each character is two module rows (upper and lower half),
a light module drawn as ink (a block), a dark one as the terminal's background (a space). The
decoder is zxing-cpp (a PyPI wheel, no system library): the test turns the text back into a
grey image, light modules white and dark ones black, and lets a real QR reader find the code
in it, quiet zone and all.
"""

from __future__ import annotations

# (upper module is light, lower module is light) for each character segno draws
_HALVES = {
    " ": (False, False),
    "\u2580": (True, False),
    "\u2584": (False, True),
    "\u2588": (True, True),
}


def qr_lines(output: str) -> list[str]:
    """The lines of `output` that are part of a drawn QR code (only half-block characters)."""
    return [line for line in output.splitlines() if line and set(line) <= set(_HALVES)]


def light_modules(lines: list[str]) -> list[list[bool]]:
    """Module rows of the drawing, True where the module is light (the last drawn line's
    lower half is padding when the row count is odd; it is kept, as the screen shows it)."""
    rows: list[list[bool]] = []
    for line in lines:
        halves = [_HALVES[char] for char in line]
        rows.append([upper for upper, _ in halves])
        rows.append([lower for _, lower in halves])
    return rows


def decode_qr_lines(lines: list[str], pixels_per_module: int = 4) -> list[str]:
    """What a QR reader finds in the drawing (normally one text)."""
    import zxingcpp

    scale = pixels_per_module
    image = bytearray()
    for row in light_modules(lines):
        pixel_row = b"".join((b"\xff" if light else b"\x00") * scale for light in row)
        image += pixel_row * scale
    height = len(light_modules(lines)) * scale
    width = len(image) // height
    view = memoryview(bytes(image)).cast("B", (height, width))
    # No inverted reading: the code must read as drawn, blocks light (a dark terminal).
    qr_only = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    found = zxingcpp.read_barcodes(view, formats=qr_only, try_invert=False)
    return [barcode.text for barcode in found]
