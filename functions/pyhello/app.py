"""pyhello: an HTTP component written in Python and built with componentize-py.

It proves that components from other toolchains (which import much of wasi:cli,
wasi:filesystem and wasi:sockets) instantiate on Wafer and are denied only at the call.
`/escape` reports what it could reach of the host; every other path greets.
"""

import json
import os

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def escape_report() -> bytes:
    files = {}
    for path in ["/etc/passwd", "../app.py", "/", "."]:
        try:
            if path in ("/", "."):
                files[path] = f"listed {len(os.listdir(path))} entries"
            else:
                with open(path, "rb") as f:
                    files[path] = f"read {len(f.read())} bytes"
        except Exception as e:  # the point is to see the denial
            files[path] = f"denied: {type(e).__name__}"
    return json.dumps({"files": files, "env": dict(os.environ)}).encode()


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        if path.startswith("/escape"):
            body_bytes, ctype = escape_report(), b"application/json"
        else:
            body_bytes, ctype = f"Hello from Python at {path}\n".encode(), b"text/plain"
        response = OutgoingResponse(Fields.from_list([("content-type", ctype)]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(body_bytes)
        OutgoingBody.finish(body, None)
