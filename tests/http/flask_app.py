"""A small Flask application for the end-to-end tests."""

from flask import Flask, Response, jsonify, request, stream_with_context, url_for

app = Flask(__name__)


@app.post("/json")
def echo_json():
    data = request.get_json()
    return jsonify(received=data, strategy=request.environ["gearshift.strategy"])


@app.post("/upload")
def upload():
    uploaded = request.files["file"]
    content = uploaded.read()
    return jsonify(name=request.form["name"], filename=uploaded.filename, size=len(content),
                   checksum=sum(content) % 65521)


@app.get("/stream")
def stream():
    def generate():
        for i in range(5):
            yield f"line {i}\n"
    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.get("/missing")
def missing():
    return "gone", 404


@app.get("/where")
def where():
    """Its own URL, as Flask builds it from SCRIPT_NAME, the scheme and the host."""
    return jsonify(path=url_for("where"), external=url_for("where", _external=True))
