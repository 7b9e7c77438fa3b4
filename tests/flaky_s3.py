"""An S3 endpoint on loopback that drops some requests: a proxy in front of moto's server that answers every
Nth request with 503 SlowDown (what S3 says when it sheds load) instead of passing it on, and, while
`refuse_writes` is set, every write with 403 AccessDenied (what a bucket policy without s3:PutObject answers)."""

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCESS_DENIED = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
SLOW_DOWN = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>'


class FlakyS3:
    """Listens on 127.0.0.1:port, forwards to 127.0.0.1:upstream, and drops every `every`-th request."""

    def __init__(self, port: int, upstream: int, every: int = 10):
        self.every, self.requests, self.dropped = every, 0, 0
        self.refuse_writes = False
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self, upstream))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def drop_this_one(self) -> bool:
        with self._lock:
            self.requests += 1
            drop = self.requests % self.every == 0
            self.dropped += drop
            return drop

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(proxy: FlakyS3, upstream: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue as S3 clients expect

        def log_message(self, *args):
            pass

        def _body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def _error(self, status: int, reason: str, body: bytes) -> None:
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self):
            body = self._body()
            if proxy.refuse_writes and self.command in ("PUT", "POST", "DELETE"):
                return self._error(403, "Forbidden", ACCESS_DENIED)
            if proxy.drop_this_one():
                return self._error(503, "Slow Down", SLOW_DOWN)
            skip = ("connection", "transfer-encoding", "expect", "content-length")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=120)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(key, value)
            # a HEAD answer keeps the object's length; any other carries its body
            self.send_header("Content-Length", response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler
