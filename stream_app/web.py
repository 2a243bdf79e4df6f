"""Web views on the worker's Faust web server: a user's embedding and recommendations, health, Prometheus metrics.

``GET /users/{user_id}/embedding`` is routed (``table_route``) to the worker that
owns the user's partition. It embeds the stored graph from scratch, which equals
the last published vector (streaming equals batch), so it needs no second copy of
every embedding: the table is the single source of truth.
``GET /users/{user_id}/recommendations?k=20&exclude_seen=1`` ranks the serving model's items
for that vector as ``ripple evaluate`` does (``stream_app/recommend.py``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import msgspec
from faust.sensors.prometheus import setup_prometheus_sensors

from operators.explain import explain
from stream_app.recommend import parse_request, recommendations_of

if TYPE_CHECKING:
    from stream_app.faust_app import StreamWorker

E_UNKNOWN_USER = "no state for user {user!r}: no valid event of this user has been processed (yet)."


def add_views(worker: StreamWorker) -> None:
    app, store, pipeline = worker.app, worker.store, worker.pipeline

    @app.page("/users/{user_id}/embedding")
    @app.table_route(table=worker.table, match_info="user_id")
    async def user_embedding(web: Any, request: Any, user_id: str) -> Any:
        graphs = store.get_many([user_id])
        graph = graphs.get(user_id)
        if graph is None:
            return web.json({"error": E_UNKNOWN_USER.format(user=user_id)}, status=404)
        (embedding,) = pipeline.embed({user_id: graph})
        return web.json(msgspec.to_builtins(embedding))

    @app.page("/users/{user_id}/explanation")
    @app.table_route(table=worker.table, match_info="user_id")
    async def user_explanation(web: Any, request: Any, user_id: str) -> Any:
        graph = store.get_many([user_id]).get(user_id)
        if graph is None:
            return web.json({"error": E_UNKNOWN_USER.format(user=user_id)}, status=404)
        top = int(request.query.get("top", "10"))
        parts = explain(pipeline.embedder.checkpoint, graph, max(1, min(top, graph.n_nodes)))
        return web.json(
            {
                "user_id": user_id,
                "state_version": graph.state_version,
                "model_version": pipeline.embedder.model_version,
                "attribution": "share = node contribution projected on the user vector; all nodes sum to 1",
                "behaviours": [asdict(p) for p in parts],
            }
        )

    @app.page("/users/{user_id}/recommendations")
    @app.table_route(table=worker.table, match_info="user_id")
    async def user_recommendations(web: Any, request: Any, user_id: str) -> Any:
        graph = store.get_many([user_id]).get(user_id)
        if graph is None:
            return web.json({"error": E_UNKNOWN_USER.format(user=user_id)}, status=404)
        try:
            k, exclude_seen = parse_request(request.query)
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        embedder = pipeline.embedder
        vectors = embedder.embed_many([graph])
        try:
            (body,) = recommendations_of(
                pipeline.recommender, embedder.checkpoint, vectors, [user_id], [graph], k, exclude_seen
            )
        except ValueError as exc:  # a model without items (the seeded default)
            return web.json({"error": str(exc)}, status=409)
        return web.json(body)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        recovered = app.tables.recovery.completed.is_set()
        ok = recovered and not app.rebalancing
        body = {
            "status": "ok" if ok else "starting",
            "recovered": recovered,
            "rebalancing": bool(app.rebalancing),
            "model_version": pipeline.embedder.model_version,
        }
        return web.json(body, status=200 if ok else 503)

    # Faust's own stream/consumer metrics join Ripple's on one registry; the page is GET /metrics.
    setup_prometheus_sensors(app, pattern="/metrics", registry=worker.metrics.registry, name_prefix="faust")
