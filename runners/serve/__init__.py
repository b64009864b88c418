"""`pie serve`: the Pie engine behind an OpenAI-compatible HTTP server (docs/serve.md).

protocol.py parses request bodies and shapes errors; text.py turns text into token ids and
back; metrics.py keeps the Prometheus series; engine_loop.py steps the engine on the thread
that built it (the main thread; HTTP runs on a second one); app.py holds the HTTP routes;
server.py starts, logs and stops it all.
"""
