"""`lavt serve`: a web page (Gradio) and a REST API on one server, around one `Predictor`.

`service` (model, limits, queue; no web framework), `limits`, `examples` (generated scenes
the model gets right), `app` (FastAPI: /healthz, /v1/model, /v1/segment), `page` (Gradio
Blocks at /), `launch` (binding and running). Gradio and FastAPI come with the optional
`web` extra (`pip install "lavt[web]"`); only `app`, `page` and `launch.serve` need them.
"""
