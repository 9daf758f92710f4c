"""TF Serving's REST API: the ASGI app, its uvicorn server, body deadlines, the request
timeout, CORS, JSON codecs, and the operator page (`operator_page.py` with its assets in `ui/`).

May import `loader.base`, `loader.servables` and `loader.serving`; never grpc or TensorFlow
(classify and regress reach TensorFlow through `loader.servables.inference`).
"""
