from __future__ import annotations

from fastapi import APIRouter, Request, Response

from openanalytics.tracker import gzipped, script

router = APIRouter(tags=["Tracker"])

CACHE = "public, max-age=3600, stale-while-revalidate=86400"


@router.head("/oa.js", include_in_schema=False)
@router.get(
    "/oa.js",
    summary="The browser tracker",
    description=(
        'Load with `<script defer src="https://HOST/oa.js" data-site-id="SITE_ID"></script>`; optional '
        '`data-api` (the collect URL, default: this host\'s /collect) and `data-respect-dnt="true"`.'
    ),
    response_class=Response,
    responses={200: {"content": {"text/javascript": {}}, "description": "The script."}, 304: {"description": "Unchanged."}},
)
async def tracker(request: Request) -> Response:
    data, etag = script()
    headers = {"Cache-Control": CACHE, "Access-Control-Allow-Origin": "*", "Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("accept-encoding", "")):
        data, etag = gzipped(), etag[:-1] + '-gz"'  # each encoding its own tag
        headers["Content-Encoding"] = "gzip"
    headers["ETag"] = etag
    if etag in request.headers.get("if-none-match", ""):
        headers.pop("Content-Encoding", None)
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="text/javascript; charset=utf-8", headers=headers)


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip: named with a q above 0, or else by `*`."""
    quality: dict[str, float] = {}
    for part in header.split(","):
        name, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[name.strip().lower()] = q
    return quality.get("gzip", quality.get("*", 0.0)) > 0
