"""What happens once a response is sent: TorchServe's ``RequestsNXX`` counts, held shadows released.

One pure ASGI middleware around the gateway's inference app (outermost, so it sees every answer,
the other middlewares' included); without ``shadows`` it only counts (e.g. around another listener's
app, as TorchServe counts its management API's responses too). It watches the messages the app sends:

- ``http.response.start`` gives the status; when the last ``http.response.body`` has been handed
  to the server, the response counts in ``Requests2XX`` / ``Requests4XX`` / ``Requests5XX``
  (:class:`~triserve_gateway.torchserve_metrics.TorchServeMetrics`);
- the shadows the request offered were held (:func:`triserve_gateway.shadow.holding`) and only
  now go to their lanes: the client has its whole answer before any shadow starts. A request that
  fails before its answer is sent drops its held shadows.

An exception that escapes before a response started becomes Starlette's plain 500: counted as such.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triserve_gateway.shadow import ShadowTraffic, holding
from triserve_gateway.torchserve_metrics import TorchServeMetrics


class ResponseHooks:
    """ASGI middleware: count the response by status class, then release its held shadows."""

    def __init__(
        self, app: ASGIApp, metrics: TorchServeMetrics, shadows: ShadowTraffic | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.shadows = shadows

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        done = False
        with holding() as held:

            async def hooked(message: Message) -> None:
                nonlocal status, done
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    done = True
                    self.metrics.count_response(status)
                    if self.shadows is not None:
                        self.shadows.release(held)

            try:
                await self.app(scope, receive, hooked)
            except Exception:
                if not status:
                    self.metrics.count_response(500)
                raise
            finally:
                if not done:
                    held.clear()
