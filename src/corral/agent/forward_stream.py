"""Forwarding a streamed answer (a task's server-sent events) from another member to the
local CLI chunk by chunk, as it comes: a buffered forward would hold the whole stream until
the task ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from corral.agent.task_stream import KEEPALIVE_S, MEDIA_TYPE
from corral.api_errors import Unreachable, error_body
from corral.client import AgentClient


def unreachable(target: str, exc: Exception) -> JSONResponse:
    """The answer to a forwarded request the member did not answer (502)."""
    return JSONResponse(
        error_body(Unreachable(f"node {target} did not answer: {exc}")), status_code=502
    )


async def forward_stream(client: AgentClient, target: str, path: str) -> Response:
    """GET `path` of member `target` and relay its stream (an error answer as it is)."""
    request = client.http.build_request(
        "GET",
        path,
        headers={"accept": MEDIA_TYPE},
        timeout=httpx.Timeout(10.0, read=KEEPALIVE_S * 6),
        extensions=client.extensions,
    )
    try:
        answer = await run_in_threadpool(client.http.send, request, stream=True)
    except Exception as exc:
        return unreachable(target, exc)
    if answer.status_code >= 400:
        body = await run_in_threadpool(answer.read)
        await run_in_threadpool(answer.close)
        return Response(
            body, status_code=answer.status_code, media_type=answer.headers.get("content-type")
        )

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in iterate_in_threadpool(answer.iter_raw()):
                yield chunk
        except httpx.HTTPError:
            return  # the member went away mid-stream: the client sees the stream end
        finally:
            await run_in_threadpool(answer.close)

    return StreamingResponse(relay(), status_code=answer.status_code, media_type=MEDIA_TYPE)
