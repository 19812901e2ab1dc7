"""The realtime client: Centrifugo protocol over websocket-client, reconnects and recovery."""
