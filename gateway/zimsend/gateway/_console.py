"""The web console's static files as Envoy routes (issue 14).

Why Envoy serves them, and not the server or a web server of their own: the console is a few
plain HTML/CSS/JS files (no build step, docs/decisions.md), and Envoy already answers on the
public port. Each file becomes a route whose `direct_response` body is the file, read by Envoy
at start-up, so the console needs no process and always matches the installed package. `/`
is the sign-in page (`index.html`); everything else lives under `/console/`, away from `/v1`.

Every file goes out with a strict Content-Security-Policy (scripts, styles and requests only
from this origin, no inline code, no framing) and `nosniff`; the console keeps the API key in
the page, so nothing may run in it that we did not ship.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "URL_PREFIX",
    "console_directory",
    "console_files",
    "console_routes",
    "largest_console_file",
]

URL_PREFIX = "/console/"

# `default-src 'self'` covers scripts, styles, fetch() and images; what is left says that
# nothing else may frame, embed or re-base the page, nor submit a form elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}

_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    # Small files, read once per Envoy start: always revalidate, so an upgrade shows at once.
    "cache-control": "no-cache",
}


# Not RPCs: no transcoding; and no share of the bucket of requests without an API key (a
# flood of those must not make the sign-in page itself answer 429; Envoy serves these files
# from memory, nothing reaches the server).
_FILTERS_OFF = ("envoy.filters.http.grpc_json_transcoder", "envoy.filters.http.local_ratelimit")
_OFF = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}


def console_directory() -> Path:
    """The console's files as installed with the gateway distribution."""
    return Path(str(resources.files("zimsend.gateway") / "console"))


def console_files(directory: Path | None = None) -> dict[str, Path]:
    """URL path → file, for every file we know how to type; `/` is index.html."""
    root = directory or console_directory()
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in CONTENT_TYPES:
            files[URL_PREFIX + path.relative_to(root).as_posix()] = path
    index = root / "index.html"
    if index.is_file():
        files["/"] = index
    return files


def largest_console_file(directory: Path | None = None) -> int:
    """Bytes of the largest file: the route table's direct-response cap must exceed it."""
    return max((p.stat().st_size for p in console_files(directory).values()), default=0)


def console_routes(directory: Path | None = None) -> list[dict[str, Any]]:
    """One exact-path GET/HEAD route per file, served by Envoy itself (_FILTERS_OFF)."""
    routes = []
    for url_path, file in console_files(directory).items():
        headers = {"content-type": CONTENT_TYPES[file.suffix], **_SECURITY_HEADERS}
        routes.append(
            {
                "name": f"console:{url_path}",
                "match": {
                    "path": url_path,
                    "headers": [
                        {
                            "name": ":method",
                            "string_match": {"safe_regex": {"regex": "GET|HEAD"}},
                        }
                    ],
                },
                "direct_response": {"status": 200, "body": {"filename": str(file)}},
                "response_headers_to_add": [
                    {
                        "header": {"key": key, "value": value},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                    for key, value in headers.items()
                ],
                "typed_per_filter_config": {name: _OFF for name in _FILTERS_OFF},
            }
        )
    return routes
