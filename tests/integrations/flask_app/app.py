"""A Flask app with an app factory, as a user writes one: ``chat = ChatSDK()`` at import."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from chatsdk.integrations.flask import ChatSDK

chat = ChatSDK()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env()  # FLASK_CHATSDK_URL=... from the environment
    app.config.update(config or {})
    chat.init_app(app)

    @app.post("/orders/<int:order_id>")
    def order(order_id: int) -> Any:
        if request.args.get("queue"):
            entry = chat.client.queue_message("orders", f"order {order_id}")
            return jsonify(queued=entry.id)
        message = chat.client.send_message("orders", f"order {order_id}")
        return jsonify(id=message.id)

    return app
