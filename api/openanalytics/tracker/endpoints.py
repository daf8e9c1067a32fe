from __future__ import annotations

from fastapi import APIRouter, Request, Response

from openanalytics.tracker import script

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
    headers = {"ETag": etag, "Cache-Control": CACHE, "Access-Control-Allow-Origin": "*", "Vary": "Accept-Encoding"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="text/javascript; charset=utf-8", headers=headers)
