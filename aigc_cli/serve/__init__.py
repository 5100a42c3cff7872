"""`aigc serve`: trained models over HTTP. The FastAPI app (app.py) speaks the OpenAI API where
one exists; one worker thread per model (workers.py) batches requests that fit together and
never runs on the event loop; request bodies are checked in params.py, counted in stats.py,
and the web page is one static file (page.html)."""
