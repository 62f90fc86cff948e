"""The browser's own ceiling: Chromium sends a File to an HTTP server that only counts the bytes.

    python -m bench.browser_sink PORT      prints "ready" once listening; serves until killed

`GET /` is a page with a file input and `window.sendFile(requests = 1, api = 'xhr')`, which PUTs the chosen file
to `/sink`, cut into `requests` slices sent at once (XHR, as tus-js-client sends, or 'fetch'), and resolves to
the bytes the sink counted once every answer has arrived. `/sink` receives into one 1 MiB buffer and throws the
bytes away: no storage, no hash, no tus. What the modeldrop page reaches divided by this is the share of
Chromium's own upload speed the page keeps; the rest is Chromium's.
"""

from __future__ import annotations

import http.server
import sys

PAGE = b"""<!doctype html><meta charset="utf-8"><title>sink</title>
<input type="file" id="file">
<script>
const put = (blob, api) => api === 'fetch'
  ? fetch('/sink', { method: 'PUT', body: blob }).then((r) => r.text()).then(Number)
  : new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest()
    xhr.open('PUT', '/sink')
    xhr.onload = () => resolve(Number(xhr.responseText))
    xhr.onerror = () => reject(new Error('the sink request failed'))
    xhr.send(blob)
  })
window.sendFile = async (requests = 1, api = 'xhr') => {
  const file = document.getElementById('file').files[0]
  const step = Math.ceil(file.size / requests)
  const parts = []
  for (let start = 0; start < file.size; start += step) parts.push(put(file.slice(start, start + step), api))
  return (await Promise.all(parts)).reduce((a, b) => a + b, 0)
}
</script>
"""

BUFFER = 1024 * 1024


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
        self._answer(200, PAGE, "text/html")

    def do_PUT(self) -> None:  # noqa: N802
        remaining = int(self.headers.get("Content-Length", "0"))
        buffer = memoryview(bytearray(BUFFER))
        received = 0
        while remaining > 0:
            count = self.rfile.readinto(buffer[: min(BUFFER, remaining)])
            if not count:
                break
            remaining -= count
            received += count
        self._answer(200, str(received).encode(), "text/plain")

    def _answer(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main(port: int) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]))
