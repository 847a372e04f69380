"""Every view answers with what it saw, hashed, so the client can check every byte."""

from __future__ import annotations

import hashlib
import json

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from .content import stream_chunks


def json_body(request: HttpRequest) -> HttpResponse:
    body = request.body
    document = json.loads(body)
    return JsonResponse({
        "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
        "data_sha256": hashlib.sha256(document["data"].encode()).hexdigest(),
        "strategy": request.META["gearshift.strategy"],
    })


def upload(request: HttpRequest) -> HttpResponse:
    uploaded = request.FILES["file"]
    digest = hashlib.sha256()
    size = 0
    for chunk in uploaded.chunks():
        digest.update(chunk)
        size += len(chunk)
    return JsonResponse({"name": request.POST["name"], "filename": uploaded.name, "size": size,
                         "sha256": digest.hexdigest()})


def stream(request: HttpRequest) -> HttpResponse:
    count, size = int(request.GET["count"]), int(request.GET["size"])
    return StreamingHttpResponse(stream_chunks(count, size), content_type="application/octet-stream")


def ignore(request: HttpRequest) -> HttpResponse:
    """Answers without touching the body."""
    return JsonResponse({"ignored": True})
