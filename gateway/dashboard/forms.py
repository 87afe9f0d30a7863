"""Dashboard forms: reading a small urlencoded body, and whether a form was posted from this site."""

from __future__ import annotations

import urllib.parse

from fastapi import HTTPException, Request

MAX_FORM_BYTES = 16 * 1024


def _origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request) -> bool:
    """Whether a form comes from this site: its Origin (else its Referer) is the configured public URL's
    origin, or has this request's Host. A request with neither header is not a browser's cross-site form."""
    sent = request.headers.get("origin") or ""
    if not sent and request.headers.get("referer"):
        sent = _origin_of(request.headers["referer"])
    if not sent:
        return True
    if sent == "null":
        return False
    public = request.app.state.settings.public_url
    if public:
        return sent.lower() == _origin_of(public)
    host = (request.headers.get("host") or "").lower()
    return bool(host) and urllib.parse.urlsplit(sent.lower()).netloc == host


async def read_form(request: Request) -> dict[str, str]:
    """The first value of each field of a urlencoded form of at most MAX_FORM_BYTES (413 above)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise HTTPException(status_code=413, detail=f"a dashboard form is at most {MAX_FORM_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(status_code=413, detail=f"a dashboard form is at most {MAX_FORM_BYTES} bytes")
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in form.items()}
