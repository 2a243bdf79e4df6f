"""Web views on the worker's Faust web server: a user's embedding, health, Prometheus metrics.

``GET /users/{user_id}/embedding`` is routed (``table_route``) to the worker that
owns the user's partition. It embeds the stored graph from scratch, which equals
the last published vector (streaming equals batch), so it needs no second copy of
every embedding: the table is the single source of truth. It answers in
``RIPPLE_EMBEDDING_ENCODING`` unless ``?encoding=json|f32`` asks otherwise.

``GET /healthz`` is 200 ``ok`` once tables are recovered and no rebalance runs (503
``starting`` before), and 200 ``degraded`` for a while after the worker skipped a record
batch it cannot decode (``stream_app/undecodable.py``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from faust.sensors.prometheus import setup_prometheus_sensors

from operators.explain import explain
from stream_app.embedding_format import embedding_record
from stream_app.settings import EMBEDDING_ENCODINGS

if TYPE_CHECKING:
    from stream_app.faust_app import StreamWorker

E_UNKNOWN_USER = "no state for user {user!r}: no valid event of this user has been processed (yet)."
E_ENCODING = "unknown encoding {encoding!r}: use ?encoding=json (numbers) or ?encoding=f32 (base64 float32)."


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
        encoding = request.query.get("encoding", worker.settings.embedding_encoding)
        if encoding not in EMBEDDING_ENCODINGS:
            return web.json({"error": E_ENCODING.format(encoding=encoding)}, status=400)
        return web.json(embedding_record(embedding, encoding))

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

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        recovered = app.tables.recovery.completed.is_set()
        ok = recovered and not app.rebalancing
        # Degraded still answers 200: the worker serves, but skipped input it could not decode.
        degraded = worker.degraded()
        body: dict[str, Any] = {
            "status": ("degraded" if degraded else "ok") if ok else "starting",
            "recovered": recovered,
            "rebalancing": bool(app.rebalancing),
            "model_version": pipeline.embedder.model_version,
        }
        if worker.last_undecodable is not None:
            body["undecodable_batches"] = len(worker.undecodable_seen)
            body["last_undecodable"] = {
                "at": worker.last_undecodable_at,
                "reason": worker.last_undecodable.reason,
                "detail": worker.last_undecodable.message(),
            }
        return web.json(body, status=200 if ok else 503)

    # Faust's own stream/consumer metrics join Ripple's on one registry; the page is GET /metrics.
    setup_prometheus_sensors(app, pattern="/metrics", registry=worker.metrics.registry, name_prefix="faust")
